"""The launcher's supervision of real child processes: restarts on the same port, and giving up."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from services.common.health_probe import is_serving
from services.launcher.children import Child, RunFailedError
from services.launcher.ports import pick_free_ports

REPLAY = "apexrl.replay.v1.ReplayService"


def shard_args(port: int) -> list[str]:
    return ["replay", "--port", str(port), "--capacity", "100"]


def check_until_failed(child: Child, timeout_s: float) -> RunFailedError:
    """Supervises ``child`` as the launcher does until it gives up; fails after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            child.check()
        except RunFailedError as error:
            return error
        time.sleep(0.05)
    pytest.fail(f"{child.name} was still supervised after {timeout_s} s ({child.restarts} restarts)")


def test_a_serving_child_that_dies_is_restarted_on_the_same_port(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "replay-0.log"
    child = Child("replay-0", shard_args, log, serves=True)
    (child.port,) = pick_free_ports(1)  # as LocalRun.start chooses them
    port = child.port
    try:
        child.start()
        assert child.address == f"127.0.0.1:{port}"
        assert is_serving(child.address, REPLAY)
        child.check()  # alive: nothing to do
        assert child.restarts == 0
        assert child.process is not None
        first = child.process.process
        first.kill()  # dies as a crash would, without draining
        first.wait(timeout=30)

        child.check()  # restarts it and waits until it serves again
        assert child.restarts == 1
        assert child.process is not None
        assert child.process.process.pid != first.pid
        assert child.process.exit_code() is None
        assert child.port == port
        assert child.process.address == f"127.0.0.1:{port}"
        assert is_serving(f"127.0.0.1:{port}", REPLAY)
    finally:
        code = child.stop()
    assert code == 0  # SIGTERM: the shard drains and exits 0
    # Both runs log to the same file.
    assert log.read_text(encoding="utf-8").count(f"serving address=127.0.0.1:{port}") == 2


def test_a_child_that_keeps_dying_fails_the_run_naming_it_and_its_log(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "actor-0.log"
    # A command that exits 2 at once (invalid flags), as a role that cannot run would.
    child = Child("actor-0", lambda _port: ["replay", "--capacity", "0"], log, serves=False, max_restarts=2)
    child.start()
    error = check_until_failed(child, timeout_s=120)
    assert str(error) == f"actor-0 exited with code 2 after 2 restarts; see {log}"
    assert child.restarts == 2
    # The first run and both restarts wrote to the log the message names.
    assert log.read_text(encoding="utf-8").count("capacity: Input should be greater than or equal to 1") == 3
    child.stop()


def test_a_serving_child_that_cannot_start_fails_naming_it_and_its_log(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "replay-1.log"
    child = Child("replay-1", lambda port: [*shard_args(port), "--priority-exponent", "-1"], log, serves=True)
    with pytest.raises(RunFailedError) as failed:
        child.start()
    assert str(failed.value) == (
        f"replay-1 failed to start: `apexrl replay` did not start serving (exit code 2); see {log}"
    )
    assert "priority_exponent" in log.read_text(encoding="utf-8")
    child.stop()
