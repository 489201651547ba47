"""Sampling over several shards behaves as one prioritized buffer, and survives a shard going away."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from services.common.sharded_replay import ShardedReplayClient
from services.replay.shard import ReplayShard
from tests.integration.conftest import ShardFactory, transitions

ALPHA = 0.6


def fill(client: ShardedReplayClient, shard_sizes: list[int], scales: list[float]) -> np.ndarray:
    """Inserts items 0..N-1 shard by shard; returns each item's priority (index = action)."""
    rng = np.random.default_rng(5)
    priorities = []
    first = 0
    for size, scale in zip(shard_sizes, scales, strict=True):
        values = scale * rng.uniform(0.05, 1.0, size)
        client.insert(transitions(first, size), values)
        priorities.append(values)
        first += size
    return np.concatenate(priorities)


def test_insert_sample_and_update_over_three_shards(start_shard: ShardFactory) -> None:
    shards = [start_shard(capacity=1000) for _ in range(3)]
    client = ShardedReplayClient([s.address for s in shards], seed=0)
    for start in range(0, 300, 50):
        client.insert(transitions(start, 50), np.ones(50))  # round robin: 100 items per shard
    assert [s.table.info().size for s in shards] == [100, 100, 100]
    sample = client.sample(256, importance_exponent=0.4)
    assert sample.columns["observation"].shape == (256, 4)
    assert set(sample.shards.tolist()) == {0, 1, 2}
    assert sample.total_size == 300
    # Zero priority on every sampled item of shard 1 moves mass only there.
    on_one = sample.shards == 1
    applied = client.update_priorities(
        sample.shards[on_one], sample.keys[on_one], np.zeros(int(on_one.sum()))
    )
    assert applied == on_one.sum()
    zeroed = set(sample.columns["action"][on_one].tolist())
    assert shards[1].table.info().total_priority_mass == pytest.approx(100 - len(zeroed))
    later = client.sample(2000, importance_exponent=0.4)
    assert zeroed.isdisjoint(later.columns["action"][later.shards == 1].tolist())


def test_item_frequencies_over_shards_with_very_different_totals_match_the_global_distribution(
    start_shard: ShardFactory,
) -> None:
    sizes, scales = [60, 30, 10], [0.01, 1.0, 100.0]
    shards = [start_shard(capacity=1000, priority_exponent=ALPHA) for _ in sizes]
    client = ShardedReplayClient([s.address for s in shards], seed=11)
    for shard, size, scale, first in zip(shards, sizes, scales, [0, 60, 90], strict=True):
        values = scale * np.random.default_rng(first).uniform(0.05, 1.0, size)
        shard.table.insert(transitions(first, size), values, max_wait_s=0)
    priorities = np.concatenate([s.table.export_state().priority_masses for s in shards]) ** (1 / ALPHA)
    expected = priorities**ALPHA / np.sum(priorities**ALPHA)
    batches, batch_size = 200, 256
    counts = np.zeros(100)
    for _ in range(batches):
        sample = client.sample(batch_size, importance_exponent=1.0)
        counts += np.bincount(sample.columns["action"], minlength=100)
        np.testing.assert_allclose(sample.probabilities, expected[sample.columns["action"]], rtol=1e-9)
    draws = batches * batch_size
    # Pearson chi-square over 100 items (99 degrees of freedom): mean 99, sd 14.
    # The bound 99 + 10 sd has a false-failure chance far below 1e-12.
    chi_square = np.sum((counts - draws * expected) ** 2 / (draws * expected))
    assert chi_square < 99 + 10 * np.sqrt(2 * 99), chi_square
    # The shard split on its own: binomial, 6 sigma.
    for shard_items in (slice(0, 60), slice(60, 90), slice(90, 100)):
        p = expected[shard_items].sum()
        assert abs(counts[shard_items].sum() - draws * p) <= 6 * np.sqrt(draws * p * (1 - p))


def test_importance_weights_equal_the_formula(start_shard: ShardFactory) -> None:
    shards = [start_shard(capacity=500, priority_exponent=ALPHA) for _ in range(3)]
    client = ShardedReplayClient([s.address for s in shards], seed=3)
    priorities = fill(client, [40, 25, 35], [1.0, 7.0, 0.2])
    total_mass = np.sum(priorities**ALPHA)
    for beta in (0.4, 1.0):
        sample = client.sample(128, importance_exponent=beta)
        probability = priorities[sample.columns["action"]] ** ALPHA / total_mass
        weights = (100 * probability) ** -beta
        np.testing.assert_allclose(sample.importance_weights, weights / weights.max(), rtol=1e-6)
        assert sample.importance_weights.max() == 1.0


def wait_until(condition: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        time.sleep(0.05)


def test_a_stopped_shard_is_skipped_and_rejoins_from_its_snapshot(
    start_shard: ShardFactory, tmp_path: Path
) -> None:
    paths = [tmp_path / f"shard-{i}.safetensors" for i in range(3)]
    shards: list[ReplayShard] = [start_shard(capacity=1000, snapshot_path=path) for path in paths]
    client = ShardedReplayClient([s.address for s in shards], seed=8, timeout_s=2.0, max_backoff_s=0.5)
    fill(client, [100, 100, 100], [1.0, 1.0, 1.0])
    assert set(client.sample(256, 0.4).shards.tolist()) == {0, 1, 2}
    port, held = shards[1].port, shards[1].table.info()

    shards[1].stop()  # drains and writes its snapshot
    for _ in range(20):
        sample = client.sample(256, 0.4)
        assert set(sample.shards.tolist()) == {0, 2}
        assert sample.total_size == 200
    client.insert(transitions(1000, 10), np.ones(10))  # inserts skip the missing shard too

    restarted = start_shard(capacity=1000, snapshot_path=paths[1], port=port)
    info = restarted.table.info()
    assert (info.size, info.inserts, info.total_priority_mass) == (
        held.size,
        held.inserts,
        held.total_priority_mass,
    )

    def shard_one_sampled_again() -> bool:
        return 1 in client.sample(256, 0.4).shards

    wait_until(shard_one_sampled_again, timeout_s=30)
    assert client.shards_up() == 3
    assert restarted.table.info().incarnation == 2
