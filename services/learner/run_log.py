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
    # The algorithms' own signals (UpdateResult.diagnostics), empty where a family has none.
    "policy_loss",  # TD3, SAC
    "temperature",  # SAC: alpha
    "temperature_loss",  # SAC
    "entropy",  # SAC: of the policy, estimated on the batch
)


class RunLog:
    """Appends one row per call to ``metrics.csv`` (kept across restarts) and to TensorBoard.

    A ``metrics.csv`` that exists keeps its own header: a run resumed by a newer version
    appends the columns the file has, and TensorBoard gets every value.
    """

    def __init__(self, run_dir: Path) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        self.csv_path = run_dir / "metrics.csv"
        columns = _header(self.csv_path)
        self._file = open(self.csv_path, "a", newline="", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._writer = csv.DictWriter(self._file, fieldnames=columns or COLUMNS, extrasaction="ignore")
        if not columns:
            self._writer.writeheader()
        self._tensorboard = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def append(self, row: Mapping[str, float]) -> None:
        self._writer.writerow(row)
        self._file.flush()
        step = int(row.get("environment_steps", 0))
        for name, value in row.items():
            if name != "environment_steps" and isinstance(value, int | float) and math.isfinite(value):
                self._tensorboard.add_scalar(name, value, global_step=step)

    def close(self) -> None:
        self._file.close()
        self._tensorboard.close()


def _header(path: Path) -> list[str]:
    """The columns of an existing ``metrics.csv``; none for a new or empty file."""
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as file:
        return next(csv.reader(file), [])
