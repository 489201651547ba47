"""``apexrl run`` end to end: the default CartPole run trains to an evaluation return of 475."""

from __future__ import annotations

import csv
import math
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from services.launcher.ports import pick_free_ports

ROOT = Path(__file__).resolve().parents[2]
# Rich wraps at 80 columns when stdout is not a terminal; the summary's lines must stay whole.
WIDE_CONSOLE = {**os.environ, "COLUMNS": "1000"}


def solved_run(arguments: list[str], run_dir: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    """``apexrl run`` to the end; its result and the best return its solved verdict names."""
    result = subprocess.run(
        [sys.executable, "-m", "services", "run", *arguments, "--run-dir", str(run_dir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1500,
        check=False,
        env=WIDE_CONSOLE,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # The summary's verdict line; "not solved: ..." must not match.
    verdict = re.search(
        r"^solved: best evaluation return (-?\d+\.\d) at parameter version \d+ after \d+ s$",
        result.stdout,
        re.MULTILINE,
    )
    assert verdict is not None, result.stdout[-3000:]
    return result, float(verdict.group(1))


def best_logged_return(run_dir: Path) -> float:
    with open(run_dir / "metrics.csv", encoding="utf-8") as file:
        returns = [
            float(row["evaluation_return"]) for row in csv.DictReader(file) if row["evaluation_return"]
        ]
    return max(value for value in returns if math.isfinite(value))


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_default_run_solves_cartpole_and_leaves_a_complete_run_folder(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result, best = solved_run([], run_dir)
    assert best >= 475
    assert best_logged_return(run_dir) >= 475
    for name in ("config.yaml", "best_model.safetensors", "learning_curve.png", "logs/learner.log"):
        assert (run_dir / name).exists(), name
    assert list((run_dir / "checkpoints").glob("checkpoint-*.safetensors"))
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    # Progress went to stdout as JSON lines, since stdout was not a terminal.
    assert '"event": "progress"' in result.stdout


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_pendulum_preset_trains_td3_to_an_evaluation_return_of_minus_200(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    _, best = solved_run(["pendulum"], run_dir)
    assert best >= -200
    assert best_logged_return(run_dir) >= -200
    assert "name: td3" in (run_dir / "config.yaml").read_text(encoding="utf-8")


def started_by(launcher: int) -> list[int]:
    """Processes still running that were started as children of ``launcher`` (their environment says so)."""
    marker = f"APEXRL_LOCAL_CHILD={launcher}:".encode()
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


def test_an_invalid_config_value_exits_2_naming_the_field() -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "services",
            "run",
            "--set",
            "algorithm.batch_size=0",
            "--set",
            "general.devise=cpu",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    stdout, _ = process.communicate(timeout=120)
    assert process.returncode == 2
    assert "algorithm.batch_size: Input should be greater than or equal to 1, got 0" in stdout
    assert "general.devise: unknown key" in stdout
    # `apexrl run` starts its zygote before reading the config; a refused run leaves none behind.
    assert started_by(process.pid) == []


def test_a_part_that_keeps_dying_ends_the_run_with_exit_code_1_naming_it_and_its_log(
    tmp_path: Path,
) -> None:
    """Actors and the evaluator take their metrics port from APEXRL_ACTOR_METRICS_PORT; held by
    the test, every one of them exits 1 at start, is restarted three times and then fails the run.
    """
    run_dir = tmp_path / "run"
    (port,) = pick_free_ports(1)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("0.0.0.0", port))
        holder.listen()
        result = subprocess.run(
            [sys.executable, "-m", "services", "run", "--run-dir", str(run_dir), "--actors", "1"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
            env={**WIDE_CONSOLE, "APEXRL_ACTOR_METRICS_PORT": str(port)},
        )
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    failed = re.search(
        r"^apexrl run failed: (evaluator|actor-0) exited with code 1 after 3 restarts; see (\S+)$",
        result.stdout,
        re.MULTILINE,
    )
    assert failed is not None, result.stdout[-3000:]
    name, log = failed.groups()
    assert log == str(run_dir / "logs" / f"{name}.log")
    assert Path(log).read_text(encoding="utf-8").count("Address already in use") == 4
