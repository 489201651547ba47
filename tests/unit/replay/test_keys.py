"""Keys never repeat across starts of a shard, and keys of an earlier start are stale, never applied."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from services.common.encoded import InvalidInputError, dense
from services.replay.rate_limiter import RateLimiterSettings
from services.replay.snapshot import load_snapshot, save_snapshot
from services.replay.table import MAX_INCARNATION, PrioritizedTable, TableState
from tests.unit.replay.test_table import batch

CAPACITY = 8


def start(state: TableState | None = None, clock_ns: int | None = None) -> PrioritizedTable:
    """A table as a shard starts one: on the wall clock unless the test sets it."""
    settings = RateLimiterSettings()
    if clock_ns is None:
        return PrioritizedTable(CAPACITY, 1.0, settings, seed=5, state=state)
    return PrioritizedTable(CAPACITY, 1.0, settings, seed=5, state=state, clock_ns=lambda: clock_ns)


def held_keys(table: PrioritizedTable) -> NDArray[np.int64]:
    """The keys of every item held (uniform priorities: 2000 draws of <= 8 items find them all)."""
    return np.unique(table.sample(2000, max_wait_s=0).keys)


def assert_stale_and_not_applied(table: PrioritizedTable, keys: NDArray[np.int64]) -> None:
    before = table.export_state().priority_masses
    result = table.update_priorities(keys, np.full(keys.shape[0], 50.0))
    assert (result.updated, result.stale) == (0, keys.shape[0])
    np.testing.assert_array_equal(table.export_state().priority_masses, before)
    assert table.info().priority_updates == 0


def test_two_starts_without_a_snapshot_issue_disjoint_keys_and_the_first_ones_are_stale() -> None:
    first = start()
    first_keys = first.insert(batch(0, 5), np.ones(5), max_wait_s=0)
    # A shard killed before any snapshot starts again empty, and inserts as much again and more.
    second = start()
    second_keys = second.insert(batch(0, 7), np.ones(7), max_wait_s=0)
    assert np.intersect1d(first_keys, second_keys).size == 0
    assert first_keys.max() < second.info().incarnation == second_keys.min()
    assert_stale_and_not_applied(second, first_keys)
    assert second.update_priorities(second_keys[:2], np.array([3.0, 4.0])).updated == 2


def test_restoring_one_snapshot_twice_gives_distinct_incarnations_and_disjoint_keys(tmp_path: Path) -> None:
    original = start()
    original_keys = original.insert(batch(0, 6), np.arange(1.0, 7.0), max_wait_s=0)
    path = tmp_path / "shard.snapshot"
    save_snapshot(original, path)
    restarts: list[tuple[int, NDArray[np.int64]]] = []
    for _ in range(2):  # killed after the restore each time: the same file again
        table = start(load_snapshot(path))
        keys = np.concatenate([held_keys(table), table.insert(batch(6, 1), np.ones(1), max_wait_s=0)])
        assert_stale_and_not_applied(table, original_keys)
        restarts.append((table.info().incarnation, keys))
    (first_incarnation, first_keys), (second_incarnation, second_keys) = restarts
    assert original.info().incarnation < first_incarnation < second_incarnation
    assert np.intersect1d(first_keys, second_keys).size == 0
    assert np.intersect1d(original_keys, second_keys).size == 0
    assert_stale_and_not_applied(table, first_keys)
    # The restored items keep their priorities under their new keys.
    assert set(dense(table.sample(2000, max_wait_s=0).columns["action"]).tolist()) == set(range(6)) | {6}


def test_a_restore_on_a_clock_behind_the_snapshot_starts_above_every_key_it_had_issued() -> None:
    table = start(clock_ns=10**18)
    old_keys = table.insert(batch(0, 5), np.ones(5), max_wait_s=0)
    state = table.export_state()
    assert state.counters.next_key == 10**18 + 5
    restored = start(state, clock_ns=10**18 - 60 * 10**9)  # the clock stepped back a minute
    assert restored.info().incarnation == 10**18 + 5
    assert np.intersect1d(held_keys(restored), old_keys).size == 0
    assert_stale_and_not_applied(restored, old_keys)


def test_keys_below_the_incarnation_are_stale_and_keys_not_issued_yet_are_unknown() -> None:
    table = start(clock_ns=10**18)
    keys = table.insert(batch(0, 3), np.ones(3), max_wait_s=0)
    assert_stale_and_not_applied(table, np.array([0, 5, 10**18 - 1], dtype=np.int64))
    for unknown in (keys[-1] + 1, np.iinfo(np.int64).max, -1):
        with pytest.raises(InvalidInputError, match="never issued by this shard"):
            table.update_priorities(np.array([unknown], dtype=np.int64), np.ones(1))


@pytest.mark.parametrize("clock_ns", [-1, MAX_INCARNATION + 1])
def test_a_clock_outside_the_key_range_is_refused(clock_ns: int) -> None:
    with pytest.raises(ValueError, match="is the clock set"):
        start(clock_ns=clock_ns)
    assert start(clock_ns=MAX_INCARNATION).info().incarnation == MAX_INCARNATION


def test_keys_of_a_snapshot_written_before_clock_based_keys_are_stale_after_its_restore(
    tmp_path: Path,
) -> None:
    path = tmp_path / "shard.snapshot"
    save_snapshot(start(clock_ns=10**18), path)
    legacy = tmp_path / "legacy.snapshot"
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(legacy, "w") as target:
        for entry in source.namelist():
            content = source.read(entry)
            if entry == "manifest.json":
                manifest = json.loads(content)
                del manifest["counters"]["next_key"]
                manifest["counters"]["incarnation"] = 3
                content = json.dumps(manifest).encode()
            target.writestr(entry, content)
    state = load_snapshot(legacy)
    assert state.counters.next_key == 4 << 40  # above every (3 << 40) | sequence key of that start
    restored = start(state, clock_ns=5)
    restored.insert(batch(0, 2), np.ones(2), max_wait_s=0)
    assert restored.info().incarnation == 4 << 40
    assert_stale_and_not_applied(restored, np.array([3 << 40, (3 << 40) | 7], dtype=np.int64))
