"""The run folder's learning-curve picture, drawn from its metrics CSV (no torch: the launcher draws it)."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt


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
