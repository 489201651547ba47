"""The prioritized table: storage, FIFO eviction, keys and their generations, validation."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray

from services.common.encoded import InvalidInputError, dense
from services.replay.rate_limiter import NotEnoughDataError, RateLimiterSettings
from services.replay.table import PrioritizedTable, check_priorities


def batch(first: int, count: int) -> dict[str, NDArray[np.generic]]:
    """Transitions whose observation encodes their insertion index, so tests can tell them apart."""
    index = np.arange(first, first + count)
    return {
        "observation": np.repeat(index[:, None], 4, axis=1).astype(np.float32),
        "action": index.astype(np.int64),
    }


def make_table(capacity: int = 10, alpha: float = 1.0, min_size: int = 1) -> PrioritizedTable:
    return PrioritizedTable(capacity, alpha, RateLimiterSettings(min_size_to_sample=min_size), seed=3)


def test_inserted_items_come_back_with_their_keys() -> None:
    table = make_table()
    keys = table.insert(batch(0, 5), np.ones(5), max_wait_s=0)
    sample = table.sample(200, max_wait_s=0)
    actions = dense(sample.columns["action"])
    assert set(actions.tolist()) == {0, 1, 2, 3, 4}
    # A key identifies the item it came with.
    np.testing.assert_array_equal(sample.keys, keys[actions])
    assert sample.total_priority_mass == 5.0
    assert sample.size == 5


def test_fifo_eviction_keeps_the_newest_capacity_items_across_the_wrap() -> None:
    table = make_table(capacity=10)
    table.insert(batch(0, 7), np.ones(7), max_wait_s=0)
    table.insert(batch(7, 6), np.ones(6), max_wait_s=0)  # wraps: items 0..2 evicted
    sample = table.sample(2000, max_wait_s=0)
    assert set(dense(sample.columns["action"]).tolist()) == set(range(3, 13))
    np.testing.assert_array_equal(dense(sample.columns["observation"])[:, 0], dense(sample.columns["action"]))
    info = table.info()
    assert (info.size, info.inserts, info.total_priority_mass) == (10, 13, 10.0)


def test_an_insert_across_the_wrap_gives_each_item_its_own_priority() -> None:
    """The ring's slots wrap mid-batch: the priorities land on both runs of slots."""
    table = make_table(capacity=10)
    table.insert(batch(0, 7), np.full(7, 1.0), max_wait_s=0)
    table.insert(batch(7, 6), np.arange(1.0, 7.0), max_wait_s=0)  # slots 7, 8, 9, then 0, 1, 2
    sample = table.sample(20_000, max_wait_s=0)
    actions = dense(sample.columns["action"])
    # Items 3..6 keep priority 1, items 7..12 have 1..6: masses 1 (x4), 1, 2, .., 6; total 25.
    assert table.info().total_priority_mass == 25.0
    expected = dict.fromkeys(range(3, 7), 1.0) | {7 + k: float(k + 1) for k in range(6)}
    for item, mass in expected.items():
        np.testing.assert_array_equal(sample.priority_masses[actions == item], mass)
    counts = np.bincount(actions, minlength=13)[3:]
    np.testing.assert_allclose(counts / len(actions), np.array(list(expected.values())) / 25.0, atol=0.015)


def test_a_priority_update_for_an_evicted_item_is_ignored_not_applied_to_its_successor() -> None:
    table = make_table(capacity=4)
    old_keys = table.insert(batch(0, 4), np.ones(4), max_wait_s=0)
    table.insert(batch(4, 2), np.ones(2), max_wait_s=0)  # items 0 and 1 evicted, their slots reused
    result = table.update_priorities(old_keys[:3], np.array([100.0, 100.0, 5.0]))
    assert (result.updated, result.stale) == (1, 2)
    # Total: items 4, 5, 3 at 1.0 and item 2 at 5.0.
    assert table.info().total_priority_mass == 8.0


def test_priorities_are_raised_to_alpha() -> None:
    table = make_table(alpha=0.5)
    keys = table.insert(batch(0, 2), np.array([4.0, 9.0]), max_wait_s=0)
    assert table.info().total_priority_mass == pytest.approx(5.0)
    table.update_priorities(keys[:1], np.array([16.0]))
    sample = table.sample(50, max_wait_s=0)
    assert set(sample.priority_masses.tolist()) == {3.0, 4.0}


def test_keys_never_issued_are_rejected_and_nothing_changes() -> None:
    table = make_table()
    keys = table.insert(batch(0, 3), np.ones(3), max_wait_s=0)
    future_key = keys[-1] + 1
    later_start = keys[0] + 10**12  # what a start 1000 s from now would issue
    for bad in (future_key, later_start, np.int64(-1)):
        with pytest.raises(InvalidInputError, match="never issued"):
            table.update_priorities(np.array([keys[0], bad], dtype=np.int64), np.array([9.0, 9.0]))
    assert table.info().total_priority_mass == 3.0
    assert table.info().priority_updates == 0


@pytest.mark.parametrize(
    ("priorities", "message"),
    [
        (np.array([1.0, np.nan, 1.0]), r"priority\[1\] = nan"),
        (np.array([1.0, 1.0, np.inf]), r"priority\[2\] = inf"),
        (np.array([-0.5, 1.0, 1.0]), r"priority\[0\] = -0.5"),
        (np.array([1.0, 1.0]), r"shape \[2\], expected \[3\]"),
        (np.array([1, 1, 1]), "must be float32 or float64"),
    ],
)
def test_bad_priorities_are_rejected_naming_the_value(priorities: NDArray[np.generic], message: str) -> None:
    table = make_table()
    with pytest.raises(InvalidInputError, match=message):
        table.insert(batch(0, 3), priorities, max_wait_s=0)
    assert table.info().size == 0


def test_a_batch_that_differs_from_the_signature_is_rejected_naming_the_column() -> None:
    table = make_table()
    table.insert(batch(0, 2), np.ones(2), max_wait_s=0)
    wrong_dtype = {**batch(2, 2), "action": np.zeros(2, dtype=np.int32)}
    wrong_shape = {**batch(2, 2), "observation": np.zeros((2, 5), dtype=np.float32)}
    missing = {"observation": batch(2, 2)["observation"]}
    extra = {**batch(2, 2), "bonus": np.zeros(2, dtype=np.float32)}
    ragged = {**batch(2, 2), "action": np.zeros(3, dtype=np.int64)}
    for columns, message in [
        (wrong_dtype, "column 'action' is int32\\[\\] but the table signature has int64\\[\\]"),
        (wrong_shape, "column 'observation' is float32\\[5\\]"),
        (missing, "lacks column\\(s\\) \\['action'\\]"),
        (extra, "column\\(s\\) \\['bonus'\\] not in the table signature"),
        (ragged, r"ragged batch: columns have different lengths \('action': 3, 'observation': 2\)"),
    ]:
        with pytest.raises(InvalidInputError, match=message):
            table.insert(columns, np.ones(2), max_wait_s=0)
    assert table.info().inserts == 2


def test_sampling_below_the_minimum_size_is_not_enough_data() -> None:
    table = make_table(min_size=5)
    table.insert(batch(0, 4), np.ones(4), max_wait_s=0)
    with pytest.raises(NotEnoughDataError, match="holds 4 items, needs 5"):
        table.sample(1, max_wait_s=0)


def test_items_with_priority_zero_are_never_sampled() -> None:
    table = make_table()
    table.insert(batch(0, 4), np.array([0.0, 1.0, 0.0, 2.0]), max_wait_s=0)
    assert set(dense(table.sample(500, max_wait_s=0).columns["action"]).tolist()) == {1, 3}


def test_a_batch_larger_than_the_table_is_rejected() -> None:
    with pytest.raises(InvalidInputError, match="exceeds the table capacity 10"):
        make_table(capacity=10).insert(batch(0, 11), np.ones(11), max_wait_s=0)


def test_restoring_state_keeps_items_and_counters_and_makes_old_keys_stale() -> None:
    table = make_table(capacity=6)
    table.insert(batch(0, 5), np.arange(1, 6, dtype=np.float64), max_wait_s=0)
    table.insert(batch(5, 3), np.arange(6, 9, dtype=np.float64), max_wait_s=0)
    old_keys = table.sample(4, max_wait_s=0).keys
    state = table.export_state()
    restored = PrioritizedTable(6, 1.0, RateLimiterSettings(), seed=1, state=state)
    info, before = restored.info(), table.info()
    assert (info.size, info.inserts, info.samples) == (6, 8, 4)
    assert info.incarnation > before.incarnation
    assert info.total_priority_mass == before.total_priority_mass
    assert restored.update_priorities(old_keys, np.ones(4)).stale == 4
    fresh = restored.sample(3000, max_wait_s=0)
    assert set(dense(fresh.columns["action"]).tolist()) == set(range(2, 8))
    assert restored.update_priorities(fresh.keys[:1], np.ones(1)).updated == 1
    # New inserts continue the sequence in the right slots.
    restored.insert(batch(8, 1), np.ones(1), max_wait_s=0)
    assert set(dense(restored.sample(3000, max_wait_s=0).columns["action"]).tolist()) == set(range(3, 9))


def test_restoring_with_another_capacity_is_refused() -> None:
    state = make_table(capacity=6).export_state()
    with pytest.raises(ValueError, match="capacity 6, this shard has 7"):
        PrioritizedTable(7, 1.0, RateLimiterSettings(), state=state)


def test_restoring_with_another_alpha_reweights_the_priorities() -> None:
    table = make_table(alpha=1.0)
    table.insert(batch(0, 2), np.array([4.0, 9.0]), max_wait_s=0)
    restored = PrioritizedTable(10, 0.5, RateLimiterSettings(), state=table.export_state())
    assert restored.info().total_priority_mass == pytest.approx(5.0)


@pytest.mark.parametrize(
    ("priorities", "message"),
    [
        ([1.0, -0.5, 2.0], r"priority\[1\] = -0.5 \(1 bad of 3\)"),
        ([np.nan, 1.0, np.nan], r"priority\[0\] = nan \(2 bad of 3\)"),
        ([1.0, 1.0, -np.inf], r"priority\[2\] = -inf"),
        ([np.inf, 0.0, 1.0], r"priority\[0\] = inf"),
    ],
)
def test_priorities_must_be_finite_and_non_negative(priorities: list[float], message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        check_priorities(np.array(priorities, dtype=np.float32), 3)


def test_zero_and_negative_zero_priorities_are_accepted() -> None:
    values = check_priorities(np.array([0.0, -0.0, 3.0], dtype=np.float32), 3)
    assert values.dtype == np.float64
    assert values.tolist() == [0.0, 0.0, 3.0]
