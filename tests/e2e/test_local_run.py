"""``apexrl run`` end to end: the default CartPole run trains to an evaluation return of 475."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_default_run_solves_cartpole_and_leaves_a_complete_run_folder(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "services", "run", "--run-dir", str(run_dir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1500,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "solved" in result.stdout
    with open(run_dir / "metrics.csv", encoding="utf-8") as file:
        returns = [
            float(row["evaluation_return"]) for row in csv.DictReader(file) if row["evaluation_return"]
        ]
    assert max(value for value in returns if math.isfinite(value)) >= 475
    for name in ("config.yaml", "best_model.safetensors", "learning_curve.png", "logs/learner.log"):
        assert (run_dir / name).exists(), name
    assert list((run_dir / "checkpoints").glob("checkpoint-*.safetensors"))
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    # Progress went to stdout as JSON lines, since stdout was not a terminal.
    assert '"event": "progress"' in result.stdout


def test_an_invalid_config_value_exits_2_naming_the_field() -> None:
    result = subprocess.run(
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
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert "algorithm.batch_size: Input should be greater than or equal to 1, got 0" in result.stdout
    assert "general.devise: unknown key" in result.stdout
