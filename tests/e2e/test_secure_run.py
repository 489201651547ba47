"""``apexrl run --secure``: every process talks mutual TLS with a token, and no secret reaches a log."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.test_local_run import ROOT, WIDE_CONSOLE

UPDATES = 300


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_secure_run_trains_and_logs_no_secret(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable, "-m", "services", "run", "--secure", "--run-dir", str(run_dir),
            "--set", f"general.max_updates={UPDATES}", "--set", "general.max_wall_time_s=300",
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=540, check=False, env=WIDE_CONSOLE,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with open(run_dir / "metrics.csv", encoding="utf-8") as file:
        updates = max(int(row["updates"]) for row in csv.DictReader(file))
    assert updates >= UPDATES  # shards, feed, learner, actors and evaluator all got through
    logs = {path.name: path.read_text(errors="replace") for path in (run_dir / "logs").glob("*.log")}
    for server in ("learner.log", "replay-0.log", "replay-1.log"):
        assert "tls=True token=True" in logs[server], server
    secrets = run_dir / "secrets"
    token = (secrets / "token").read_text().strip()
    key_lines = [
        line for line in (secrets / "service-key.pem").read_text().splitlines() if "PRIVATE KEY" not in line
    ]
    outputs = {**logs, "stdout": result.stdout, "stderr": result.stderr}
    for name, text in outputs.items():
        assert token not in text, f"the token is in {name}"
        assert not any(line in text for line in key_lines), f"the private key is in {name}"
    assert (secrets / "token").stat().st_mode & 0o077 == 0
    assert (secrets / "service-key.pem").stat().st_mode & 0o077 == 0
