"""Creating the experiment's gymnasium environment the same way everywhere, and describing its spaces."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium.wrappers import AtariPreprocessing, FrameStackObservation
from numpy.typing import NDArray


@dataclass(frozen=True)
class AtariSettings:
    """The standard DQN preprocessing of Atari games (Mnih et al. 2015, Machado et al. 2018).

    The environment applies the first three (gymnasium's ``AtariPreprocessing``); the last
    two are learning signals only, applied by the actor's rollout, so the evaluator's
    returns stay full-game returns.
    """

    noop_max: int = 30  # at most this many no-op actions at reset (a uniform number in 1..noop_max)
    frame_skip: int = 4  # emulator frames per step, the action repeated; the last two max-pooled
    screen_size: int = 84  # side of the square grayscale frame
    terminal_on_life_loss: bool = True  # actors end n-step returns at a lost life
    clip_rewards: bool = True  # actors learn from sign(reward)


def make_environment(
    environment_id: str,
    options: Mapping[str, Any],
    frame_stack: int = 1,
    atari: AtariSettings | None = None,
) -> gym.Env[Any, Any]:
    """``gymnasium.make(id, **options)``, with ``frame_stack`` frames stacked on the last axis.

    With ``atari``, the ALE game is made with ``frameskip=1`` and wrapped in gymnasium's
    ``AtariPreprocessing`` (no-op starts, frame skipping with max-pooling, grayscale
    ``screen_size`` frames): observations are uint8 ``[screen_size, screen_size, frame_stack]``.
    The environment never ends an episode on a lost life and never clips rewards.
    """
    if atari is not None:
        return _make_atari(environment_id, options, frame_stack, atari)
    environment = _make(environment_id, options)
    return _stack_frames(environment, frame_stack) if frame_stack > 1 else environment


def _make(environment_id: str, options: Mapping[str, Any]) -> gym.Env[Any, Any]:
    try:
        return gym.make(environment_id, **dict(options))
    except gym.error.Error as error:
        raise ValueError(f"cannot create environment {environment_id!r}: {error}") from error


def _make_atari(
    environment_id: str, options: Mapping[str, Any], frame_stack: int, atari: AtariSettings
) -> gym.Env[Any, Any]:
    import ale_py  # noqa: PLC0415 (only Atari experiments need ale-py)

    gym.register_envs(ale_py)
    frameskip = options.get("frameskip", 1)
    if frameskip != 1:
        raise ValueError(
            f"environment option frameskip={frameskip!r}: Atari preprocessing skips frames itself "
            "(set atari.frame_skip instead); frameskip must be 1 or unset"
        )
    # The wrapper reads the screen from the emulator itself; a grayscale observation underneath
    # is the cheapest one to produce.
    made = _make(environment_id, {"obs_type": "grayscale", **options, "frameskip": 1})
    environment: gym.Env[Any, Any] = AtariPreprocessing(
        made,
        noop_max=atari.noop_max,
        frame_skip=atari.frame_skip,
        screen_size=atari.screen_size,
        terminal_on_life_loss=False,
        grayscale_obs=True,
        # One frame keeps a channel axis, so observations are [H, W, frames] either way.
        grayscale_newaxis=frame_stack == 1,
        scale_obs=False,
    )
    return _stack_frames(environment, frame_stack) if frame_stack > 1 else environment


def _stack_frames(environment: gym.Env[Any, Any], frame_stack: int) -> gym.Env[Any, Any]:
    return LastAxisFrameStack(environment, frame_stack)


class LastAxisFrameStack(FrameStackObservation[Any, Any, Any]):
    """gymnasium's ``FrameStackObservation`` with the frames on the last axis (``[H, W, frames]``).

    A class of its own rather than a transform of the stack, so that the environment's spec
    names it by entry point: ``gym.make(spec)`` (a Minari dataset's recovered environment)
    builds the same observations again.
    """

    def __init__(self, env: gym.Env[Any, Any], stack_size: int, *, padding_type: str = "reset") -> None:
        super().__init__(env, stack_size, padding_type=padding_type)
        stacked = self.observation_space
        assert isinstance(stacked, gym.spaces.Box)
        low, high = np.moveaxis(stacked.low, 0, -1), np.moveaxis(stacked.high, 0, -1)
        self.observation_space = gym.spaces.Box(low=low, high=high, dtype=stacked.dtype)

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        observation, reward, terminated, truncated, info = super().step(action)
        return np.moveaxis(observation, 0, -1), reward, terminated, truncated, info

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        observation, info = super().reset(seed=seed, options=options)
        return np.moveaxis(observation, 0, -1), info


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
    environment_id: str,
    options: Mapping[str, Any],
    frame_stack: int = 1,
    atari: AtariSettings | None = None,
) -> EnvironmentSpec:
    """Creates the environment once to read its spec, then closes it."""
    environment = make_environment(environment_id, options, frame_stack, atari)
    try:
        return environment_spec(environment)
    finally:
        environment.close()
