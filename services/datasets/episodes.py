"""One environment's episode assembled step by step, as a dataset stores it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class RecordedEpisode:
    """A whole episode: ``steps + 1`` observations (the first after the reset), ``steps`` of the rest."""

    seed: int | None  # the reset's, where one was given
    observations: NDArray[Any]
    actions: NDArray[Any]
    rewards: NDArray[np.float64]  # the environment's own, never clipped
    terminations: NDArray[np.bool_]
    truncations: NDArray[np.bool_]

    @property
    def steps(self) -> int:
        return len(self.rewards)

    @property
    def episode_return(self) -> float:
        return float(self.rewards.sum())


class EpisodeTrace:
    """The steps of the episode under way in one environment."""

    def __init__(self, observation: Any, seed: int | None = None) -> None:
        self._seed = seed
        self._observations: list[Any] = [np.asarray(observation)]
        self._actions: list[Any] = []
        self._rewards: list[float] = []
        self._terminations: list[bool] = []
        self._truncations: list[bool] = []

    @property
    def steps(self) -> int:
        return len(self._rewards)

    def add(self, action: Any, reward: float, terminated: bool, truncated: bool, observation: Any) -> None:
        """One step: the action taken, what the environment returned for it."""
        self._actions.append(np.asarray(action))
        self._rewards.append(float(reward))
        self._terminations.append(bool(terminated))
        self._truncations.append(bool(truncated))
        self._observations.append(np.asarray(observation))

    def finish(self, truncated: bool = False) -> RecordedEpisode:
        """The episode so far; ``truncated`` marks its last step truncated (ended from outside)."""
        if not self._rewards:
            raise ValueError("an episode of no steps cannot be recorded")
        truncations = np.array(self._truncations)
        if truncated:
            truncations[-1] = not self._terminations[-1]
        return RecordedEpisode(
            self._seed,
            np.stack(self._observations),
            np.stack(self._actions),
            np.array(self._rewards, dtype=np.float64),
            np.array(self._terminations),
            truncations,
        )
