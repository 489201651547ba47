"""The run folder's record of training: metrics over time as CSV and TensorBoard, and the learning curve."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
from torch.utils.tensorboard import SummaryWriter

COLUMNS = (
    "elapsed_s",
    "updates",
    "updates_per_s",
    "environment_steps",
    "environment_steps_per_s",
    "replay_size",
    "parameter_version",
    "loss",
    "importance_exponent",
    "evaluation_return",
    "actors",
)


class RunLog:
    """Appends one row per call to ``metrics.csv`` (kept across restarts) and to TensorBoard."""

    def __init__(self, run_dir: Path) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        self.csv_path = run_dir / "metrics.csv"
        new_file = not self.csv_path.exists()
        self._file = open(self.csv_path, "a", newline="", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._writer = csv.DictWriter(self._file, fieldnames=COLUMNS)
        if new_file:
            self._writer.writeheader()
        self._tensorboard = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def append(self, row: Mapping[str, float]) -> None:
        self._writer.writerow({name: row.get(name, "") for name in COLUMNS})
        self._file.flush()
        step = int(row.get("environment_steps", 0))
        for name, value in row.items():
            if name != "environment_steps" and isinstance(value, int | float) and math.isfinite(value):
                self._tensorboard.add_scalar(name, value, global_step=step)

    def close(self) -> None:
        self._file.close()
        self._tensorboard.close()


def plot_learning_curve(csv_path: Path, png_path: Path, title: str) -> bool:
    """Evaluation return against environment steps and time; False when there is nothing to plot yet."""
    steps, seconds, returns = [], [], []
    with open(csv_path, encoding="utf-8") as file:
        for row in csv.DictReader(file):
            if row.get("evaluation_return"):
                steps.append(float(row["environment_steps"]))
                seconds.append(float(row["elapsed_s"]))
                returns.append(float(row["evaluation_return"]))
    if not returns:
        return False
    figure, (by_steps, by_time) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    by_steps.plot(steps, returns, color="tab:blue")
    by_steps.set_xlabel("environment steps")
    by_time.plot(seconds, returns, color="tab:orange")
    by_time.set_xlabel("wall time (s)")
    for axes in (by_steps, by_time):
        axes.set_ylabel("greedy evaluation return")
        axes.grid(alpha=0.3)
    figure.suptitle(title)
    figure.savefig(png_path, dpi=120)
    plt.close(figure)
    return True
