"""What the local run shows: a live table on a terminal, JSON lines otherwise."""

from __future__ import annotations

import json
import math
import time

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn
from rich.table import Table

from apexrl.learner.v1 import learner_pb2
from services.algorithms.experiment import ExperimentConfig


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}:{seconds:02d}"


def estimate_left_s(status: learner_pb2.GetStatusResponse, config: ExperimentConfig) -> float:
    """Time left until the step budget or the wall-time budget runs out, whichever comes first."""
    general = config.general
    wall_left = general.max_wall_time_s - status.elapsed_s
    rate = status.environment_steps_per_second
    steps_left = (general.max_environment_steps - status.environment_steps) / rate if rate > 0 else math.inf
    return max(0.0, min(wall_left, steps_left))


def status_row(
    status: learner_pb2.GetStatusResponse, config: ExperimentConfig
) -> dict[str, float | int | None]:
    latest = status.latest_evaluation if status.HasField("latest_evaluation") else None
    best = status.best_evaluation if status.HasField("best_evaluation") else None
    return {
        "elapsed_s": round(status.elapsed_s, 1),
        "environment_steps": status.environment_steps,
        "environment_steps_per_s": round(status.environment_steps_per_second, 1),
        "replay_size": status.replay_size,
        "updates": status.updates,
        "updates_per_s": round(status.updates_per_second, 1),
        "parameter_version": status.parameter_version,
        "actors": sum(1 for actor in status.actors if actor.role == learner_pb2.CLIENT_ROLE_ACTOR),
        "evaluation_return": latest.mean_return if latest else None,
        "best_return": best.mean_return if best else None,
        "estimated_left_s": round(estimate_left_s(status, config), 1),
    }


class ProgressView:
    """Renders learner status; quiet and machine-readable when stdout is not a terminal."""

    def __init__(self, console: Console, config: ExperimentConfig, json_interval_s: float = 10.0) -> None:
        self._console = console
        self._config = config
        self._json_interval_s = json_interval_s
        self._next_json = 0.0
        self._progress = Progress(TextColumn("environment steps"), BarColumn(), TaskProgressColumn())
        self._task = self._progress.add_task("steps", total=config.general.max_environment_steps)
        self._live: Live | None = None
        if console.is_terminal:
            self._live = Live(console=console, refresh_per_second=4)
            self._live.start()

    def update(self, status: learner_pb2.GetStatusResponse) -> None:
        row = status_row(status, self._config)
        if self._live is None:
            if time.monotonic() >= self._next_json:
                self._next_json = time.monotonic() + self._json_interval_s
                print(json.dumps({"event": "progress", **row}), flush=True)
            return
        self._progress.update(self._task, completed=status.environment_steps)
        table = Table(show_header=False, box=None, pad_edge=False)
        solved = self._config.general.solved_return
        evaluation = "-" if row["evaluation_return"] is None else f"{row['evaluation_return']:.1f}"
        best = "-" if row["best_return"] is None else f"{row['best_return']:.1f}"
        target = f" (solved at {solved:g})" if solved is not None else ""
        table.add_row("environment", self._config.environment.id)
        table.add_row("env steps", f"{row['environment_steps']:,}  ({row['environment_steps_per_s']:,.0f}/s)")
        table.add_row("replay size", f"{row['replay_size']:,}")
        table.add_row("updates", f"{row['updates']:,}  ({row['updates_per_s']:,.1f}/s)")
        table.add_row("parameters", f"version {row['parameter_version']:,}, {row['actors']} actors")
        table.add_row("evaluation", f"{evaluation}  best {best}{target}")
        table.add_row(
            "elapsed",
            f"{_duration(status.elapsed_s)}  (at most {_duration(float(row['estimated_left_s'] or 0))} left)",
        )
        self._live.update(Group(table, self._progress))

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
