"""Stepping a set of environments together and turning their experience into n-step transitions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from numpy.typing import NDArray

from services.actor.n_step import Columns, NStepBuilder


@dataclass
class EpisodeStats:
    episodes: int = 0
    last_return: float = float("nan")


class Rollout:
    """E environments in lockstep: one batched policy call per step, episodes reset as they end."""

    def __init__(self, environments: list[gym.Env[Any, Any]], builder: NStepBuilder, seed: int) -> None:
        self._environments = environments
        self._builder = builder
        self._returns = np.zeros(len(environments))
        self.stats = EpisodeStats()
        self.observations = np.stack(
            [env.reset(seed=seed + index)[0] for index, env in enumerate(environments)]
        )

    @property
    def num_environments(self) -> int:
        return len(self._environments)

    def step(self, act: Callable[[NDArray[Any]], NDArray[Any]]) -> Columns:
        """Acts in every environment once; returns the n-step transitions completed."""
        actions = act(self.observations)
        results = [env.step(action) for env, action in zip(self._environments, actions, strict=True)]
        next_observations = np.stack([result[0] for result in results])
        rewards = np.array([result[1] for result in results], dtype=np.float64)
        terminated = np.array([result[2] for result in results], dtype=bool)
        truncated = np.array([result[3] for result in results], dtype=bool)
        transitions = self._builder.add(
            self.observations, actions, rewards, next_observations, terminated, truncated
        )
        self._returns += rewards
        following = next_observations.copy()
        for index in np.flatnonzero(terminated | truncated):
            self.stats.episodes += 1
            self.stats.last_return = float(self._returns[index])
            self._returns[index] = 0.0
            following[index] = self._environments[index].reset()[0]
        self.observations = following
        return transitions

    def flush(self) -> Columns:
        return self._builder.flush()

    def close(self) -> None:
        for environment in self._environments:
            environment.close()
