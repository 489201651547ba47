"""The ``apexrl collect`` command: a saved policy's episodes as a Minari dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from services.evaluation.command import (
    CheckpointOption,
    EpisodeSeedOption,
    EpisodeTable,
    ModelChoiceOption,
    RunOrModelArgument,
)


def collect_command(
    run_or_model: RunOrModelArgument,
    dataset: Annotated[
        Path,
        typer.Argument(
            metavar="DATASET",
            help="Folder of the new dataset (must not exist); Minari reads DATASET/data.",
            show_default=False,
        ),
    ],
    episodes: Annotated[int, typer.Option(min=1, help="Episodes to play and write.")] = 10,
    dataset_id: Annotated[
        str | None,
        typer.Option(
            help="Minari id, (namespace/)name-vN (default: the path under MINARI_DATASETS_PATH, "
            "else apexrl/ENV/FOLDER-v0)."
        ),
    ] = None,
    model: ModelChoiceOption = None,
    checkpoint: CheckpointOption = None,
    exploration: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            help="Explore with this value of the algorithm's knob: epsilon (DQN), action noise scale "
            "(TD3), policy temperature (SAC). Default: deterministic actions.",
        ),
    ] = None,
    seed: EpisodeSeedOption = None,
    max_steps: Annotated[
        int | None,
        typer.Option(min=1, help="Truncate each episode after this many steps (default: the environment's)."),
    ] = None,
    author: Annotated[str | None, typer.Option(help="The dataset's author, as Minari records it.")] = None,
    description: Annotated[
        str | None, typer.Option(help="The dataset's description (default: generated).")
    ] = None,
    code_permalink: Annotated[
        str | None, typer.Option(help="A link to the code that trained the policy, as Minari records it.")
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override an environment.* or general.* setting: section.key=value."),
    ] = None,
) -> None:
    """Play episodes with a saved policy and write them as a Minari dataset, one Parquet file an episode."""
    # torch, gymnasium and minari: imported only when the command runs.
    from services.datasets.collect import CollectRequest, collect

    request = CollectRequest(
        target=run_or_model,
        dataset=dataset,
        dataset_id=dataset_id,
        model=None if model is None else model.value,
        checkpoint=checkpoint,
        episodes=episodes,
        seed=seed,
        exploration=exploration,
        max_steps=max_steps,
        author=author,
        description=description,
        code_permalink=code_permalink,
        overrides=tuple(overrides or ()),
    )
    try:
        report = collect(request, EpisodeTable())
    except ValueError as error:  # DatasetError, ModelError, ConfigError, an environment's
        typer.echo(f"apexrl collect: {error}", err=True)
        raise typer.Exit(2) from None
    saved = report.prepared.model
    typer.echo(
        "\n"
        f"dataset      {report.dataset} ({len(report.episodes)} episodes, {report.steps} steps)\n"
        f"id           {report.dataset_id}\n"
        f"policy       {saved.path} ({saved.kind}, parameter version {saved.parameter_version})\n"
        f"load it      minari.MinariDataset({str(report.dataset / 'data')!r})"
    )
