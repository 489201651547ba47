"""The run folder's learning-curve picture, drawn from its metrics CSV (no torch: the launcher draws it)."""

from __future__ import annotations

from pathlib import Path

from services.plotting.curves import draw_curves, read_run, save_figure


def plot_learning_curve(csv_path: Path, png_path: Path, title: str) -> bool:
    """Evaluation return against environment steps and time; False when there is nothing to plot yet."""
    curves = read_run(csv_path)
    if not curves.evaluated:
        return False
    save_figure(draw_curves([curves], title), png_path)
    return True
