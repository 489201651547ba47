"""Creating the experiment's gymnasium environment the same way everywhere, and describing its spaces."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.wrappers import FrameStackObservation, TransformObservation
from numpy.typing import NDArray


def make_environment(
    environment_id: str, options: Mapping[str, Any], frame_stack: int = 1
) -> gym.Env[Any, Any]:
    """``gymnasium.make(id, **options)``, with ``frame_stack`` frames stacked on the last axis."""
    try:
        environment = gym.make(environment_id, **dict(options))
    except gym.error.Error as error:
        raise ValueError(f"cannot create environment {environment_id!r}: {error}") from error
    if frame_stack > 1:
        environment = FrameStackObservation(environment, frame_stack)
        stacked = environment.observation_space
        assert isinstance(stacked, gym.spaces.Box)
        # FrameStackObservation stacks on a new first axis; images want it last ([H, W, frames]).
        low, high = np.moveaxis(stacked.low, 0, -1), np.moveaxis(stacked.high, 0, -1)
        environment = TransformObservation(
            environment,
            lambda observation: np.moveaxis(observation, 0, -1),
            gym.spaces.Box(low=low, high=high, dtype=stacked.dtype),
        )
    return environment


@dataclass(frozen=True)
class DiscreteActions:
    """``Discrete(count)``: actions are the integers 0 .. count - 1."""

    count: int


@dataclass(frozen=True, eq=False)
class BoxActions:
    """``Box(low, high)``: real-valued actions, each dimension within its finite bounds."""

    low: NDArray[np.float32]
    high: NDArray[np.float32]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.low.shape)


ActionSpace = DiscreteActions | BoxActions


@dataclass(frozen=True)
class EnvironmentSpec:
    """What learner and actors must agree on about an environment: its observations and actions."""

    observation_shape: tuple[int, ...]
    observation_dtype: np.dtype[Any]
    actions: ActionSpace


def _action_space(space: gym.Space[Any]) -> ActionSpace:
    if isinstance(space, gym.spaces.Discrete):
        return DiscreteActions(int(space.n))
    if isinstance(space, gym.spaces.Box):
        low, high = space.low.astype(np.float32), space.high.astype(np.float32)
        if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high)) and np.all(low < high)):
            raise ValueError(f"a Box action space needs finite bounds with low < high, got {space}")
        return BoxActions(low, high)
    raise ValueError(f"unsupported action space {space}: only Discrete(n) and Box(low, high) are")


def environment_spec(environment: gym.Env[Any, Any]) -> EnvironmentSpec:
    """The spec of a created environment; ValueError for spaces apexrl cannot train on."""
    observations = environment.observation_space
    if observations.shape is None or observations.dtype is None:
        raise ValueError(f"observation space {observations} has no shape or dtype")
    return EnvironmentSpec(
        tuple(observations.shape), np.dtype(observations.dtype), _action_space(environment.action_space)
    )


def describe_environment(
    environment_id: str, options: Mapping[str, Any], frame_stack: int = 1
) -> EnvironmentSpec:
    """Creates the environment once to read its spec, then closes it."""
    environment = make_environment(environment_id, options, frame_stack)
    try:
        return environment_spec(environment)
    finally:
        environment.close()
