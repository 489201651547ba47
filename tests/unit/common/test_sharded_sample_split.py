"""Splitting one large prioritized batch into several independent ones."""

from __future__ import annotations

import numpy as np
import pytest

from services.common.encoded import Column, EncodedItems, compress, decompress, dense
from services.common.sharded_replay import ShardedSample


def sample(size: int) -> ShardedSample:
    rng = np.random.default_rng(3)
    weights = rng.uniform(0.1, 1.0, size).astype(np.float32)
    return ShardedSample(
        shards=np.arange(size, dtype=np.int64) % 2,
        keys=np.arange(size, dtype=np.int64) + 1000,
        probabilities=rng.uniform(0.001, 0.01, size),
        importance_weights=weights / weights.max(),
        column_parts=(
            {
                "action": np.arange(size, dtype=np.int64),
                "observation": np.arange(size * 2.0).reshape(size, 2),
            },
        ),
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


def test_pieces_write_each_shards_rows_straight_into_their_slots() -> None:
    size, frames = 12, np.arange(12 * 6 * 6, dtype=np.uint8).reshape(12, 6, 6)
    whole = sample(size)
    parts: tuple[dict[str, Column], ...] = (
        {"action": np.arange(7, dtype=np.int64), "frame": compress(frames[:7])},
        {"action": np.arange(7, 12, dtype=np.int64), "frame": compress(frames[7:])},
    )
    two_shards = ShardedSample(
        whole.shards, whole.keys, whole.probabilities, whole.importance_weights, parts, whole.total_size
    )
    joined = two_shards.columns
    np.testing.assert_array_equal(dense(joined["action"]), np.arange(12))
    seen: list[int] = []
    for piece in two_shards.pieces(3, np.random.default_rng(1)):
        shapes = piece.column_shapes()
        assert shapes == {"action": ((4,), np.dtype(np.int64)), "frame": ((4, 6, 6), np.dtype(np.uint8))}
        out = {name: np.zeros(shape, dtype) for name, (shape, dtype) in shapes.items()}
        piece.write_into(out)
        np.testing.assert_array_equal(out["action"], piece.rows)
        np.testing.assert_array_equal(out["frame"], frames[piece.rows])
        np.testing.assert_array_equal(piece.keys, whole.keys[piece.rows])
        copied = piece.materialize()
        np.testing.assert_array_equal(dense(copied.columns["action"]), piece.rows)
        frame_column = copied.columns["frame"]
        assert isinstance(frame_column, EncodedItems)
        np.testing.assert_array_equal(decompress(frame_column), frames[piece.rows])
        seen += piece.rows.tolist()
    assert sorted(seen) == list(range(12))
