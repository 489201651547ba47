"""Rescaling continuous actions between a Box's bounds and the unit cube, asymmetric bounds included."""

from __future__ import annotations

import numpy as np
import pytest

from services.algorithms.actions import ActionScaler, box_actions
from services.common.environments import BoxActions, DiscreteActions, EnvironmentSpec

ASYMMETRIC = ActionScaler.from_box(
    BoxActions(np.array([-1.0, 0.0], np.float32), np.array([3.0, 10.0], np.float32))
)


def test_bounds_and_midpoints_map_to_the_corners_and_centre_of_the_unit_cube() -> None:
    actions = np.array([[-1.0, 0.0], [3.0, 10.0], [1.0, 5.0], [0.0, 7.5]], np.float32)
    expected = np.array([[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0], [-0.5, 0.5]], np.float32)
    unit = ASYMMETRIC.to_unit(actions)
    assert unit.dtype == np.float32
    np.testing.assert_array_equal(unit, expected)
    np.testing.assert_array_equal(ASYMMETRIC.from_unit(expected), actions)


def test_a_round_trip_returns_the_actions_up_to_float32_rounding() -> None:
    rng = np.random.default_rng(0)
    actions = rng.uniform([-1.0, 0.0], [3.0, 10.0], size=(1000, 2)).astype(np.float32)
    round_trip = ASYMMETRIC.from_unit(ASYMMETRIC.to_unit(actions))
    assert round_trip.dtype == np.float32
    np.testing.assert_allclose(round_trip, actions, rtol=0, atol=1e-5)


def test_unit_values_beyond_the_cube_are_clipped_to_the_bounds() -> None:
    actions = ASYMMETRIC.from_unit(np.array([[-7.0, 1.5], [1.0 + 1e-7, -1.0 - 1e-7]]))
    np.testing.assert_array_equal(actions, np.array([[-1.0, 10.0], [3.0, 0.0]], np.float32))


def test_batches_of_multidimensional_boxes_are_flattened_for_the_networks_and_restored() -> None:
    scaler = ActionScaler.from_box(BoxActions(np.zeros((2, 3), np.float32), np.full((2, 3), 2.0, np.float32)))
    assert scaler.shape == (2, 3)
    assert scaler.size == 6
    actions = np.arange(24, dtype=np.float32).reshape(4, 2, 3) % 3
    unit = scaler.unit_batch(actions)
    assert unit.shape == (4, 6)
    np.testing.assert_array_equal(unit, (actions - 1.0).reshape(4, 6))
    np.testing.assert_array_equal(scaler.environment_batch(unit), np.clip(actions, 0.0, 2.0))


def test_bounds_must_be_ordered() -> None:
    with pytest.raises(ValueError, match="low < high"):
        ActionScaler(np.array([0.0, 1.0]), np.array([1.0, 1.0]))


def test_only_box_action_spaces_are_accepted() -> None:
    spec = EnvironmentSpec((4,), np.dtype(np.float32), DiscreteActions(2))
    with pytest.raises(ValueError, match=r"TD3 needs a continuous \(Box\) action space, got DiscreteActions"):
        box_actions(spec, "TD3")
