"""The launcher's supervision of real child processes: restarts on the same port, and giving up."""

from __future__ import annotations

import math
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.common.health_probe import is_serving
from services.common.local_process import LocalProcess
from services.launcher.children import Child, RunFailedError, check_children
from services.launcher.ports import pick_free_ports
from services.launcher.zygote import Zygote

REPLAY = "apexrl.replay.v1.ReplayService"
ROOT = Path(__file__).resolve().parents[2]


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
        assert isinstance(child.process, LocalProcess)  # no zygote: spawned
        first = child.process.process
        first.kill()  # dies as a crash would, without draining
        first.wait(timeout=30)

        child.check()  # restarts it and waits until it serves again
        assert child.restarts == 1
        assert child.process is not None
        assert child.process.pid != first.pid
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
    headline = f"actor-0 exited with code 2 after 2 restarts; see {log}"
    # The part's own words follow, from its last run's output only.
    reason = (
        "apexrl replay: invalid configuration (apexrl replay flags):",
        "  capacity: Input should be greater than or equal to 1, got 0",
    )
    assert error.reason == reason
    assert str(error) == "\n".join([headline, *(f"  {line}" for line in reason)])
    assert child.restarts == 2
    # The first run and both restarts wrote to the log the message names.
    assert log.read_text(encoding="utf-8").count("capacity: Input should be greater than or equal to 1") == 3
    child.stop()


def test_a_serving_child_that_cannot_start_fails_naming_it_and_its_log(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "replay-1.log"
    child = Child("replay-1", lambda port: [*shard_args(port), "--priority-exponent", "-1"], log, serves=True)
    with pytest.raises(RunFailedError) as failed:
        child.start()
    assert str(failed.value).splitlines()[0] == (
        f"replay-1 failed to start: `apexrl replay` did not start serving (exit code 2); see {log}"
    )
    assert failed.value.reason == (
        "apexrl replay: invalid configuration (apexrl replay flags):",
        "  priority_exponent: Input should be greater than or equal to 0, got -1.0",
    )
    assert str(failed.value).splitlines()[1:] == [f"  {line}" for line in failed.value.reason]
    child.stop()


def test_a_restarted_child_s_reason_is_its_latest_process_s(tmp_path: Path) -> None:
    """The first process exits with a reason in the shared log; the restarted one is killed."""
    log = tmp_path / "logs" / "replay-0.log"
    (port,) = pick_free_ports(1)
    runs: list[list[str]] = [["replay", "--capacity", "0"], shard_args(port)]
    child = Child("replay-0", lambda _port: runs.pop(0), log, serves=False, max_restarts=1)
    try:
        child.start()
        deadline = time.monotonic() + 120
        while child.restarts == 0 and time.monotonic() < deadline:
            child.check()
            time.sleep(0.05)
        assert child.restarts == 1
        assert child.process is not None
        # Wait until the second process serves, so its whole start-up is in the log.
        assert child.process.wait_for_address() == f"127.0.0.1:{port}"
        child.process.kill()
        error = check_until_failed(child, timeout_s=120)
    finally:
        child.stop()
    assert "capacity: Input should be greater than or equal to 1" in log.read_text(encoding="utf-8")
    assert str(error).splitlines()[0] == f"replay-0 exited with code -9 after 1 restarts; see {log}"
    assert error.reason == ("killed by SIGKILL",)


def test_a_run_whose_learner_fails_after_the_prechecks_prints_the_learner_s_own_error(
    tmp_path: Path,
) -> None:
    """A run folder whose metrics.csv is a folder: the experiment is fine, the learner's start is not."""
    run_dir = tmp_path / "run"
    metrics = run_dir / "metrics.csv"
    metrics.mkdir(parents=True)
    result = subprocess.run(
        [sys.executable, "-m", "services", "run", "--run-dir", str(run_dir), "--actors=1", "--shards=1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    log = run_dir / "logs" / "learner.log"
    lines = result.stdout.splitlines()
    headline = (
        "apexrl run failed: learner failed to start: `apexrl learner` did not start serving "
        f"(exit code 1); see {log}"
    )
    assert headline in lines, result.stdout[-3000:]
    assert lines[lines.index(headline) + 1] == f"  IsADirectoryError: [Errno 21] Is a directory: '{metrics}'"
    assert "Traceback (most recent call last):" in log.read_text(encoding="utf-8")


def exits_in_order(children: list[Child]) -> list[Child]:
    """Kills ``children``'s processes one after the other; the order the launcher checks them in."""
    for child in children:
        assert child.process is not None
        child.process.kill()
        deadline = time.monotonic() + 30
        while child.process.exit_code() is None:
            assert time.monotonic() < deadline, f"{child.name} outlived SIGKILL"
            time.sleep(0.01)
        time.sleep(0.05)  # apart by more than the zygote's 10 ms reporting
    return sorted(reversed(children), key=Child.exited_at)


@pytest.mark.parametrize("forked", [False, True], ids=["spawned", "forked"])
def test_the_child_that_exited_first_is_checked_first(forked: bool, tmp_path: Path) -> None:
    # A learner group's rank killed brings the other down before the launcher looks: the run
    # must name the one that died first, not the first in its list.
    zygote = Zygote() if forked else None
    children = [
        Child(f"replay-{k}", shard_args, tmp_path / f"replay-{k}.log", True, 0, zygote=zygote)
        for k in range(3)
    ]
    try:
        for child in children:
            child.start()
        assert [child.exited_at() for child in children] == [math.inf] * 3  # running
        first, second, third = children[1], children[2], children[0]
        assert exits_in_order([first, second, third]) == [first, second, third]
        assert first.exited_at() < second.exited_at() < third.exited_at() < math.inf
        with pytest.raises(RunFailedError, match=r"^replay-1 exited with code -9"):
            check_children(children)
    finally:
        for child in children:
            child.stop()
        if zygote is not None:
            zygote.close()
