"""The sum tree against a brute-force reference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.replay.sum_tree import SumTree

capacities = st.integers(min_value=1, max_value=70)
masses = st.floats(min_value=0.0, max_value=1e6, allow_nan=False, allow_infinity=False)


@st.composite
def updates(draw: st.DrawFn) -> tuple[int, list[tuple[list[int], list[float]]]]:
    capacity = draw(capacities)
    slots = st.lists(st.integers(0, capacity - 1), min_size=1, max_size=20)
    batches = draw(
        st.lists(
            slots.flatmap(lambda s: st.tuples(st.just(s), st.lists(masses, min_size=len(s), max_size=len(s))))
        )
    )
    return capacity, batches


@given(updates())
@settings(max_examples=200, deadline=None)
def test_batched_set_matches_a_plain_array_and_its_sum(
    case: tuple[int, list[tuple[list[int], list[float]]]],
) -> None:
    capacity, batches = case
    tree = SumTree(capacity)
    reference = np.zeros(capacity)
    for slots, values in batches:
        tree.set(np.array(slots, dtype=np.int64), np.array(values))
        for slot, value in zip(slots, values, strict=True):
            reference[slot] = value  # the last write to a slot wins
    np.testing.assert_array_equal(tree.leaves(), reference)
    assert tree.total == pytest.approx(reference.sum(), rel=1e-12, abs=1e-9)


@given(st.integers(4_000, 40_000), st.integers(0, 2**32 - 1))
@settings(max_examples=50, deadline=None)
def test_set_on_a_tree_deeper_than_the_search_level_keeps_every_internal_node_a_sum(
    capacity: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    tree = SumTree(capacity)
    reference = np.zeros(capacity)
    for _ in range(5):
        slots = rng.integers(0, capacity, 300)
        values = rng.random(300)
        tree.set(slots, values)
        reference[slots] = values
    np.testing.assert_array_equal(tree.leaves(), reference)
    nodes = tree._nodes
    internal = np.arange(1, len(nodes) // 2)
    np.testing.assert_array_equal(nodes[internal], nodes[2 * internal] + nodes[2 * internal + 1])


@given(capacities.flatmap(lambda c: st.tuples(st.just(c), st.integers(0, c - 1), st.integers(1, c))))
@settings(max_examples=200, deadline=None)
def test_set_range_matches_set_for_contiguous_slots(case: tuple[int, int, int]) -> None:
    capacity, start, length = case
    length = min(length, capacity - start)
    values = np.random.default_rng(capacity * 1000 + start).random(length)
    by_range, by_slots = SumTree(capacity), SumTree(capacity)
    by_range.set_range(0, np.ones(capacity))  # every ancestor has a sum to replace
    by_range.set_range(start, values)
    by_slots.set(np.arange(capacity, dtype=np.int64), np.ones(capacity))
    by_slots.set(np.arange(start, start + length, dtype=np.int64), values)
    np.testing.assert_array_equal(by_range.leaves(), by_slots.leaves())
    assert by_range.total == by_slots.total
    nodes = by_range._nodes
    internal = np.arange(1, len(nodes) // 2)
    np.testing.assert_array_equal(nodes[internal], nodes[2 * internal] + nodes[2 * internal + 1])


# Past 2^12 leaves sampling searches one level's prefix sums, then descends.
@given(st.one_of(capacities, st.integers(4_000, 40_000)), st.integers(0, 2**32 - 1))
@settings(max_examples=100, deadline=None)
def test_sampling_descends_to_the_slot_whose_cumulative_interval_holds_the_draw(
    capacity: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    values = rng.random(capacity) * (rng.random(capacity) < 0.7)  # some zero masses
    if values.sum() == 0:
        values[0] = 1.0
    tree = SumTree(capacity)
    tree.set_range(0, values)
    uniforms = rng.random(64)
    slots = tree.sample(uniforms)
    cumulative = np.cumsum(values)
    expected = np.searchsorted(cumulative, uniforms * tree.total, side="right")
    positive = values[slots] > 0
    assert positive.all(), "a zero-mass slot was sampled"
    # Away from interval boundaries (rounding), the descent equals the brute-force search.
    margin = np.abs(cumulative[np.minimum(expected, capacity - 1)] - uniforms * tree.total) > 1e-9
    np.testing.assert_array_equal(slots[margin], expected[margin])


def test_draws_at_the_edges_never_return_zero_mass_slots() -> None:
    tree = SumTree(8)
    tree.set(np.array([2, 5], dtype=np.int64), np.array([1.0, 3.0]))
    slots = tree.sample(np.array([0.0, 0.25 - 1e-17, 0.25, 1.0 - 1e-16]))
    assert set(slots.tolist()) <= {2, 5}
    assert slots[0] == 2
    assert slots[-1] == 5
    # A draw that rounds up to the total itself walks right into empty slots on the
    # plain descent; the guarded descent brings it back to the last positive slot.
    assert tree.sample(np.array([1.0])).tolist() == [5]


def test_sampling_frequencies_follow_the_masses() -> None:
    tree = SumTree(5)
    values = np.array([1.0, 0.0, 2.0, 3.0, 4.0])
    tree.set_range(0, values)
    draws = 200_000
    counts = np.bincount(tree.sample(np.random.default_rng(7).random(draws)), minlength=5)
    expected = values / values.sum()
    # Binomial standard error; 6 sigma gives a negligible false-failure chance.
    sigma = np.sqrt(draws * expected * (1 - expected))
    assert np.all(np.abs(counts - draws * expected) <= 6 * sigma + 1e-9)


def test_sampling_an_empty_tree_is_an_error() -> None:
    with pytest.raises(ValueError, match="total mass is 0"):
        SumTree(4).sample(np.array([0.5]))


def test_a_range_outside_the_tree_is_rejected() -> None:
    with pytest.raises(IndexError):
        SumTree(4).set_range(3, np.ones(2))
