"""``apexrl plot`` on real short runs (Ape-X DQN, TD3, SAC) and their TensorBoard events; bad input.

Each real run is ``apexrl run`` with a budget of 300 updates (one actor, one shard): a run
folder with a few evaluations in 20 to 30 s on two cores, so those tests are slow. The
bad-input tests need no training: their good run is a metrics.csv the run log writes.
"""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import (  # type: ignore[import-untyped]
    EventAccumulator,
)
from typer.testing import CliRunner

from services.cli import app
from services.learner.run_log import RunLog
from services.plotting.curves import draw_curves, read_run

ROOT = Path(__file__).resolve().parents[2]
WIDE_CONSOLE = {**os.environ, "COLUMNS": "1000"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# A test's fixtures may start up to three runs.
pytestmark = pytest.mark.timeout(900)


def short_run(preset: str, run_dir: Path) -> Path:
    """A finished ``apexrl run`` of ``preset`` on a small budget; its run folder."""
    budget = ["--set", "general.seed=0", "--set", "general.max_updates=300"]
    budget += ["--set", "general.max_wall_time_s=120", "--actors", "1", "--shards", "1"]
    result = subprocess.run(
        [sys.executable, "-m", "services", "run", preset, *budget, "--run-dir", str(run_dir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=WIDE_CONSOLE,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return run_dir


@dataclass(frozen=True)
class Outcome:
    code: int
    stdout: str
    stderr: str


def plot(*arguments: str | Path, cwd: Path = ROOT) -> Outcome:
    """``apexrl plot`` as a process."""
    result = subprocess.run(
        [sys.executable, "-m", "services", "plot", *map(str, arguments)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**WIDE_CONSOLE, "PYTHONPATH": str(ROOT)},
    )
    return Outcome(result.returncode, result.stdout, result.stderr)


def plot_here(*arguments: str | Path) -> Outcome:
    """``apexrl plot`` through the same command line, in this process (no start-up of its own)."""
    result = CliRunner().invoke(app, ["plot", *map(str, arguments)])
    return Outcome(result.exit_code, result.stdout, result.stderr)


@pytest.fixture(scope="module")
def dqn_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return short_run("cartpole", tmp_path_factory.mktemp("runs") / "cartpole-dqn")


@pytest.fixture(scope="module")
def td3_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return short_run("pendulum", tmp_path_factory.mktemp("runs") / "pendulum-td3")


@pytest.fixture(scope="module")
def sac_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return short_run("pendulum-sac", tmp_path_factory.mktemp("runs") / "pendulum-sac")


@pytest.fixture
def logged_run(tmp_path: Path) -> Path:
    """A run folder with two evaluations, written by the learner's run log (no training)."""
    run_dir = tmp_path / "logged"
    log = RunLog(run_dir)
    for seconds, steps, evaluation in ((0.2, 0, math.nan), (1.2, 5600, 9.2), (2.2, 10000, 31.5)):
        log.append({"elapsed_s": seconds, "environment_steps": steps, "evaluation_return": evaluation})
    log.close()
    return run_dir


def logged(run_dir: Path, column: str) -> list[tuple[int, float]]:
    """(environment steps, value) of the metrics.csv rows with a finite ``column``."""
    with open(run_dir / "metrics.csv", encoding="utf-8") as file:
        rows = [(int(row["environment_steps"]), float(row[column] or "nan")) for row in csv.DictReader(file)]
    return [(step, value) for step, value in rows if math.isfinite(value)]


# Each family's own training signals (UpdateResult.diagnostics), besides the critic's loss.
FAMILY_SIGNALS = {
    "dqn_run": (),
    "td3_run": ("policy_loss",),
    "sac_run": ("policy_loss", "temperature", "temperature_loss", "entropy"),
}


@pytest.mark.slow
@pytest.mark.parametrize("run_fixture", ["dqn_run", "td3_run", "sac_run"])
def test_tensorboard_holds_the_runs_scalars_as_the_csv_logs_them(
    run_fixture: str, request: pytest.FixtureRequest
) -> None:
    run_dir: Path = request.getfixturevalue(run_fixture)
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    tags = ("evaluation_return", "loss", "updates_per_s", *FAMILY_SIGNALS[run_fixture])
    assert set(tags) <= set(events.Tags()["scalars"])
    others = {"policy_loss", "temperature", "temperature_loss", "entropy"} - set(tags)
    assert not others & set(events.Tags()["scalars"])
    assert all(not logged(run_dir, name) for name in others)  # empty columns where a family has none
    if run_fixture == "sac_run":
        assert all(value > 0 for _, value in logged(run_dir, "temperature"))
    for tag in tags:
        expected = logged(run_dir, tag)
        assert expected, f"{tag}: no finite value in metrics.csv"
        scalars = [(event.step, event.value) for event in events.Scalars(tag)]
        assert [step for step, _ in scalars] == [step for step, _ in expected], tag
        for (_, value), (_, wanted) in zip(scalars, expected, strict=True):
            assert value == pytest.approx(wanted, rel=1e-6), tag  # float32 in the events


@pytest.mark.slow
def test_the_learner_draws_the_runs_learning_curve(dqn_run: Path) -> None:
    assert (dqn_run / "learning_curve.png").read_bytes().startswith(PNG_MAGIC)


@pytest.mark.slow
def test_plot_writes_one_png_of_several_runs_with_a_legend_naming_each(dqn_run: Path, tmp_path: Path) -> None:
    output = tmp_path / "compare.png"
    result = plot(dqn_run, dqn_run / "metrics.csv", "--label", "dqn", "--label", "again", "-o", output)
    assert result.code == 0, result.stderr
    assert result.stdout == f"wrote {output}\n"
    assert result.stderr == ""
    assert output.read_bytes().startswith(PNG_MAGIC)
    # The figure the command saved, drawn in-process from the same real run.
    runs = [read_run(dqn_run, "dqn"), read_run(dqn_run / "metrics.csv", "again")]
    figure = draw_curves(runs)
    assert len(figure.axes) == 2
    assert [len(axes.get_lines()) for axes in figure.axes] == [2, 2]
    assert [text.get_text() for text in figure.legends[0].get_texts()] == ["dqn", "again"]
    assert runs[0].return_by_steps.x == tuple(step for step, _ in logged(dqn_run, "evaluation_return"))


@pytest.mark.slow
def test_plot_writes_plot_png_in_the_current_folder_by_default(dqn_run: Path, tmp_path: Path) -> None:
    result = plot(dqn_run, "--title", "CartPole-v1", "--training", cwd=tmp_path)
    assert result.code == 0, result.stderr
    assert result.stdout == "wrote plot.png\n"
    assert (tmp_path / "plot.png").read_bytes().startswith(PNG_MAGIC)


@pytest.mark.slow
def test_plot_of_dqn_td3_and_sac_runs(dqn_run: Path, td3_run: Path, sac_run: Path, tmp_path: Path) -> None:
    output = tmp_path / "families.png"
    result = plot(dqn_run, td3_run, sac_run, "--output", output, "--training")
    assert result.code == 0, result.stderr
    assert output.read_bytes().startswith(PNG_MAGIC)
    figure = draw_curves([read_run(run, training=True) for run in (dqn_run, td3_run, sac_run)], training=True)
    # A third row for TD3's and SAC's policy losses and SAC's temperature; DQN's lines stay empty.
    assert [len(axes.get_lines()) for axes in figure.axes] == [3, 3, 3, 3, 3, 3]
    policy, temperature = figure.axes[4:]
    assert [np.size(line.get_xdata()) > 0 for line in policy.get_lines()] == [False, True, True]
    assert [np.size(line.get_xdata()) > 0 for line in temperature.get_lines()] == [False, False, True]
    texts = [text.get_text() for text in figure.legends[0].get_texts()]
    assert texts == ["cartpole-dqn", "pendulum-td3", "pendulum-sac"]


def test_a_run_not_evaluated_yet_is_named_in_a_warning_and_in_the_legend(
    logged_run: Path, tmp_path: Path
) -> None:
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    with open(logged_run / "metrics.csv", encoding="utf-8") as source:
        columns = csv.DictReader(source).fieldnames or []
    with open(fresh / "metrics.csv", "w", newline="", encoding="utf-8") as target:
        writer = csv.DictWriter(target, fieldnames=columns)
        writer.writeheader()
        writer.writerow({"elapsed_s": 0.2, "environment_steps": 0, "loss": "nan", "evaluation_return": "nan"})
    result = plot_here(logged_run, fresh, "-o", tmp_path / "plot.png")
    assert result.code == 0, result.stderr
    assert result.stderr == "apexrl plot: warning: fresh has no evaluation return yet (an empty line)\n"
    assert (tmp_path / "plot.png").exists()
    # None evaluated: nothing to plot.
    result = plot_here(fresh, "-o", tmp_path / "none.png")
    assert result.code == 1
    assert result.stderr == "apexrl plot: no evaluation return in any run yet (fresh); nothing written\n"
    assert not (tmp_path / "none.png").exists()


def test_a_run_folder_that_does_not_exist_exits_2_naming_it(logged_run: Path, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-run"
    result = plot(logged_run, missing, "-o", tmp_path / "plot.png")
    assert result.code == 2
    assert result.stderr == f"apexrl plot: no run folder at {missing}\n"
    assert not (tmp_path / "plot.png").exists()


def test_a_folder_without_metrics_exits_2_naming_it(tmp_path: Path) -> None:
    result = plot_here(tmp_path, "-o", tmp_path / "plot.png")
    assert result.code == 2
    assert result.stderr.startswith(f"apexrl plot: {tmp_path} holds no metrics.csv")
    assert result.stderr.count("\n") == 1


def test_a_metrics_file_missing_columns_exits_2_naming_the_file_and_columns(
    logged_run: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    # The logged run's file without its evaluation_return column.
    with open(logged_run / "metrics.csv", encoding="utf-8") as source:
        rows = list(csv.DictReader(source))
    with open(broken / "metrics.csv", "w", newline="", encoding="utf-8") as target:
        writer = csv.DictWriter(target, fieldnames=[name for name in rows[0] if name != "evaluation_return"])
        writer.writeheader()
        writer.writerows({name: row[name] for name in writer.fieldnames} for row in rows)
    result = plot_here(logged_run, broken, "-o", tmp_path / "plot.png")
    assert result.code == 2
    assert result.stderr == f"apexrl plot: {broken / 'metrics.csv'} lacks the column(s) evaluation_return\n"


def test_an_output_folder_that_does_not_exist_exits_2(logged_run: Path, tmp_path: Path) -> None:
    output = tmp_path / "missing" / "plot.png"
    result = plot_here(logged_run, "-o", output)
    assert result.code == 2
    assert result.stderr == f"apexrl plot: cannot write {output}: no folder {output.parent}\n"


def test_label_count_must_match_the_runs(logged_run: Path, tmp_path: Path) -> None:
    result = plot_here(logged_run, logged_run, "--label", "one", "-o", tmp_path / "plot.png")
    assert result.code == 2
    assert "1 --label value(s) for 2 run(s)" in result.stderr
