"""Stepping a set of environments together and turning their experience into n-step transitions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
from numpy.typing import NDArray

from services.actor.n_step import Columns, NStepBuilder

if TYPE_CHECKING:
    from services.datasets.actor_stream import EpisodeStream


@dataclass
class EpisodeStats:
    episodes: int = 0
    last_return: float = float("nan")


class Rollout:
    """E environments in lockstep: one batched policy call per step, episodes reset as they end.

    Two learning-only signals (the standard Atari ones) change what the n-step builder sees,
    never the episodes or their returns: ``clip_rewards`` gives it ``sign(reward)``, and
    ``terminal_on_life_loss`` marks a step terminal when ``info["lives"]`` drops, so no
    return bootstraps across a lost life, while the game goes on without a reset.
    ``episodes``, where given, records the episodes as they are played, for a dataset.
    """

    def __init__(
        self,
        environments: list[gym.Env[Any, Any]],
        builder: NStepBuilder,
        seed: int,
        clip_rewards: bool = False,
        terminal_on_life_loss: bool = False,
        episodes: EpisodeStream | None = None,
    ) -> None:
        self._environments = environments
        self._episodes = episodes
        self._builder = builder
        self._clip_rewards = clip_rewards
        self._terminal_on_life_loss = terminal_on_life_loss
        self._returns = np.zeros(len(environments))
        self.stats = EpisodeStats()
        resets = [env.reset(seed=seed + index) for index, env in enumerate(environments)]
        self.observations = np.stack([observation for observation, _ in resets])
        if episodes is not None:
            episodes.begin(self.observations, [seed + index for index in range(len(environments))])
        # Lives left in each game (read only with terminal_on_life_loss); NaN: none reported, never a loss.
        self._lives = np.full(len(environments), np.nan)
        if terminal_on_life_loss:
            self._lives[:] = [_lives(info) for _, info in resets]

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
        ended = terminated | truncated
        learned_terminal = terminated
        if self._terminal_on_life_loss:
            lives = np.array([_lives(result[4]) for result in results], dtype=np.float64)
            learned_terminal = terminated | (lives < self._lives)  # NaN compares False
            self._lives = lives
        transitions = self._builder.add(
            self.observations,
            actions,
            np.sign(rewards) if self._clip_rewards else rewards,
            next_observations,
            learned_terminal,
            truncated,
        )
        self._returns += rewards
        if self._episodes is not None:
            self._episodes.step(actions, rewards, terminated, truncated, next_observations)
        following = next_observations.copy()
        for index in np.flatnonzero(ended):
            self.stats.episodes += 1
            self.stats.last_return = float(self._returns[index])
            self._returns[index] = 0.0
            following[index], info = self._environments[index].reset()
            if self._terminal_on_life_loss:
                self._lives[index] = _lives(info)
            if self._episodes is not None:
                self._episodes.restart(int(index), following[index])
        self.observations = following
        return transitions

    def flush(self) -> Columns:
        return self._builder.flush()

    def close(self) -> None:
        for environment in self._environments:
            environment.close()
        if self._episodes is not None:
            self._episodes.close()


def _lives(info: dict[str, Any]) -> float:
    """The lives an environment's info reports (ale-py does), NaN when it reports none."""
    return float(info.get("lives", np.nan))
