"""Atari environments: the standard preprocessing, checked against frames taken from the raw emulator."""

from __future__ import annotations

import json
from collections import deque
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from numpy.typing import NDArray

from services.algorithms.experiment import experiment_spec, load_experiment
from services.common.config import ConfigError
from services.common.environments import AtariSettings, describe_environment, make_environment

ale_py = pytest.importorskip("ale_py")
cv2 = pytest.importorskip("cv2")

PONG = "ALE/Pong-v5"
NO_STICKY = {"repeat_action_probability": 0.0}
STEPS = 200  # 800 emulator frames: Pong's first points are scored by then


def seeded_actions(count: int, seed: int = 7) -> NDArray[np.int64]:
    return np.random.default_rng(seed).integers(0, 6, size=count)  # Pong's minimal action set has 6


def reference_run(
    actions: NDArray[np.int64], seed: int, frame_skip: int = 4, size: int = 84, stack: int = 4
) -> tuple[list[NDArray[np.uint8]], float]:
    """The observations and summed reward of the DQN preprocessing, built by hand from raw frames.

    Each action repeats ``frame_skip`` times on the emulator; the observation is the pixelwise
    maximum of the last two grayscale frames, shrunk to ``size`` x ``size`` by area
    averaging, and the last ``stack`` of them on the last axis, the reset frame repeated
    at the start.
    """
    gym.register_envs(ale_py)
    raw = gym.make(PONG, frameskip=1, repeat_action_probability=0.0, obs_type="grayscale")
    try:
        first, _ = raw.reset(seed=seed)

        def shrink(frame: NDArray[np.uint8]) -> NDArray[np.uint8]:
            return np.asarray(cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA), dtype=np.uint8)

        frames = deque([shrink(first)] * stack, maxlen=stack)
        observations = [np.stack(frames, axis=-1)]
        total = 0.0
        for action in actions:
            screens = []
            for _ in range(frame_skip):
                screen, reward, terminated, truncated, _ = raw.step(int(action))
                assert not terminated
                assert not truncated
                screens.append(screen)
                total += float(reward)
            frames.append(shrink(np.maximum(screens[-2], screens[-1])))
            observations.append(np.stack(frames, axis=-1))
        return observations, total
    finally:
        raw.close()


def processed_run(
    environment: gym.Env[Any, Any], actions: NDArray[np.int64], seed: int
) -> tuple[list[NDArray[Any]], float]:
    observation, _ = environment.reset(seed=seed)
    observations, total = [observation], 0.0
    for action in actions:
        observation, reward, terminated, truncated, _ = environment.step(int(action))
        assert not terminated
        assert not truncated
        observations.append(observation)
        total += float(reward)
    return observations, total


@pytest.fixture(scope="module")
def runs() -> tuple[tuple[list[NDArray[Any]], float], tuple[list[NDArray[np.uint8]], float]]:
    actions = seeded_actions(STEPS)
    environment = make_environment(PONG, NO_STICKY, 4, AtariSettings(noop_max=0))
    try:
        processed = processed_run(environment, actions, seed=3)
    finally:
        environment.close()
    return processed, reference_run(actions, seed=3)


def test_observations_are_the_max_pooled_resized_stacked_emulator_frames_byte_for_byte(
    runs: tuple[tuple[list[NDArray[Any]], float], tuple[list[NDArray[np.uint8]], float]],
) -> None:
    (observations, _), (expected, _) = runs
    assert len(observations) == len(expected) == STEPS + 1
    for step, (observation, reference) in enumerate(zip(observations, expected, strict=True)):
        assert observation.dtype == np.uint8
        assert observation.shape == (84, 84, 4)
        np.testing.assert_array_equal(observation, reference, err_msg=f"step {step}")
    # The frames move: the comparison is not of blank screens.
    assert not np.array_equal(observations[0], observations[-1])


def test_rewards_are_the_emulators_unclipped_sum_over_the_skipped_frames(
    runs: tuple[tuple[list[NDArray[Any]], float], tuple[list[NDArray[np.uint8]], float]],
) -> None:
    (_, total), (_, expected_total) = runs
    assert total == expected_total
    assert expected_total != 0.0  # points were scored in the run


def test_noop_starts_differ_between_seeds_and_repeat_for_one() -> None:
    environment = make_environment(PONG, NO_STICKY, 4, AtariSettings(noop_max=30))
    try:
        # Seed 0 draws 21 no-ops, seed 4 one: Pong's screen has changed in between.
        first_0, info_0 = environment.reset(seed=0)
        first_4, info_4 = environment.reset(seed=4)
        again_0, _ = environment.reset(seed=0)
        again_4, _ = environment.reset(seed=4)
    finally:
        environment.close()
    assert info_0["episode_frame_number"] != info_4["episode_frame_number"]
    assert not np.array_equal(first_0, first_4)
    np.testing.assert_array_equal(first_0, again_0)
    np.testing.assert_array_equal(first_4, again_4)


@pytest.mark.parametrize("frameskip", [4, 2, (2, 5)])
def test_a_frameskip_option_other_than_one_is_refused_by_name(frameskip: Any) -> None:
    with pytest.raises(ValueError, match="frameskip"):
        make_environment(PONG, {**NO_STICKY, "frameskip": frameskip}, 4, AtariSettings())


def test_a_frameskip_of_one_is_accepted_as_the_wire_sends_it() -> None:
    # Options arrive as a protobuf Struct, whose numbers are floats.
    spec = describe_environment(PONG, {**NO_STICKY, "frameskip": 1.0}, 4, AtariSettings())
    assert spec.observation_shape == (84, 84, 4)
    assert spec.observation_dtype == np.uint8


def test_a_single_frame_keeps_its_channel_axis_and_the_screen_size_applies() -> None:
    spec = describe_environment(PONG, NO_STICKY, 1, AtariSettings(screen_size=64))
    assert spec.observation_shape == (64, 64, 1)


def test_the_environment_plays_on_through_a_lost_life() -> None:
    # Breakout has 5 lives; losing one neither ends the episode nor is signalled in the reward.
    environment = make_environment("ALE/Breakout-v5", NO_STICKY, 4, AtariSettings(noop_max=0))
    rng = np.random.default_rng(0)
    try:
        _, info = environment.reset(seed=0)
        lives = info["lives"]
        assert lives == 5
        for _ in range(2_000):
            _, _, terminated, truncated, info = environment.step(int(rng.integers(4)))
            assert not terminated
            assert not truncated
            if info["lives"] < lives:
                break
        assert info["lives"] == lives - 1
    finally:
        environment.close()


@pytest.mark.parametrize("preset", ["pong", "breakout"])
def test_the_atari_presets_validate_and_their_preprocessing_travels_on_the_wire(preset: str) -> None:
    from services.actor.actor import atari_settings_from_wire  # noqa: PLC0415 (imports torch)

    config = load_experiment(preset)
    spec = experiment_spec(config)
    assert spec.HasField("atari")
    assert atari_settings_from_wire(spec) == config.environment.atari_settings() == AtariSettings()
    options = {"repeat_action_probability": 0.0, "full_action_space": False}
    if preset == "breakout":
        options["max_episode_steps"] = 27000
    assert dict(spec.environment_options) == options
    assert json.loads(spec.environment_options_json) == options
    described = describe_environment(
        config.environment.id,
        config.environment.options,
        config.environment.frame_stack,
        config.environment.atari_settings(),
    )
    assert described.observation_shape == (84, 84, 4)


def test_integer_environment_options_reach_gymnasium_as_integers() -> None:
    from services.actor.actor import make_spec_environment  # noqa: PLC0415 (imports torch)

    # gymnasium refuses max_episode_steps=50.0, which is what a Struct alone would carry.
    config = load_experiment("breakout", ["environment.options.max_episode_steps=50"])
    environment = make_spec_environment(experiment_spec(config))
    try:
        environment.reset(seed=0)
        steps, ended = 0, False
        while not ended:
            _, _, terminated, truncated, _ = environment.step(0)
            steps, ended = steps + 1, terminated or truncated
        # The time limit counts emulator frames (the game is made with frameskip=1), 4 a step.
        assert truncated
        assert steps <= 50 // 4 + 1
    finally:
        environment.close()


def test_an_experiment_without_an_atari_section_sends_none() -> None:
    from services.actor.actor import atari_settings_from_wire  # noqa: PLC0415 (imports torch)

    config = load_experiment("cartpole")
    assert config.environment.atari_settings() is None
    spec = experiment_spec(config)
    assert not spec.HasField("atari")
    assert atari_settings_from_wire(spec) is None
    # What the actor's rollout gets: no Atari learning signals.
    assert not spec.atari.clip_rewards
    assert not spec.atari.terminal_on_life_loss


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("environment.atari.frame_skip=0", "environment.atari.frame_skip"),
        ("environment.atari.screen_size=8", "environment.atari.screen_size"),
        ("environment.atari.noop_max=-1", "environment.atari.noop_max"),
        ("environment.atari.sticky=true", "environment.atari.sticky"),
    ],
)
def test_atari_settings_out_of_bounds_are_config_errors_naming_the_field(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_experiment("pong", [override])
