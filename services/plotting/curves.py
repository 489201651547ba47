"""Reads run folders' ``metrics.csv`` and draws their curves on one figure (matplotlib, no torch)."""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure

METRICS_FILE = "metrics.csv"
# What every curve needs, and what the training panels add (see services/learner/run_log.py).
CURVE_COLUMNS = ("elapsed_s", "environment_steps", "evaluation_return")
TRAINING_COLUMNS = ("loss", "updates_per_s")
# The algorithms' own signals, drawn where a run logged them (TD3's and SAC's policy loss, SAC's alpha).
ALGORITHM_COLUMNS = ("policy_loss", "temperature")


class PlotError(ValueError):
    """A run folder or metrics file that cannot be plotted; the message names it."""


@dataclass(frozen=True)
class Series:
    """Points of one metric: its x values (environment steps or seconds) and y values, finite only."""

    x: tuple[float, ...]
    y: tuple[float, ...]


@dataclass(frozen=True)
class RunCurves:
    """One run's curves: evaluation return by steps and by wall time, and the training metrics."""

    label: str
    metrics_path: Path
    return_by_steps: Series
    return_by_time: Series
    loss_by_steps: Series
    updates_per_s_by_time: Series
    policy_loss_by_steps: Series = Series((), ())
    temperature_by_steps: Series = Series((), ())

    @property
    def evaluated(self) -> bool:
        """Whether any row holds an evaluation return."""
        return bool(self.return_by_steps.y)


def metrics_path_of(run: Path) -> Path:
    """``run/metrics.csv`` of a run folder (or ``run`` itself if it is a file); PlotError if none."""
    if run.is_file():
        return run
    if not run.exists():
        raise PlotError(f"no run folder at {run}")
    path = run / METRICS_FILE
    if not path.is_file():
        raise PlotError(f"{run} holds no {METRICS_FILE} (not a run folder, or nothing logged yet)")
    return path


def _number(text: str | None, path: Path, line: int, column: str) -> float:
    """The cell's value; NaN for an empty cell (a row before the first evaluation)."""
    if text is None:
        raise PlotError(f"{path} line {line}: no {column} value (too few fields)")
    if not text:
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise PlotError(f"{path} line {line}: {column} {text!r} is not a number") from None


def _series(points: list[tuple[float, float]]) -> Series:
    kept = [(x, y) for x, y in points if math.isfinite(x) and math.isfinite(y)]
    return Series(tuple(x for x, _ in kept), tuple(y for _, y in kept))


def read_run(run: Path, label: str | None = None, training: bool = False) -> RunCurves:
    """A run's curves from its folder or metrics file, labelled by ``label`` or the folder's name.

    Rows without a finite value are left out of that metric's curve; an empty file has no rows.
    PlotError when the file lacks the columns the curves (with ``training``, the training panels) need.
    """
    path = metrics_path_of(run)
    needed = CURVE_COLUMNS + (TRAINING_COLUMNS if training else ())
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise PlotError(f"{path} is not a UTF-8 CSV file") from None
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]  # a row a live learner is still writing
    reader = csv.DictReader(text.splitlines())
    # No header yet (a learner that stopped before its first row) is a run with no rows.
    missing = [name for name in needed if text and name not in (reader.fieldnames or ())]
    if missing:
        raise PlotError(f"{path} lacks the column(s) {', '.join(missing)}")
    steps: list[tuple[float, float]] = []
    times: list[tuple[float, float]] = []
    losses: list[tuple[float, float]] = []
    rates: list[tuple[float, float]] = []
    # Older runs and Ape-X DQN have no such columns, or leave them empty: no curve then.
    present = [name for name in ALGORITHM_COLUMNS if training and name in (reader.fieldnames or ())]
    signals: dict[str, list[tuple[float, float]]] = {name: [] for name in ALGORITHM_COLUMNS}
    for line, row in enumerate(reader, start=2):
        value = {name: _number(row[name], path, line, name) for name in (*needed, *present)}
        steps.append((value["environment_steps"], value["evaluation_return"]))
        times.append((value["elapsed_s"], value["evaluation_return"]))
        if training:
            losses.append((value["environment_steps"], value["loss"]))
            rates.append((value["elapsed_s"], value["updates_per_s"]))
        for name in present:
            signals[name].append((value["environment_steps"], value[name]))
    return RunCurves(
        label=label if label is not None else path.parent.resolve().name,
        metrics_path=path,
        return_by_steps=_series(steps),
        return_by_time=_series(times),
        loss_by_steps=_series(losses),
        updates_per_s_by_time=_series(rates),
        policy_loss_by_steps=_series(signals["policy_loss"]),
        temperature_by_steps=_series(signals["temperature"]),
    )


def _style(axes: Axes, xlabel: str, ylabel: str) -> None:
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)


def draw_curves(runs: Sequence[RunCurves], title: str | None = None, training: bool = False) -> Figure:
    """Evaluation return against environment steps and against wall time, one line per run.

    With ``training`` a second row adds the training loss against environment steps and the
    updates per second against wall time, and where any run logged them (TD3, SAC) a third
    the policy loss and SAC's temperature against environment steps. A run without
    evaluations keeps its (empty) line, so the legend still names it.
    """
    if not runs:
        raise ValueError("draw_curves needs at least one run")
    signals = training and any(run.policy_loss_by_steps.y or run.temperature_by_steps.y for run in runs)
    rows = 1 + training + signals
    figure = Figure(figsize=(11, 4 + 3.5 * (rows - 1) + 0.3 * len(runs)), layout="constrained")
    grid = figure.subplots(rows, 2, squeeze=False)
    by_steps, by_time = grid[0]
    _style(by_steps, "environment steps", "greedy evaluation return")
    _style(by_time, "wall time (s)", "greedy evaluation return")
    panels: list[tuple[Axes, Callable[[RunCurves], Series]]] = [
        (by_steps, lambda run: run.return_by_steps),
        (by_time, lambda run: run.return_by_time),
    ]
    if training:
        loss, rate = grid[1]
        _style(loss, "environment steps", "training loss")
        _style(rate, "wall time (s)", "updates per second")
        panels += [(loss, lambda run: run.loss_by_steps), (rate, lambda run: run.updates_per_s_by_time)]
        losses = [value for run in runs for value in run.loss_by_steps.y]
        if losses and min(losses) > 0:
            loss.set_yscale("log")  # losses span orders of magnitude as training settles
    if signals:
        policy, temperature = grid[2]
        _style(policy, "environment steps", "policy loss")
        _style(temperature, "environment steps", "temperature (alpha)")
        panels += [
            (policy, lambda run: run.policy_loss_by_steps),
            (temperature, lambda run: run.temperature_by_steps),
        ]
    for index, run in enumerate(runs):
        label = run.label if run.evaluated else f"{run.label} (no evaluation yet)"
        for axes, series_of in panels:
            series = series_of(run)
            axes.plot(series.x, series.y, color=f"C{index % 10}", label=label)
    figure.legend(*by_steps.get_legend_handles_labels(), loc="outside lower center", ncols=min(len(runs), 4))
    if title:
        figure.suptitle(title)
    return figure


def save_figure(figure: Figure, path: Path) -> None:
    """Writes the figure to ``path`` as a PNG."""
    figure.savefig(path, dpi=120, format="png")


def run_labels(runs: Sequence[Path], labels: Sequence[str] | None = None) -> list[str]:
    """Legend names: ``labels`` (one per run), else the folders' names, or the paths if names repeat."""
    if labels:
        if len(labels) != len(runs):
            raise PlotError(f"{len(labels)} --label value(s) for {len(runs)} run(s): give one per run")
        return list(labels)
    names = [(run.parent if run.is_file() else run).resolve().name for run in runs]
    if len(set(names)) < len(names):
        return [str(run) for run in runs]
    return names


def check_output(path: Path) -> None:
    """PlotError unless ``path`` is a PNG file name in an existing folder."""
    if path.suffix.lower() != ".png":
        raise PlotError(f"cannot write {path}: the plot is a PNG, name it *.png")
    if path.is_dir():
        raise PlotError(f"cannot write {path}: it is a folder")
    if not path.parent.is_dir():
        raise PlotError(f"cannot write {path}: no folder {path.parent}")
