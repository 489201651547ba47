"""The replay shard's image holds no ``train`` extra: its command line must import without it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The train extra (pyproject.toml), and the modules it brings that the services import.
TRAIN_ONLY = ("torch", "gymnasium", "matplotlib", "tensorboard", "setproctitle")


def test_the_command_line_and_the_shard_run_without_the_train_extra() -> None:
    blocked = "; ".join(f"sys.modules[{name!r}] = None" for name in TRAIN_ONLY)  # import raises
    script = f"import sys; {blocked}; from services.cli import main; main(['replay', '--help'])"
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Run one replay shard" in result.stdout
