"""Run folders' metrics.csv read into curves and drawn: one line per run per panel, a legend naming each."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from matplotlib.lines import Line2D

from services.learner.learning_curve import plot_learning_curve
from services.learner.run_log import COLUMNS, RunLog
from services.plotting.curves import (
    PlotError,
    RunCurves,
    Series,
    check_output,
    draw_curves,
    read_run,
    run_labels,
    save_figure,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HEADER = ",".join(COLUMNS)


def write_run(folder: Path, rows: list[dict[str, float | str]], header: str = HEADER) -> Path:
    """A run folder whose metrics.csv holds ``rows`` (missing cells empty)."""
    folder.mkdir(parents=True)
    names = header.split(",")
    lines = [header] + [",".join(str(row.get(name, "")) for name in names) for row in rows]
    (folder / "metrics.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def row(
    seconds: float, steps: int, evaluation: float | str, loss: float | str = 0.5
) -> dict[str, float | str]:
    return {
        "elapsed_s": seconds,
        "environment_steps": steps,
        "evaluation_return": evaluation,
        "loss": loss,
        "updates_per_s": 10 * seconds,
    }


def points(line: Line2D) -> Series:
    """The line's data as a Series, to compare with the curves it was drawn from."""
    data = np.asarray(line.get_xydata(), dtype=float).reshape(-1, 2)
    return Series(tuple(data[:, 0].tolist()), tuple(data[:, 1].tolist()))


def two_runs(tmp_path: Path) -> list[RunCurves]:
    first = write_run(
        tmp_path / "dqn-seed0", [row(0.2, 0, "nan", "nan"), row(1, 100, 9.0), row(2, 300, 50.0)]
    )
    second = write_run(tmp_path / "dqn-seed1", [row(0.5, 50, 12.0), row(1.5, 250, ""), row(3, 400, 80.0)])
    return [read_run(first), read_run(second)]


def test_rows_without_an_evaluation_return_are_left_out_of_the_return_curves(tmp_path: Path) -> None:
    first, second = two_runs(tmp_path)
    assert first.label == "dqn-seed0"
    assert first.return_by_steps == Series((100.0, 300.0), (9.0, 50.0))
    assert first.return_by_time == Series((1.0, 2.0), (9.0, 50.0))
    assert second.return_by_steps == Series((50.0, 400.0), (12.0, 80.0))  # the empty cell is left out
    assert first.evaluated


def test_the_figure_has_both_panels_with_one_line_per_run_and_a_legend_naming_each(tmp_path: Path) -> None:
    runs = two_runs(tmp_path)
    figure = draw_curves(runs, "CartPole-v1")
    by_steps, by_time = figure.axes
    assert by_steps.get_xlabel() == "environment steps"
    assert by_time.get_xlabel() == "wall time (s)"
    for axes, field in ((by_steps, "return_by_steps"), (by_time, "return_by_time")):
        lines = axes.get_lines()
        assert len(lines) == 2
        for line, run in zip(lines, runs, strict=True):
            assert points(line) == getattr(run, field)
        assert lines[0].get_color() != lines[1].get_color()
    (legend,) = figure.legends
    assert [text.get_text() for text in legend.get_texts()] == ["dqn-seed0", "dqn-seed1"]
    assert figure.get_suptitle() == "CartPole-v1"


def test_training_panels_add_the_loss_by_steps_and_the_updates_per_second_by_time(tmp_path: Path) -> None:
    folder = write_run(
        tmp_path / "run", [row(0.2, 0, "nan", "nan"), row(1, 100, 9.0, 2.0), row(2, 300, 50.0)]
    )
    figure = draw_curves([read_run(folder, training=True)], training=True)
    assert len(figure.axes) == 4
    loss, rate = figure.axes[2:]
    # The first row's NaN loss is left out.
    assert points(loss.get_lines()[0]) == Series((100.0, 300.0), (2.0, 0.5))
    assert loss.get_yscale() == "log"
    assert points(rate.get_lines()[0]) == Series((0.2, 1.0, 2.0), (2.0, 10.0, 20.0))


def test_runs_that_logged_policy_losses_and_a_temperature_get_a_third_row(tmp_path: Path) -> None:
    sac = write_run(
        tmp_path / "sac",
        [
            {**row(1, 100, 9.0), "policy_loss": -3.0, "temperature": 0.5},
            {**row(2, 300, 50.0), "policy_loss": -7.5, "temperature": 0.25},
        ],
    )
    dqn = write_run(tmp_path / "dqn", [row(1, 100, 9.0), row(2, 300, 50.0)])  # the columns, empty
    runs = [read_run(sac, training=True), read_run(dqn, training=True)]
    figure = draw_curves(runs, training=True)
    assert len(figure.axes) == 6
    policy, temperature = figure.axes[4:]
    assert points(policy.get_lines()[0]) == Series((100.0, 300.0), (-3.0, -7.5))
    assert points(temperature.get_lines()[0]) == Series((100.0, 300.0), (0.5, 0.25))
    # DQN's line is there, so the legend lines up, and holds no points.
    assert points(policy.get_lines()[1]) == Series((), ())
    # Runs without the signals (DQN, or a metrics.csv from before them) keep two rows.
    older = write_run(
        tmp_path / "older",
        [row(1, 100, 9.0)],
        header="elapsed_s,environment_steps,evaluation_return,loss,updates_per_s",
    )
    assert len(draw_curves([runs[1], read_run(older, training=True)], training=True).axes) == 4
    assert len(draw_curves(runs).axes) == 2  # without --training, returns only


def test_a_run_without_an_evaluation_keeps_an_empty_line_that_the_legend_names(tmp_path: Path) -> None:
    evaluated = read_run(write_run(tmp_path / "a", [row(1, 100, 9.0)]))
    waiting = read_run(write_run(tmp_path / "b", [row(1, 100, "nan"), row(2, 200, "")]), label="fresh")
    assert not waiting.evaluated
    figure = draw_curves([evaluated, waiting])
    assert [points(line) for line in figure.axes[0].get_lines()] == [Series((100.0,), (9.0,)), Series((), ())]
    texts = [text.get_text() for text in figure.legends[0].get_texts()]
    assert texts == ["a", "fresh (no evaluation yet)"]


def test_missing_columns_are_named_with_the_file(tmp_path: Path) -> None:
    folder = write_run(tmp_path / "old", [{"elapsed_s": 1, "loss": 0.1}], header="elapsed_s,loss")
    with pytest.raises(
        PlotError, match=r"old/metrics\.csv lacks the column\(s\) environment_steps, evaluation_return$"
    ):
        read_run(folder)
    # No header yet: a learner that stopped before logging its first row.
    (folder / "metrics.csv").write_text("", encoding="utf-8")
    assert not read_run(folder).evaluated
    assert not plot_learning_curve(folder / "metrics.csv", tmp_path / "curve.png", "CartPole-v1")


def test_training_panels_need_the_loss_and_rate_columns(tmp_path: Path) -> None:
    header = "elapsed_s,environment_steps,evaluation_return"
    folder = write_run(tmp_path / "run", [row(1, 100, 9.0)], header=header)
    assert read_run(folder).evaluated
    with pytest.raises(PlotError, match=r"lacks the column\(s\) loss, updates_per_s$"):
        read_run(folder, training=True)


def test_a_value_that_is_not_a_number_is_named_by_line_and_column(tmp_path: Path) -> None:
    folder = write_run(tmp_path / "run", [row(1, 100, 9.0), row(2, 200, "lots")])
    with pytest.raises(PlotError, match=r"metrics\.csv line 3: evaluation_return 'lots' is not a number"):
        read_run(folder)


def test_a_metrics_file_that_is_not_text_is_named(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.csv").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    with pytest.raises(PlotError, match=r"run/metrics\.csv is not a UTF-8 CSV file$"):
        read_run(tmp_path / "run")


def test_a_row_still_being_written_is_left_out(tmp_path: Path) -> None:
    folder = write_run(tmp_path / "run", [row(1, 100, 9.0)])
    with open(folder / "metrics.csv", "a", encoding="utf-8") as file:
        file.write("2.0,4")  # a live learner's row, cut off mid-line
    assert read_run(folder).return_by_steps.x == (100,)


def test_a_missing_folder_and_a_folder_without_metrics_are_named(tmp_path: Path) -> None:
    with pytest.raises(PlotError, match=f"^no run folder at {tmp_path / 'nowhere'}$"):
        read_run(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PlotError, match=f"^{tmp_path / 'empty'} holds no metrics.csv"):
        read_run(tmp_path / "empty")


def test_labels_are_the_folder_names_the_paths_where_names_repeat_or_those_given(tmp_path: Path) -> None:
    runs = [tmp_path / "a" / "run", tmp_path / "b" / "run"]
    metrics = write_run(tmp_path / "y", []) / "metrics.csv"
    assert run_labels([tmp_path / "x", metrics]) == ["x", "y"]  # a metrics file: its folder's name
    assert run_labels(runs) == [str(run) for run in runs]
    assert run_labels(runs, ["seed 0", "seed 1"]) == ["seed 0", "seed 1"]
    with pytest.raises(PlotError, match=r"1 --label value\(s\) for 2 run\(s\)"):
        run_labels(runs, ["seed 0"])


def test_the_output_must_be_a_png_in_an_existing_folder(tmp_path: Path) -> None:
    check_output(tmp_path / "plot.png")
    with pytest.raises(PlotError, match=f"no folder {tmp_path / 'missing'}$"):
        check_output(tmp_path / "missing" / "plot.png")
    with pytest.raises(PlotError, match=r"name it \*\.png"):
        check_output(tmp_path / "plot.svg")
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(PlotError, match="it is a folder"):
        check_output(tmp_path / "folder.png")


def test_the_saved_figure_is_a_png(tmp_path: Path) -> None:
    save_figure(draw_curves(two_runs(tmp_path)), tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes().startswith(PNG_MAGIC)


def test_the_curves_read_what_the_run_log_writes(tmp_path: Path) -> None:
    log = RunLog(tmp_path / "run")
    log.append({"elapsed_s": 0.2, "environment_steps": 0, "loss": math.nan, "evaluation_return": math.nan})
    log.append({"elapsed_s": 1.2, "environment_steps": 5600, "loss": 0.25, "evaluation_return": 9.2})
    log.close()
    curves = read_run(tmp_path / "run", training=True)
    assert curves.return_by_steps == Series((5600.0,), (9.2,))
    assert curves.return_by_time.x == (1.2,)
    assert curves.loss_by_steps.y == (0.25,)


def test_the_learning_curve_is_drawn_only_once_there_is_an_evaluation(tmp_path: Path) -> None:
    folder = write_run(tmp_path / "run", [row(0.2, 0, "nan")])
    png = tmp_path / "run" / "learning_curve.png"
    assert not plot_learning_curve(folder / "metrics.csv", png, "CartPole-v1")
    assert not png.exists()
    with open(folder / "metrics.csv", "a", encoding="utf-8") as file:
        file.write(",".join(str(row(1, 100, 9.0).get(name, "")) for name in COLUMNS) + "\n")
    assert plot_learning_curve(folder / "metrics.csv", png, "CartPole-v1")
    assert png.read_bytes().startswith(PNG_MAGIC)
