"""A service started by LocalProcess lowers its own priority and stops when its launcher dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from services.common.local_process import LocalProcess

ROOT = Path(__file__).resolve().parents[2]
DEADLINE_S = 60.0


def niceness_of(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[16])  # field 19 of proc(5), counted after the command name


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_a_child_applies_the_niceness_it_was_started_with(tmp_path: Path) -> None:
    child = LocalProcess(["replay", "--port", "0", "--capacity", "10"], tmp_path / "replay.log", niceness=7)
    try:
        child.wait_for_address()
        assert niceness_of(child.process.pid) == niceness_of(os.getpid()) + 7
    finally:
        assert child.stop() == 0


def test_a_child_stops_when_its_launcher_is_killed(tmp_path: Path) -> None:
    launcher = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from services.common.local_process import LocalProcess\n"
        f"log = Path({str(tmp_path)!r}) / 'r.log'\n"
        "child = LocalProcess(['replay', '--port', '0', '--capacity', '10'], log)\n"
        "child.wait_for_address()\n"
        "print(child.process.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", launcher], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child_pid = int(parent.stdout.readline())
    assert alive(child_pid)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + DEADLINE_S
    while alive(child_pid):
        assert time.monotonic() < deadline, "the child outlived its killed launcher"
        time.sleep(0.1)
