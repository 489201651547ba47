"""The n-step builder against a brute-force per-env reference and hand-checked episodes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from services.actor.n_step import NStepBuilder

Row = tuple[tuple[int, ...], int, float, float, tuple[int, ...]]
Columns = dict[str, NDArray[Any]]
KEYS = {"observation", "action", "reward", "discount", "next_observation"}


@dataclass
class Window:
    observation: tuple[int, ...]
    action: int
    rewards: list[float] = field(default_factory=list)


class ReferenceNStep:
    """Per-env lists of open windows, each extended by every reward: written for clarity, not speed."""

    def __init__(self, num_envs: int, n_step: int, discount: float) -> None:
        self.n_step = n_step
        self.gamma = discount
        self.windows: list[list[Window]] = [[] for _ in range(num_envs)]
        self.last_next: list[tuple[int, ...]] = [() for _ in range(num_envs)]

    def row(self, window: Window, next_observation: tuple[int, ...], terminal: bool) -> Row:
        m = len(window.rewards)
        reward = sum(self.gamma**k * r for k, r in enumerate(window.rewards))
        discount = 0.0 if terminal else self.gamma**m
        return window.observation, window.action, reward, discount, next_observation

    def add(self, step: tuple[NDArray[Any], ...]) -> list[Row]:
        """Takes add()'s six arguments as one tuple."""
        observations, actions, rewards, next_obs, terminated, truncated = step
        rows = []
        for env, windows in enumerate(self.windows):
            windows.append(Window(tuple(observations[env]), int(actions[env])))
            for window in windows:
                window.rewards.append(float(rewards[env]))
            self.last_next[env] = tuple(next_obs[env])
            if terminated[env] or truncated[env]:
                rows += [self.row(w, self.last_next[env], bool(terminated[env])) for w in windows]
                windows.clear()
            elif len(windows[0].rewards) == self.n_step:
                rows.append(self.row(windows.pop(0), self.last_next[env], terminal=False))
        return rows

    def flush(self) -> list[Row]:
        rows = [self.row(w, self.last_next[env], False) for env, ws in enumerate(self.windows) for w in ws]
        self.windows = [[] for _ in self.windows]
        return rows

    @property
    def pending(self) -> int:
        return sum(len(windows) for windows in self.windows)


def rows_of(columns: Columns) -> list[Row]:
    """Transitions as sortable rows; observations are integer codes, so rows match exactly."""
    assert set(columns) == KEYS
    assert len({len(column) for column in columns.values()}) == 1
    assert columns["reward"].dtype == np.float32
    assert columns["discount"].dtype == np.float32
    return [
        (tuple(int(v) for v in obs), int(action), float(reward), float(discount), tuple(int(v) for v in nxt))
        for obs, action, reward, discount, nxt in zip(
            columns["observation"],
            columns["action"],
            columns["reward"],
            columns["discount"],
            columns["next_observation"],
            strict=True,
        )
    ]


def assert_same_transitions(actual: list[Row], expected: list[Row]) -> None:
    actual, expected = sorted(actual), sorted(expected)
    assert [(row[0], row[1], row[4]) for row in actual] == [(row[0], row[1], row[4]) for row in expected]
    # float32 outputs against float64 sums.
    np.testing.assert_allclose([row[2] for row in actual], [row[2] for row in expected], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose([row[3] for row in actual], [row[3] for row in expected], rtol=1e-6, atol=1e-7)


FLUSH = None
EndKind = str  # "none", "terminated", "truncated" or "both"
Step = list[tuple[float, EndKind]]


@dataclass
class Scenario:
    num_envs: int
    n_step: int
    discount: float
    events: list[Step | None]  # None means flush()


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    num_envs = draw(st.integers(1, 4))
    per_env = st.tuples(
        st.floats(-10, 10, allow_nan=False),
        st.sampled_from(["none", "none", "none", "none", "terminated", "truncated", "both"]),
    )
    step = st.lists(per_env, min_size=num_envs, max_size=num_envs)
    events = draw(st.lists(st.one_of(step, step, step, st.just(FLUSH)), max_size=30))
    return Scenario(num_envs, draw(st.integers(1, 5)), draw(st.floats(0.0, 1.0)), events)


@given(scenarios())
@settings(max_examples=300, deadline=None)
def test_random_runs_match_the_reference_step_by_step_and_after_flush(scenario: Scenario) -> None:
    builder = NStepBuilder(scenario.num_envs, scenario.n_step, scenario.discount)
    reference = ReferenceNStep(scenario.num_envs, scenario.n_step, scenario.discount)
    envs = np.arange(scenario.num_envs)
    started: list[tuple[int, ...]] = []
    emitted: list[Row] = []
    for t, event in enumerate([*scenario.events, FLUSH]):
        if event is FLUSH:
            actual, expected = rows_of(builder.flush()), reference.flush()
        else:
            rewards = np.array([reward for reward, _ in event])
            terminated = np.array([end in {"terminated", "both"} for _, end in event])
            truncated = np.array([end in {"truncated", "both"} for _, end in event])
            # Observation (env, t); the next one is (env, t + 1), or (env, -t - 1) for a final
            # observation, which differs from the reset observation passed at t + 1.
            observations = np.stack([envs, np.full_like(envs, t)], axis=1)
            next_t = np.where(terminated | truncated, -t - 1, t + 1)
            next_observations = np.stack([envs, next_t], axis=1)
            actions = envs * 1000 + t
            args = (observations, actions, rewards, next_observations, terminated, truncated)
            started += [tuple(observation) for observation in observations.tolist()]
            actual, expected = rows_of(builder.add(*args)), reference.add(args)
        assert_same_transitions(actual, expected)
        assert builder.pending == reference.pending
        emitted += actual
    assert builder.pending == 0
    # Every step yields exactly one transition starting at it.
    assert sorted(row[0] for row in emitted) == sorted(started)


def run_single_episode(ended: str) -> list[Columns]:
    """n=3, gamma=0.5, one env, rewards 1..5 over steps 0..4; observation t, final observation 99."""
    builder = NStepBuilder(num_envs=1, n_step=3, discount=0.5)
    outputs = []
    for t in range(5):
        last = t == 4
        outputs.append(
            builder.add(
                np.array([[t]], dtype=np.float32),
                np.array([t]),
                np.array([t + 1.0]),
                np.array([[99 if last else t + 1]], dtype=np.float32),
                np.array([last and ended == "terminated"]),
                np.array([last and ended == "truncated"]),
            )
        )
    assert builder.pending == 0
    assert len(builder.flush()["observation"]) == 0
    return outputs


def test_a_terminated_episode_ends_with_partial_windows_that_do_not_bootstrap() -> None:
    outputs = run_single_episode("terminated")
    assert [len(out["reward"]) for out in outputs] == [0, 0, 1, 1, 3]
    # Full windows: 1 + 0.5*2 + 0.25*3 and 2 + 0.5*3 + 0.25*4, bootstrapping with 0.5^3.
    assert [float(outputs[t]["reward"][0]) for t in (2, 3)] == [2.75, 4.5]
    assert [float(outputs[t]["discount"][0]) for t in (2, 3)] == [0.125, 0.125]
    assert [float(outputs[t]["next_observation"][0, 0]) for t in (2, 3)] == [3.0, 4.0]
    last = outputs[4]
    order = np.argsort(last["observation"][:, 0])
    np.testing.assert_array_equal(last["observation"][order, 0], [2, 3, 4])
    np.testing.assert_array_equal(last["action"][order], [2, 3, 4])
    # 3 + 0.5*4 + 0.25*5, 4 + 0.5*5, 5: the last windows reach the terminal state.
    np.testing.assert_array_equal(last["reward"][order], [6.25, 6.5, 5.0])
    np.testing.assert_array_equal(last["discount"], [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(last["next_observation"][:, 0], [99, 99, 99])


def test_a_truncated_episode_bootstraps_its_partial_windows_from_the_final_observation() -> None:
    last = run_single_episode("truncated")[4]
    order = np.argsort(last["observation"][:, 0])
    np.testing.assert_array_equal(last["reward"][order], [6.25, 6.5, 5.0])
    np.testing.assert_array_equal(last["discount"][order], [0.125, 0.25, 0.5])
    np.testing.assert_array_equal(last["next_observation"][:, 0], [99, 99, 99])
    assert last["discount"].dtype == np.float32
    assert last["observation"].dtype == np.float32


def test_one_step_transitions_come_out_of_every_add_when_n_is_one() -> None:
    rng = np.random.default_rng(7)
    builder = NStepBuilder(num_envs=3, n_step=1, discount=0.9)
    for _ in range(20):
        observations = rng.normal(size=(3, 4)).astype(np.float32)
        actions = rng.integers(0, 5, size=3)
        rewards = rng.normal(size=3)
        next_observations = rng.normal(size=(3, 4)).astype(np.float32)
        terminated = rng.random(3) < 0.2
        truncated = rng.random(3) < 0.2
        out = builder.add(observations, actions, rewards, next_observations, terminated, truncated)
        # Rows may come in any env order: match each to the env whose observation it carries.
        matched = [int(np.flatnonzero((observations == row).all(axis=1))[0]) for row in out["observation"]]
        assert sorted(matched) == [0, 1, 2]
        np.testing.assert_array_equal(out["action"], actions[matched])
        np.testing.assert_array_equal(out["reward"], rewards[matched].astype(np.float32))
        np.testing.assert_allclose(out["discount"], np.where(terminated[matched], 0.0, 0.9), rtol=1e-6)
        np.testing.assert_array_equal(out["next_observation"], next_observations[matched])
        assert builder.pending == 0


def test_image_observations_and_continuous_actions_keep_their_dtype_and_shape() -> None:
    rng = np.random.default_rng(3)
    builder = NStepBuilder(num_envs=2, n_step=2, discount=0.99)
    frames = rng.integers(0, 256, size=(3, 2, 2, 2, 3), dtype=np.uint8)  # [t, E, H, W, C]
    actions = rng.normal(size=(2, 2, 4)).astype(np.float32)  # [t, E, action_dim]
    no = np.zeros(2, dtype=np.bool_)
    assert len(builder.add(frames[0], actions[0], np.ones(2), frames[1], no, no)["observation"]) == 0
    out = builder.add(frames[1], actions[1], np.ones(2), frames[2], no, no)
    assert out["observation"].dtype == np.uint8
    assert out["observation"].shape == (2, 2, 2, 3)
    assert out["action"].dtype == np.float32
    assert out["action"].shape == (2, 4)
    order = np.argsort([frames[0].tolist().index(obs) for obs in out["observation"].tolist()])
    np.testing.assert_array_equal(out["observation"][order], frames[0])
    np.testing.assert_array_equal(out["action"][order], actions[0])
    np.testing.assert_array_equal(out["next_observation"][order], frames[2])
    flushed = builder.flush()
    assert flushed["next_observation"].dtype == np.uint8
    assert flushed["next_observation"].shape == (2, 2, 2, 3)


def test_flush_bootstraps_every_partial_window_from_the_latest_next_observation() -> None:
    builder = NStepBuilder(num_envs=1, n_step=3, discount=0.5)
    no = np.array([False])
    for t in range(2):
        builder.add(np.array([[t]]), np.array([t]), np.array([2.0]), np.array([[t + 1]]), no, no)
    assert builder.pending == 2
    out = builder.flush()
    order = np.argsort(out["observation"][:, 0])
    np.testing.assert_array_equal(out["reward"][order], [3.0, 2.0])
    np.testing.assert_array_equal(out["discount"][order], [0.25, 0.5])
    np.testing.assert_array_equal(out["next_observation"][:, 0], [2, 2])
    assert builder.pending == 0
    assert len(builder.flush()["reward"]) == 0


def test_flush_before_any_step_returns_no_transitions() -> None:
    out = NStepBuilder(num_envs=2, n_step=3, discount=0.9).flush()
    assert set(out) == KEYS
    assert all(len(column) == 0 for column in out.values())


def observation_step(observations: NDArray[Any], actions: NDArray[Any]) -> Columns:
    builder = NStepBuilder(num_envs=2, n_step=3, discount=0.9)
    no = np.zeros(2, dtype=np.bool_)
    builder.add(
        np.zeros((2, 4), np.float32), np.zeros(2, np.int64), np.zeros(2), np.zeros((2, 4), np.float32), no, no
    )
    return builder.add(observations, actions, np.zeros(2), observations, no, no)


@pytest.mark.parametrize(
    ("observations", "actions"),
    [
        (np.zeros((2, 5), np.float32), np.zeros(2, np.int64)),
        (np.zeros((2, 4), np.float64), np.zeros(2, np.int64)),
        (np.zeros((2, 4), np.float32), np.zeros((2, 1), np.int64)),
        (np.zeros((2, 4), np.float32), np.zeros(2, np.int32)),
    ],
    ids=["observation shape", "observation dtype", "action shape", "action dtype"],
)
def test_a_later_add_with_another_layout_is_a_value_error(
    observations: NDArray[Any], actions: NDArray[Any]
) -> None:
    with pytest.raises(ValueError, match="differ from the first add"):
        observation_step(observations, actions)


@pytest.mark.parametrize(
    ("argument", "bad"),
    [
        (0, np.zeros((3, 4), np.float32)),
        (1, np.zeros(3, np.int64)),
        (2, np.zeros((2, 1))),
        (4, np.zeros(1, np.bool_)),
        (5, np.array(False)),
    ],
)
def test_arguments_without_one_row_per_env_are_value_errors(argument: int, bad: NDArray[Any]) -> None:
    no = np.zeros(2, dtype=np.bool_)
    args: list[NDArray[Any]] = [np.zeros((2, 4)), np.zeros(2), np.zeros(2), np.zeros((2, 4)), no, no]
    args[argument] = bad
    observations, actions, rewards, following, terminated, truncated = args
    with pytest.raises(ValueError, match="leading dimension num_envs=2"):
        NStepBuilder(num_envs=2, n_step=3, discount=0.9).add(
            observations, actions, rewards, following, terminated, truncated
        )


def test_next_observations_unlike_observations_are_a_value_error() -> None:
    no = np.zeros(2, dtype=np.bool_)
    with pytest.raises(ValueError, match="must match observations"):
        NStepBuilder(2, 3, 0.9).add(np.zeros((2, 4)), np.zeros(2), np.zeros(2), np.zeros((2, 3)), no, no)


@pytest.mark.parametrize(
    ("num_envs", "n_step", "discount", "problem"),
    [
        (0, 3, 0.9, "num_envs"),
        (2, 0, 0.9, "n_step"),
        (2, 3, -0.1, "discount"),
        (2, 3, 1.5, "discount"),
        (2, 3, float("nan"), "discount"),
    ],
)
def test_invalid_settings_are_value_errors_naming_the_setting(
    num_envs: int, n_step: int, discount: float, problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        NStepBuilder(num_envs, n_step, discount)
