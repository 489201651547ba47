"""The ``apexrl plot`` command: learning curves of several run folders in one PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer


def _fail(message: str, code: int) -> NoReturn:
    typer.echo(f"apexrl plot: {message}", err=True)
    raise typer.Exit(code)


def plot_command(
    runs: Annotated[
        list[Path], typer.Argument(metavar="RUN", help="Run folders (or their metrics.csv files).")
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="PNG to write; its folder must exist.")
    ] = Path("plot.png"),
    label: Annotated[
        list[str] | None,
        typer.Option(help="Legend name of a run, once per run in order; default: the folders' names."),
    ] = None,
    title: Annotated[str | None, typer.Option(help="Title above the panels.")] = None,
    training: Annotated[
        bool, typer.Option(help="Add panels of the training loss and the updates per second.")
    ] = False,
) -> None:
    """Plot evaluation return against environment steps and wall time, one line per run."""
    from services.plotting.curves import (
        PlotError,
        check_output,
        draw_curves,
        read_run,
        run_labels,
        save_figure,
    )

    try:
        check_output(output)
        labels = run_labels(runs, label)
        curves = [read_run(run, name, training) for run, name in zip(runs, labels, strict=True)]
    except PlotError as error:
        _fail(str(error), 2)
    waiting = [run.label for run in curves if not run.evaluated]
    if len(waiting) == len(curves):
        _fail(f"no evaluation return in any run yet ({', '.join(waiting)}); nothing written", 1)
    for name in waiting:
        typer.echo(f"apexrl plot: warning: {name} has no evaluation return yet (an empty line)", err=True)
    save_figure(draw_curves(curves, title, training), output)
    typer.echo(f"wrote {output}")
