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


class LivesGame(gym.Env[NDArray[np.float32], np.int64]):
    """A game of ``lives`` lives, one lost every ``life_length`` steps; ``info["lives"]`` as in ALE.

    The observation [game, step, lives] names the step of the game, so a test can tell a
    game that goes on from a reset one; step t rewards ``rewards[t % len(rewards)]``.
    """

    def __init__(self, lives: int, life_length: int, rewards: tuple[float, ...] = (1.0,)) -> None:
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self._start_lives, self._life_length, self._rewards = lives, life_length, rewards
        self._game, self._step, self._lives = -1, 0, lives

    def _observation(self) -> NDArray[np.float32]:
        return np.array([self._game, self._step, self._lives], dtype=np.float32)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[NDArray[np.float32], dict[str, Any]]:
        super().reset(seed=seed)
        self._game, self._step, self._lives = self._game + 1, 0, self._start_lives
        return self._observation(), {"lives": self._lives}

    def step(self, action: np.int64) -> tuple[NDArray[np.float32], float, bool, bool, dict[str, Any]]:
        assert self._lives > 0, "stepped after the game ended, without a reset"
        reward = self._rewards[self._step % len(self._rewards)]
        self._step += 1
        if self._step % self._life_length == 0:
            self._lives -= 1
        return self._observation(), reward, self._lives == 0, False, {"lives": self._lives}


class UnreadableInfo(dict[str, Any]):
    """An info dict that fails when read: the rollout must not look at infos it does not need."""

    def __getitem__(self, key: str) -> Any:
        raise AssertionError(f"info[{key!r}] read")

    def get(self, key: str, default: Any = None) -> Any:
        raise AssertionError(f"info.get({key!r}) read")


class SilentInfoGame(LivesGame):
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[NDArray[np.float32], dict[str, Any]]:
        return super().reset(seed=seed, options=options)[0], UnreadableInfo()

    def step(self, action: np.int64) -> tuple[NDArray[np.float32], float, bool, bool, dict[str, Any]]:
        observation, reward, terminated, truncated, _ = super().step(action)
        return observation, reward, terminated, truncated, UnreadableInfo()


def zeros(observations: NDArray[Any]) -> NDArray[np.int64]:
    return np.zeros(len(observations), dtype=np.int64)


def test_clipped_rewards_reach_the_builder_while_the_reported_return_is_the_true_sum() -> None:
    rewards = (2.5, -3.0, 0.0, 7.0, 0.25)
    environments: list[gym.Env[Any, Any]] = [LivesGame(1, 5, rewards), LivesGame(1, 5, rewards[::-1])]
    rollout = Rollout(environments, NStepBuilder(2, 1, GAMMA), seed=0, clip_rewards=True)
    learned = []
    for _ in range(5):
        learned.append(rollout.step(zeros)["reward"])
    # One-step transitions, one per env and step, in env order: each reward is sign(r).
    np.testing.assert_array_equal(np.stack(learned), np.sign([rewards, rewards[::-1]]).T)
    assert rollout.stats.episodes == 2
    assert rollout.stats.last_return == sum(rewards) == 6.75


def test_rewards_are_not_clipped_by_default() -> None:
    rollout = Rollout([LivesGame(1, 2, (2.5, -3.0))], NStepBuilder(1, 1, GAMMA), seed=0)
    np.testing.assert_array_equal(
        np.concatenate([rollout.step(zeros)["reward"] for _ in range(2)]), [2.5, -3.0]
    )
    assert rollout.stats.last_return == -0.5


def game_rows(lost_at: tuple[int, ...], terminal_at: tuple[int, ...], n_step: int) -> list[Row]:
    """The transitions of game 0 of ``LivesGame(3, 4)`` (reward 1 a step), in ``rows`` form.

    Lives are lost after the steps in ``lost_at``; the builder's windows end after the steps
    in ``terminal_at`` (discount 0 there), and run up to ``n_step`` steps otherwise.
    """

    def observation(t: int) -> tuple[int, int, int]:
        return (0, t, 3 - sum(1 for lost in lost_at if lost <= t))

    result = []
    for t in range(lost_at[-1]):
        end = min(terminal for terminal in terminal_at if terminal > t)
        m = min(n_step, end - t)
        reward = sum(GAMMA**j for j in range(m))
        discount = 0.0 if t + m == end else GAMMA**m
        result.append((observation(t), 0, round(reward, 4), round(discount, 4), observation(t + m)))
    return sorted(result)


def test_a_lost_life_ends_the_learned_returns_without_a_reset_and_a_game_end_counts_an_episode() -> None:
    # Lives are lost after steps 4 and 8; the third loss, after step 12, ends the game.
    rollout = Rollout([LivesGame(3, 4)], NStepBuilder(1, 2, GAMMA), seed=0, terminal_on_life_loss=True)
    emitted: list[Row] = []
    for step in range(1, 13):
        emitted += rows(rollout.step(zeros))
        if step < 12:
            # The game goes on through a lost life: the same game, its next step, no episode.
            np.testing.assert_array_equal(rollout.observations[0], [0, step, 3 - step // 4])
            assert rollout.stats.episodes == 0
    assert sorted(emitted) == game_rows((4, 8, 12), terminal_at=(4, 8, 12), n_step=2)
    # The real end resets the game and counts one episode with the whole game's return.
    np.testing.assert_array_equal(rollout.observations[0], [1, 0, 3])
    assert (rollout.stats.episodes, rollout.stats.last_return) == (1, 12.0)
    assert rows(rollout.flush()) == []


def test_without_terminal_on_life_loss_lives_are_ignored_and_infos_not_read() -> None:
    rollout = Rollout([SilentInfoGame(3, 4)], NStepBuilder(1, 2, GAMMA), seed=0)
    emitted: list[Row] = []
    for _ in range(12):
        emitted += rows(rollout.step(zeros))
    # Only the game's end is terminal: windows run across the lost lives.
    assert sorted(emitted) == game_rows((4, 8, 12), terminal_at=(12,), n_step=2)
    assert rollout.stats.episodes == 1


def test_on_breakout_the_first_lost_life_is_a_builder_terminal_without_a_reset() -> None:
    pytest.importorskip("ale_py")
    from services.common.environments import AtariSettings, make_environment  # noqa: PLC0415

    environment = make_environment(
        "ALE/Breakout-v5", {"repeat_action_probability": 0.0}, 4, AtariSettings(noop_max=0)
    )
    rollout = Rollout(
        [environment], NStepBuilder(1, 3, 0.99), seed=0, clip_rewards=True, terminal_on_life_loss=True
    )
    rng = np.random.default_rng(0)
    try:
        for _ in range(2_000):
            columns = rollout.step(lambda observations: rng.integers(4, size=len(observations)))
            if np.any(columns["discount"] == 0.0):
                break
        else:
            pytest.fail("no life was lost in 2,000 random steps")
        ale = environment.unwrapped.ale  # type: ignore[attr-defined]
        assert ale.lives() == 4
        assert rollout.stats.episodes == 0
        # No reset: the rollout acts on from the observation the terminal window ended at.
        assert len(columns["discount"]) == 3  # the three windows ending at the lost life
        assert np.all(columns["discount"] == 0.0)
        np.testing.assert_array_equal(columns["next_observation"][-1], rollout.observations[0])
        assert environment.unwrapped.ale.getEpisodeFrameNumber() > 0  # type: ignore[attr-defined]
        step = rollout.step(lambda observations: rng.integers(4, size=len(observations)))
        assert len(step["discount"]) == 0  # new windows start filling: nothing was drained
    finally:
        rollout.close()


def value_of(observations: NDArray[Any]) -> NDArray[np.float32]:
    """A stand-in for what a policy computes at an observation: unique per [env, episode, step]."""
    return (observations @ np.array([1000.0, 100.0, 1.0], dtype=np.float32)).astype(np.float32)


def act_recording(observations: NDArray[Any]) -> tuple[NDArray[np.int64], dict[str, NDArray[Any]]]:
    actions = (observations[:, 2] % 2).astype(np.int64)
    return actions, {"value": value_of(observations), "pair": np.stack([actions, actions + 1], axis=1)}


def record_only(observations: NDArray[Any]) -> dict[str, NDArray[Any]]:
    recorded_at.append(observations.copy())
    return {"value": value_of(observations), "pair": np.full((len(observations), 2), -1)}


recorded_at: list[NDArray[Any]] = []


@pytest.mark.parametrize("n_step", [1, 3])
def test_what_acting_recorded_comes_with_each_transition_from_its_observation_and_its_next(
    n_step: int,
) -> None:
    """acted.* is from the step a transition starts at; bootstrap.* from its next observation:
    the next step's act where the episode goes on, record() where it was truncated or at the
    flush, zeros where it terminated."""
    recorded_at.clear()
    layout = [(0, 3, False), (1, 4, True), (2, 7, False)]
    environments: list[gym.Env[Any, Any]] = [Corridor(*spec) for spec in layout]
    rollout = Rollout(environments, NStepBuilder(len(layout), n_step, GAMMA), seed=0, record=record_only)
    plain = Rollout([Corridor(*spec) for spec in layout], NStepBuilder(len(layout), n_step, GAMMA), seed=0)
    parts, plain_parts = [], []
    for _ in range(13):
        parts.append(rollout.step_recorded(act_recording))
        plain_parts.append(plain.step(lambda observations: act_recording(observations)[0]))
    parts.append(rollout.flush())
    plain_parts.append(plain.flush())
    columns = {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
    plain_columns = {name: np.concatenate([part[name] for part in plain_parts]) for name in plain_parts[0]}
    assert sorted(columns) == sorted(
        [*plain_columns, "acted.value", "acted.pair", "bootstrap.value", "bootstrap.pair"]
    )
    # The same transitions as without recording, each once.
    assert sorted(rows(columns)) == sorted(rows(plain_columns))
    np.testing.assert_array_equal(columns["acted.value"], value_of(columns["observation"]))
    np.testing.assert_array_equal(columns["acted.pair"][:, 0], columns["action"])
    terminal = columns["discount"] == 0.0
    assert terminal.any()
    assert not columns["bootstrap.value"][terminal].any()
    assert not columns["bootstrap.pair"][terminal].any()
    bootstraps = ~terminal
    np.testing.assert_array_equal(
        columns["bootstrap.value"][bootstraps], value_of(columns["next_observation"][bootstraps])
    )
    # record() ran for exactly the next observations no step acted on (-1 marks them):
    # truncated episodes' last ones, and each env's newest at the flush.
    following = [tuple(int(v) for v in row) for row in columns["next_observation"]]
    newest = {(0, 13 // 3, 13 % 3), (1, 13 // 4, 13 % 4), (2, 13 // 7, 13 % 7)}
    truncated_last = np.array([env == 1 and step == 4 for env, _, step in following])
    at_flush = np.array([row in newest for row in following])
    from_record = columns["bootstrap.pair"][:, 0] == -1
    np.testing.assert_array_equal(from_record, bootstraps & (truncated_last | at_flush))
    assert from_record.any()
    assert (bootstraps & ~from_record).any()
    assert len(recorded_at) >= 2
    rollout.close()
    plain.close()
