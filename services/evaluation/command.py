"""The ``apexrl test`` command: deterministic episodes with a saved model, and their statistics."""

from __future__ import annotations

import json
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from services.evaluation.episodes import Episode, Statistics
    from services.evaluation.evaluate import EvaluationReport


class ModelOption(StrEnum):
    best = "best"
    latest = "latest"


class VideoFormatOption(StrEnum):
    auto = "auto"
    mp4 = "mp4"
    gif = "gif"


# The arguments that choose a saved model and seed its episodes: apexrl test's and apexrl collect's.
RunOrModelArgument = Annotated[
    Path,
    typer.Argument(
        metavar="RUN_OR_MODEL",
        help="A run folder, or a model file: a best_model.safetensors or a learner checkpoint.",
        show_default=False,
    ),
]
ModelChoiceOption = Annotated[
    ModelOption | None,
    typer.Option(help="The run folder's best model or its newest checkpoint (default: best, else latest)."),
]
CheckpointOption = Annotated[
    Path | None,
    typer.Option(help="A checkpoint of the run folder: a path, or a name in its checkpoints/."),
]
EpisodeSeedOption = Annotated[
    int | None,
    typer.Option(min=0, help="Seed of the first episode, seed + i of the others (default: the evaluator's)."),
]


class EpisodeTable:
    """Prints a row per episode as episodes end (a header first): number, seed, return, length."""

    def __init__(self, err: bool = False) -> None:
        self._err = err
        self._printed = 0

    def __call__(self, finished: Sequence[Episode]) -> None:
        if not self._printed:
            typer.echo(f"{'episode':>7}  {'seed':>10}  {'return':>10}  {'length':>7}", err=self._err)
        for episode in finished:
            self._printed += 1
            row = f"{self._printed:>7}  {episode.seed:>10}  {episode.episode_return:>10.2f}"
            typer.echo(f"{row}  {episode.length:>7}", err=self._err)


def model_test_command(
    run_or_model: RunOrModelArgument,
    model: ModelChoiceOption = None,
    checkpoint: CheckpointOption = None,
    episodes: Annotated[
        int | None, typer.Option(min=1, help="Episodes to play (default: the config's evaluation_episodes).")
    ] = None,
    seed: EpisodeSeedOption = None,
    max_steps: Annotated[
        int | None,
        typer.Option(min=1, help="End each episode after this many steps (default: the environment's)."),
    ] = None,
    record: Annotated[
        Path | None, typer.Option(help="Write one video per episode to this folder (episode-001.mp4, ...).")
    ] = None,
    video_format: Annotated[
        VideoFormatOption, typer.Option(help="auto: MP4 where imageio-ffmpeg is installed, GIF otherwise.")
    ] = VideoFormatOption.auto,
    render: Annotated[bool, typer.Option(help="Show the episodes in a window (needs a display).")] = False,
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override an environment.* or general.* setting: section.key=value."),
    ] = None,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="Print the statistics as JSON on stdout too; the table goes to stderr."),
    ] = False,
) -> None:
    """Play deterministic episodes with a saved model; print the statistics of their returns and lengths."""
    # torch and gymnasium: imported only when the command runs.
    from services.evaluation.evaluate import EvaluationRequest, evaluate_model

    request = EvaluationRequest(
        target=run_or_model,
        model=None if model is None else model.value,
        checkpoint=checkpoint,
        episodes=episodes,
        seed=seed,
        max_steps=max_steps,
        record=record,
        video_format=video_format.value,
        render=render,
        overrides=tuple(overrides or ()),
    )
    show = EpisodeTable(err=as_json)
    try:
        report = evaluate_model(request, show)
    except ValueError as error:  # ModelError, ConfigError, RenderingError, an environment's
        typer.echo(f"apexrl test: {error}", err=True)
        raise typer.Exit(2) from None
    typer.echo(_summary(report), err=as_json)
    if as_json:
        typer.echo(json.dumps(report.as_json()))


def _summary(report: EvaluationReport) -> str:
    model = report.model
    about = f"{model.kind}, parameter version {model.parameter_version}"
    if model.updates is not None:
        about += f", {model.updates} updates"
    if model.evaluated_return is not None:
        about += f", mean return {model.evaluated_return:.2f} when evaluated in training"
    seeds = [episode.seed for episode in report.episodes]
    lines = [
        "",
        f"model        {model.path} ({about})",
        f"experiment   {report.config.algorithm.name} on {report.config.environment.id}",
        f"episodes     {len(seeds)}, seeds {seeds[0]}..{seeds[-1]}",
        f"{'':<12} {'mean':>10} {'std':>10} {'min':>10} {'max':>10}",
        _row("return", report.returns, ".2f"),
        _row("length", report.lengths, ".1f"),
    ]
    if report.videos:
        lines.append(f"videos       {len(report.videos)} in {report.videos[0].parent}")
    return "\n".join(lines)


def _row(name: str, statistics: Statistics, number: str) -> str:
    values = (statistics.mean, statistics.std, statistics.min, statistics.max)
    return f"{name:<12} " + " ".join(f"{value:>10{number}}" for value in values)
