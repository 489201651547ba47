"""``apexrl run --learners 2``: a data-parallel learner group trains, and a rank killed ends it cleanly.

Two learner processes train on halves of every batch (gloo), rank 0 serving the run.
Killing either with SIGKILL makes the other's next collective fail at once: the run stops
within seconds, naming the rank that died, and rank 0's checkpoint resumes the group.
"""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from services.learner.checkpoint import checkpoints, load_checkpoint
from tests.e2e.test_local_run import ROOT, WIDE_CONSOLE

BUDGET = ["--set", "general.seed=5", "--set", "algorithm.min_replay_size=500", "--shards", "1"]


def launch(run_dir: Path, *arguments: str) -> tuple[subprocess.Popen[str], Path]:
    output = run_dir.parent / f"{run_dir.name}.out"
    with open(output, "w", encoding="utf-8") as stream:
        process = subprocess.Popen(
            [sys.executable, "-m", "services", "run", "--learners", "2", *BUDGET, *arguments],
            cwd=ROOT, stdout=stream, stderr=subprocess.STDOUT, text=True, env=WIDE_CONSOLE,
        )  # fmt: skip
    return process, output


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {what}"
        time.sleep(0.2)


def log(run_dir: Path, name: str) -> str:
    path = run_dir / "logs" / f"{name}.log"
    return path.read_text(encoding="utf-8") if path.exists() else ""


def updates_logged(run_dir: Path) -> int:
    path = run_dir / "metrics.csv"
    if not path.exists():
        return 0
    with open(path, encoding="utf-8") as file:
        return max((int(row["updates"]) for row in csv.DictReader(file)), default=0)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_learners_train_together_and_stop_together(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    process, output = launch(
        run_dir, "cartpole", "--run-dir", str(run_dir), "--set", "general.max_updates=300"
    )
    assert process.wait(timeout=300) == 0, output.read_text()[-3000:]
    assert "joined the learner group rank=0 size=2" in log(run_dir, "learner")
    follower = log(run_dir, "learner-1")
    assert "joined the learner group rank=1 size=2" in follower
    stopped = re.search(r"the learner group stopped at update (\d+)", follower)
    assert stopped is not None, follower[-2000:]
    # Both ranks stopped at the same update, the one rank 0 checkpointed as it stopped.
    _, counters, _ = load_checkpoint(checkpoints(run_dir / "checkpoints")[-1])
    assert counters.updates == int(stopped.group(1)) >= 300


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize(("victim", "survivor"), [("learner-1", "learner"), ("learner", "learner-1")])
def test_a_rank_killed_stops_the_group_at_once_and_the_run_resumes(
    victim: str, survivor: str, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    process, output = launch(
        run_dir, "cartpole", "--run-dir", str(run_dir), "--set", "general.max_updates=1000000"
    )
    try:
        wait_for(lambda: updates_logged(run_dir) > 0, 240, "the group's first updates")
        match = re.search(r"pid=(\d+)", log(run_dir, victim))
        assert match is not None
        os.kill(int(match.group(1)), signal.SIGKILL)
        killed_at = time.monotonic()
        code = process.wait(timeout=120)  # never a hang: the survivor's collective fails at once
    finally:
        if process.poll() is None:
            process.kill()
    printed = output.read_text(encoding="utf-8")
    assert code == 1, printed[-3000:]
    assert f"apexrl run failed: {victim} exited with code -9" in printed
    assert "training stopped: the learner group failed" in log(run_dir, survivor)
    print(f"{victim} killed: the run stopped {time.monotonic() - killed_at:.1f} s later")

    if victim == "learner-1":
        # Rank 0 checkpointed as it stopped; the group resumes from there, counters going on.
        stopped_at = load_checkpoint(checkpoints(run_dir / "checkpoints")[-1])[1].updates
        process, output = launch(
            run_dir, "--resume", str(run_dir), "--set", f"general.max_updates={stopped_at + 200}"
        )
        assert process.wait(timeout=300) == 0, output.read_text()[-3000:]
        resumed = load_checkpoint(checkpoints(run_dir / "checkpoints")[-1])[1].updates
        assert resumed >= stopped_at + 200
