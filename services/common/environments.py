"""Creating the experiment's gymnasium environment the same way in learner, actors and evaluator."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.wrappers import FrameStackObservation, TransformObservation


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


def discrete_action_count(environment: gym.Env[Any, Any]) -> int:
    """Number of actions of a discrete action space; ValueError for other spaces."""
    space = environment.action_space
    if not isinstance(space, gym.spaces.Discrete):
        raise ValueError(f"Ape-X DQN needs a discrete action space, got {space}")
    return int(space.n)


def observation_shape(environment: gym.Env[Any, Any]) -> tuple[int, ...]:
    space = environment.observation_space
    if space.shape is None:
        raise ValueError(f"observation space {space} has no shape")
    return tuple(space.shape)
