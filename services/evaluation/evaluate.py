"""Testing a saved model: its config, its environment, its deterministic episodes, their videos."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import torch

from services.actor.evaluator import EVALUATION_SEED_OFFSET
from services.algorithms.experiment import ExperimentConfig
from services.algorithms.interface import ActingPolicy
from services.common.config import ConfigError
from services.common.environments import environment_spec, make_environment
from services.evaluation.episodes import Episode, Statistics, play_episodes
from services.evaluation.models import (
    ModelChoice,
    SavedModel,
    acting_policy,
    find_model,
    model_config,
    read_model,
)
from services.evaluation.recording import (
    ATARI_FRAMES_PER_S,
    RenderingError,
    VideoFormat,
    VideoWriter,
    check_display,
    open_video,
    video_suffix,
)

# What --set may change: the model's algorithm settings are fixed by its tensors.
_OVERRIDABLE = ("environment", "general")


@dataclass(frozen=True)
class EvaluationRequest:
    """What ``apexrl test`` was asked for."""

    target: Path
    model: ModelChoice | None = None
    checkpoint: Path | None = None
    episodes: int | None = None  # None: the config's general.evaluation_episodes
    seed: int | None = None  # of the first episode; None: the evaluator's
    max_steps: int | None = None
    record: Path | None = None  # a folder for one video per episode
    video_format: VideoFormat = "auto"
    render: bool = False
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class EvaluationReport:
    model: SavedModel
    config: ExperimentConfig  # the model's, with the overrides
    episodes: list[Episode]
    videos: list[Path] = field(default_factory=list)

    @property
    def returns(self) -> Statistics:
        return Statistics.of([episode.episode_return for episode in self.episodes])

    @property
    def lengths(self) -> Statistics:
        return Statistics.of([float(episode.length) for episode in self.episodes])

    def as_json(self) -> dict[str, Any]:
        return {
            "model": str(self.model.path),
            "kind": self.model.kind,
            "parameter_version": self.model.parameter_version,
            "updates": self.model.updates,
            "training_evaluation_return": self.model.evaluated_return,
            "algorithm": self.config.algorithm.name,
            "environment": self.config.environment.id,
            "episodes": len(self.episodes),
            "seeds": [episode.seed for episode in self.episodes],
            "returns": [episode.episode_return for episode in self.episodes],
            "lengths": [episode.length for episode in self.episodes],
            "return": vars(self.returns),
            "length": vars(self.lengths),
            "videos": [str(path) for path in self.videos],
        }


@dataclass(frozen=True)
class Prepared:
    """A model ready to play: its policy, and where and how its episodes run."""

    model: SavedModel
    config: ExperimentConfig
    policy: ActingPolicy
    seeds: list[int]
    render_mode: str | None
    video_suffix: str | None
    fps: float


def prepare(request: EvaluationRequest) -> Prepared:
    """Everything checked before an episode starts; ValueError (ModelError, ConfigError,
    RenderingError) saying what does not fit."""
    for override in request.overrides:
        section = override.partition("=")[0].strip().split(".")[0]
        if section not in _OVERRIDABLE:
            raise ConfigError(
                f"override {override!r}: apexrl test changes environment.* and general.* settings only; "
                "the algorithm's are the model's own"
            )
    if request.render and request.record is not None:
        raise RenderingError("--render and --record both use the environment's rendering: give one of them")
    if request.render:
        check_display()
    model = read_model(find_model(request.target, request.model, request.checkpoint))
    trained = model_config(model)
    config = model_config(model, request.overrides) if request.overrides else trained
    probe = make_config_environment(config, None)
    try:
        environment = environment_spec(probe)
        modes = list(probe.metadata.get("render_modes") or [])
        render_fps = probe.metadata.get("render_fps")
    finally:
        probe.close()
    render_mode = None
    suffix = None
    if request.record is not None:
        render_mode = "rgb_array"
        if render_mode not in modes:
            raise RenderingError(
                f"{config.environment.id} has no rgb_array render mode (its modes: {modes}); "
                "--record needs one"
            )
        suffix = video_suffix(request.video_format)
    elif request.render:
        render_mode = "human"
        if not {"human", "rgb_array"} & set(modes):  # gymnasium shows rgb_array frames in a window
            raise RenderingError(
                f"{config.environment.id} has neither a human nor an rgb_array render mode (its modes: "
                f"{modes}); --render needs one"
            )
    policy = acting_policy(model, trained, config, environment)
    count = request.episodes or config.general.evaluation_episodes
    # The evaluator's seeds by default, so a best model's mean return is played again as training measured it.
    first = request.seed if request.seed is not None else config.general.seed + EVALUATION_SEED_OFFSET
    atari = config.environment.atari
    if atari is not None:
        fps = ATARI_FRAMES_PER_S / atari.frame_skip
    else:
        fps = float(render_fps) if render_fps else 30.0
    seeds = [first + i for i in range(count)]
    return Prepared(model, config, policy, seeds, render_mode, suffix, fps)


def make_config_environment(config: ExperimentConfig, render_mode: str | None) -> gym.Env[Any, Any]:
    """The config's environment, rendering in ``render_mode`` (whatever its options say)."""
    environment = config.environment
    options = {key: value for key, value in environment.options.items() if key != "render_mode"}
    if render_mode is not None:
        options["render_mode"] = render_mode
    return make_environment(environment.id, options, environment.frame_stack, environment.atari_settings())


def evaluate_model(
    request: EvaluationRequest, on_episodes: Callable[[Sequence[Episode]], None] | None = None
) -> EvaluationReport:
    """Plays the deterministic episodes of ``request``; ``on_episodes`` hears of each as they end.

    Without rendering or recording they run in lockstep, as the evaluator plays them; with
    either, one at a time.
    """
    prepared = prepare(request)
    torch.set_num_threads(1)
    seeds = prepared.seeds
    one_at_a_time = prepared.render_mode is not None
    groups = [[seed] for seed in seeds] if one_at_a_time else [seeds]
    if request.record is not None:
        request.record.mkdir(parents=True, exist_ok=True)
    played: list[Episode] = []
    videos: list[Path] = []
    for group in groups:
        environments = [make_config_environment(prepared.config, prepared.render_mode) for _ in group]
        writers: list[VideoWriter] | None = None
        if request.record is not None:
            writers = [
                open_video(
                    request.record / f"episode-{len(played) + 1:03d}.{prepared.video_suffix}", prepared.fps
                )
            ]
        try:
            episodes = play_episodes(prepared.policy, environments, group, request.max_steps, writers)
        except gym.error.DependencyNotInstalled as error:
            raise RenderingError(
                f"rendering {prepared.config.environment.id} needs a package: {error}"
            ) from None
        finally:
            for environment in environments:
                environment.close()
            for writer in writers or []:
                writer.close()
        played.extend(episodes)
        videos.extend(writer.path for writer in writers or [])
        if on_episodes is not None:
            on_episodes(episodes)
    return EvaluationReport(prepared.model, prepared.config, played, videos)
