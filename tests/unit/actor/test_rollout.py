"""The rollout hands each ended episode's final observation, then the reset one, to the n-step builder."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from numpy.typing import NDArray

from services.actor.n_step import NStepBuilder
from services.actor.rollout import Rollout

GAMMA = 0.9
Row = tuple[tuple[int, int, int], int, float, float, tuple[int, int, int]]


class Corridor(gym.Env[NDArray[np.float32], np.int64]):
    """Walks ``length`` steps, then terminates (or is truncated); reward t + 1 at step t.

    The observation [env, episode, step] names the step exactly, so a test can tell the
    final observation [env, e, length] from the reset one [env, e + 1, 0].
    """

    def __init__(self, index: int, length: int, truncate: bool) -> None:
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self._index, self._length, self._truncate = index, length, truncate
        self._episode, self._step = -1, 0

    def _observation(self) -> NDArray[np.float32]:
        return np.array([self._index, self._episode, self._step], dtype=np.float32)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[NDArray[np.float32], dict[str, Any]]:
        super().reset(seed=seed)
        self._episode, self._step = self._episode + 1, 0
        return self._observation(), {}

    def step(self, action: np.int64) -> tuple[NDArray[np.float32], float, bool, bool, dict[str, Any]]:
        assert self._step < self._length, "stepped after the episode ended, without a reset"
        reward = float(self._step + 1)
        self._step += 1
        ended = self._step == self._length
        return self._observation(), reward, ended and not self._truncate, ended and self._truncate, {}


def rows(columns: dict[str, NDArray[Any]]) -> list[Row]:
    return sorted(
        (
            (int(obs[0]), int(obs[1]), int(obs[2])),
            int(action),
            round(float(reward), 4),
            round(float(discount), 4),
            (int(nxt[0]), int(nxt[1]), int(nxt[2])),
        )
        for obs, action, reward, discount, nxt in zip(
            columns["observation"],
            columns["action"],
            columns["reward"],
            columns["discount"],
            columns["next_observation"],
            strict=True,
        )
    )


def expected_rows(index: int, length: int, truncate: bool, steps: int, n_step: int) -> list[Row]:
    """Every step k of the run (episode k // length, step t = k % length) starts one transition.

    Its window ends at the episode's end or n steps later, or where the run stopped
    (flushed, bootstrapping from the latest observation): next_observation is the
    observation after its last step, from the same episode, never a reset one.
    """
    result = []
    for k in range(steps):
        episode, t = divmod(k, length)
        m = min(n_step, length - t, steps - k)
        reward = sum(GAMMA**j * (t + 1 + j) for j in range(m))
        terminal = t + m == length and not truncate
        discount = 0.0 if terminal else GAMMA**m
        result.append(((index, episode, t), 1, round(reward, 4), round(discount, 4), (index, episode, t + m)))
    return result


@pytest.mark.parametrize("n_step", [1, 3])
def test_an_ended_episode_ends_its_transitions_at_the_final_observation_and_the_next_starts_at_the_reset(
    n_step: int,
) -> None:
    # Env 0 terminates every 3 steps, env 1 is truncated every 4: both end episodes mid-run.
    layout = [(0, 3, False), (1, 4, True)]
    environments: list[gym.Env[Any, Any]] = [Corridor(*spec) for spec in layout]
    rollout = Rollout(environments, NStepBuilder(len(layout), n_step, GAMMA), seed=0)
    np.testing.assert_array_equal(rollout.observations, [[0, 0, 0], [1, 0, 0]])
    steps = 11
    emitted = []
    for step in range(1, steps + 1):
        emitted += rows(rollout.step(lambda observations: np.ones(len(observations), dtype=np.int64)))
        # After an end the rollout acts from the reset observation.
        for env, (index, length, _) in enumerate(layout):
            episode, t = divmod(step, length)
            np.testing.assert_array_equal(rollout.observations[env], [index, episode, t])
    emitted += rows(rollout.flush())
    expected = sorted(row for spec in layout for row in expected_rows(*spec, steps=steps, n_step=n_step))
    assert sorted(emitted) == expected
    assert rollout.stats.episodes == 11 // 3 + 11 // 4
    rollout.close()


def test_episode_returns_are_counted_per_environment_and_reset_with_the_episode() -> None:
    environments: list[gym.Env[Any, Any]] = [Corridor(0, 2, False), Corridor(1, 5, True)]
    rollout = Rollout(environments, NStepBuilder(2, 1, GAMMA), seed=0)
    ends = []
    for _ in range(6):
        rollout.step(lambda observations: np.zeros(len(observations), dtype=np.int64))
        ends.append((rollout.stats.episodes, rollout.stats.last_return))
    # Env 0 ends after steps 2, 4, 6 with 1 + 2 = 3; env 1 after step 5 with 1 + ... + 5 = 15.
    assert ends[1] == (1, 3.0)
    assert ends[3] == (2, 3.0)
    assert ends[4] == (3, 15.0)
    assert ends[5] == (4, 3.0)
