"""``apexrl run --resume RUN``: a stopped run goes on, counters, budgets and its learning curve continuing."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.test_local_run import ROOT, WIDE_CONSOLE

SMALL = ["--set", "general.max_wall_time_s=300", "--set", "general.checkpoint_interval_s=5"]


def apexrl_run(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services", "run", *arguments],
        cwd=ROOT, capture_output=True, text=True, timeout=540, check=False, env=WIDE_CONSOLE,
    )  # fmt: skip


def metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def column(rows: list[dict[str, str]], name: str) -> list[float]:
    return [float(row[name]) for row in rows]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_stopped_run_resumes_where_it_stopped_and_an_old_folder_is_never_reused_silently(
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "run"
    first = apexrl_run("--run-dir", str(run_dir), "--set", "general.max_updates=200", *SMALL)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert f"apexrl run --resume {run_dir}" in first.stdout
    # The summary reads at 80 columns; only lines holding the (long, temporary) folder may not.
    summary = [line for line in first.stdout.splitlines() if not line.startswith("{")]
    assert all(len(line) <= 80 for line in summary if str(run_dir) not in line), summary
    stopped = metrics(run_dir)
    assert sorted(path.name for path in run_dir.glob("replay-*.snapshot")) == [
        "replay-0.snapshot",
        "replay-1.snapshot",
    ]

    again = apexrl_run("--run-dir", str(run_dir), "--set", "general.max_updates=200", *SMALL)
    assert again.returncode == 2
    assert f"already holds a run: continue it with `apexrl run --resume {run_dir}`" in again.stdout
    assert metrics(run_dir) == stopped  # nothing started, nothing written

    # Budgets count from the start of the run: the same budget is already spent.
    spent = apexrl_run("--resume", str(run_dir), "--set", "general.max_updates=200", *SMALL)
    assert spent.returncode == 0, spent.stdout[-3000:] + spent.stderr[-3000:]
    resumed = apexrl_run("--resume", str(run_dir), "--set", "general.max_updates=600", *SMALL)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    rows = metrics(run_dir)
    assert rows[: len(stopped)] == stopped  # one curve, appended to
    updates, elapsed, steps = (
        column(rows, "updates"),
        column(rows, "elapsed_s"),
        column(rows, "environment_steps"),
    )
    assert updates == sorted(updates)
    assert elapsed == sorted(elapsed)
    assert steps == sorted(steps)
    assert max(updates) >= 600
    assert min(updates[len(stopped) :]) >= 200  # the resumed learner started from its checkpoint
    replay_log = (run_dir / "logs" / "replay-0.log").read_text()
    assert "snapshot loaded" in replay_log


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--resume", "{missing}"], "is not a run folder to resume: it has no config.yaml"),
        (["cartpole", "--resume", "{run}"], "--resume continues the run with its own config"),
        (["--resume", "{run}", "--run-dir", "{missing}"], "name different folders"),
        (["--resume", "{run}", "--shards", "3"], "was run with 2 replay shards"),
    ],
)
def test_bad_resumes_are_refused_naming_the_problem(
    tmp_path: Path, arguments: list[str], message: str
) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("general: {}\n")
    for index in range(2):
        (run_dir / f"replay-{index}.snapshot").write_bytes(b"")
    paths = {"missing": str(tmp_path / "missing"), "run": str(run_dir)}
    result = apexrl_run(*(argument.format(**paths) for argument in arguments))
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stdout
