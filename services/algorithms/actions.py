"""Continuous actions between the environment's Box bounds and the unit cube [-1, 1] the policies work in.

The replay holds environment-scale float32 actions, what was really done; policies output
unit actions (tanh); actors rescale them before ``env.step``, and learners and initial
priorities map replay actions back to unit space with the bounds of the EnvironmentSpec.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from services.common.environments import BoxActions, EnvironmentSpec


def box_actions(environment: EnvironmentSpec, algorithm: str) -> BoxActions:
    """The environment's Box action space; ValueError naming ``algorithm`` for any other space."""
    if not isinstance(environment.actions, BoxActions):
        raise ValueError(f"{algorithm} needs a continuous (Box) action space, got {environment.actions}")
    return environment.actions


@dataclass(frozen=True, eq=False)
class ActionScaler:
    """The affine map a = center + u * half_range per dimension, for any finite Box (asymmetric too).

    Arithmetic is in float64 so that a round trip loses only the final float32 rounding.
    """

    low: NDArray[np.float64]
    high: NDArray[np.float64]

    def __post_init__(self) -> None:
        if self.low.shape != self.high.shape or not np.all(self.low < self.high):
            raise ValueError(f"action bounds need equal shapes and low < high, got {self.low}, {self.high}")

    @classmethod
    def from_box(cls, actions: BoxActions) -> ActionScaler:
        return cls(np.asarray(actions.low, np.float64), np.asarray(actions.high, np.float64))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.low.shape)

    @property
    def size(self) -> int:
        """Action dimensions in all: the width of the networks' unit action vectors."""
        return int(self.low.size)

    def _affine(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        return (self.high + self.low) / 2, (self.high - self.low) / 2

    def to_unit(self, actions: NDArray[Any]) -> NDArray[np.float32]:
        """[low, high] -> [-1, 1] elementwise over trailing axes of the Box's shape; not clipped."""
        center, half_range = self._affine()
        unit = (np.asarray(actions, np.float64) - center) / half_range
        return unit.astype(np.float32)

    def from_unit(self, unit: NDArray[Any]) -> NDArray[np.float32]:
        """[-1, 1] -> [low, high], clipped to the bounds so rounding can never step outside them."""
        center, half_range = self._affine()
        actions = np.clip(center + np.asarray(unit, np.float64) * half_range, self.low, self.high)
        # low and high are float32 values, so rounding the clipped float64 to float32 stays within them.
        scaled: NDArray[np.float32] = actions.astype(np.float32)
        return scaled

    def unit_batch(self, actions: NDArray[Any]) -> NDArray[np.float32]:
        """[B, *shape] environment actions -> [B, size] unit action vectors, as the networks take them."""
        return self.to_unit(actions).reshape(len(actions), self.size)

    def environment_batch(self, unit: NDArray[Any]) -> NDArray[np.float32]:
        """[B, size] unit action vectors -> [B, *shape] environment actions within the bounds."""
        return self.from_unit(np.asarray(unit).reshape(len(unit), *self.shape))
