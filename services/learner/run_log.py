"""The run folder's record of training: metrics over time as CSV and TensorBoard."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from pathlib import Path

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
