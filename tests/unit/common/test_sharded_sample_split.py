"""Splitting one large prioritized batch into several independent ones."""

from __future__ import annotations

import numpy as np
import pytest

from services.common.encoded import dense
from services.common.sharded_replay import ShardedSample


def sample(size: int) -> ShardedSample:
    rng = np.random.default_rng(3)
    weights = rng.uniform(0.1, 1.0, size).astype(np.float32)
    return ShardedSample(
        shards=np.arange(size, dtype=np.int64) % 2,
        keys=np.arange(size, dtype=np.int64) + 1000,
        probabilities=rng.uniform(0.001, 0.01, size),
        importance_weights=weights / weights.max(),
        columns={
            "action": np.arange(size, dtype=np.int64),
            "observation": np.arange(size * 2.0).reshape(size, 2),
        },
        total_size=5000,
    )


def test_parts_partition_the_items_and_keep_each_row_together() -> None:
    whole = sample(12)
    parts = whole.split(3, np.random.default_rng(0))
    assert [part.keys.shape for part in parts] == [(4,)] * 3
    actions = np.concatenate([dense(part.columns["action"]) for part in parts])
    assert sorted(actions.tolist()) == list(range(12))
    for part in parts:
        items = dense(part.columns["action"])
        np.testing.assert_array_equal(part.keys, items + 1000)
        np.testing.assert_array_equal(part.shards, items % 2)
        np.testing.assert_array_equal(
            dense(part.columns["observation"]), dense(whole.columns["observation"])[items]
        )
        np.testing.assert_array_equal(part.probabilities, whole.probabilities[items])
        # Each part's weights are the whole batch's, renormalized by the part's own maximum.
        expected = whole.importance_weights[items] / whole.importance_weights[items].max()
        np.testing.assert_allclose(part.importance_weights, expected)
        assert part.total_size == 5000


def test_one_part_is_the_batch_itself_and_uneven_splits_are_refused() -> None:
    whole = sample(10)
    assert whole.split(1, np.random.default_rng(0)) == [whole]
    with pytest.raises(ValueError, match="cannot split a batch of 10 into 3"):
        whole.split(3, np.random.default_rng(0))
