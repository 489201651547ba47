"""The launcher's zygote: roles forked from it behave as spawned ones, and it stays fit to fork."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.algorithms.experiment import load_experiment
from services.common.health_probe import is_serving
from services.launcher.children import Child, RunFailedError
from services.launcher.ports import pick_free_ports
from services.launcher.zygote import ForkedProcess, Zygote

REPLAY = "apexrl.replay.v1.ReplayService"


@pytest.fixture(scope="module")
def zygote() -> Iterator[Zygote]:
    started = Zygote()
    yield started
    started.close()


def shard(zygote: Zygote, log: Path, niceness: int = 0) -> ForkedProcess:
    return zygote.fork(["replay", "--port", "0", "--capacity", "100"], log, niceness)


def stat_fields(pid: int) -> list[str]:
    return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()


def test_a_forked_shard_serves_in_its_own_session_at_its_priority_and_drains_on_sigterm(
    zygote: Zygote, tmp_path: Path
) -> None:
    log = tmp_path / "replay.log"
    process = shard(zygote, log, niceness=3)
    address = process.wait_for_address()
    assert is_serving(address, REPLAY)
    fields = stat_fields(process.pid)
    assert int(fields[3]) == process.pid  # the session: its own, so Ctrl-C reaches only the launcher
    assert int(fields[16]) == os.getpriority(os.PRIO_PROCESS, 0) + 3  # nice
    assert os.readlink(f"/proc/{process.pid}/fd/1") == str(log)
    command = Path(f"/proc/{process.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    assert " -m services replay --port 0 --capacity 100" in command
    assert process.exit_code() is None
    assert process.stop() == 0
    assert "replay shard stopped" in log.read_text()


def test_exit_codes_are_reported_as_subprocess_reports_them(zygote: Zygote, tmp_path: Path) -> None:
    refused = zygote.fork(["replay", "--capacity", "0"], tmp_path / "refused.log")
    with pytest.raises(RuntimeError, match=r"did not start serving \(exit code 2\)"):
        refused.wait_for_address(timeout_s=60)
    assert "capacity: Input should be greater than or equal to 1" in (tmp_path / "refused.log").read_text()
    killed = shard(zygote, tmp_path / "killed.log")
    killed.wait_for_address()
    killed.kill()
    assert zygote.wait_exit(killed.pid, 30.0) == -signal.SIGKILL
    assert killed.exit_code() == -signal.SIGKILL


def test_a_child_restarted_after_a_crash_is_forked_again(zygote: Zygote, tmp_path: Path) -> None:
    (port,) = pick_free_ports(1)
    args = ["replay", "--port", str(port), "--capacity", "100"]
    child = Child("replay-0", lambda _port: args, tmp_path / "replay-0.log", serves=True, zygote=zygote)
    try:
        child.start()
        assert isinstance(child.process, ForkedProcess)
        first = child.process.pid
        child.process.kill()
        deadline = time.monotonic() + 60
        while child.restarts == 0 and time.monotonic() < deadline:
            child.check()
            time.sleep(0.05)
        assert child.restarts == 1
        assert isinstance(child.process, ForkedProcess)
        assert child.process.pid != first
        assert is_serving(f"127.0.0.1:{port}", REPLAY)
    finally:
        assert child.stop() == 0


def test_a_child_that_keeps_failing_names_its_own_reason(zygote: Zygote, tmp_path: Path) -> None:
    log = tmp_path / "actor-0.log"
    child = Child("actor-0", lambda _port: ["replay", "--capacity", "0"], log, False, 1, zygote=zygote)
    child.start()
    deadline = time.monotonic() + 60
    with pytest.raises(RunFailedError) as failed:  # noqa: PT012 - checks until it fails
        while time.monotonic() < deadline:
            child.check()
            time.sleep(0.05)
    assert str(failed.value).splitlines()[0] == f"actor-0 exited with code 2 after 1 restarts; see {log}"
    assert failed.value.reason[-1] == "  capacity: Input should be greater than or equal to 1, got 0"


def test_prechecks_run_in_a_child_and_leave_the_zygote_single_threaded(zygote: Zygote) -> None:
    threads_before = len(os.listdir(f"/proc/{zygote.pid}/task"))
    assert zygote.precheck(load_experiment("cartpole").model_dump(mode="json")) is None
    bad = load_experiment("cartpole", ["environment.id=Pendulum-v1"]).model_dump(mode="json")
    problem = zygote.precheck(bad)
    assert problem is not None
    assert problem.startswith("algorithm apex_dqn cannot train on Pendulum-v1")
    # Building networks in the zygote itself could start torch's thread pools there.
    assert len(os.listdir(f"/proc/{zygote.pid}/task")) == threads_before


def test_children_get_sigterm_when_the_zygote_dies(tmp_path: Path) -> None:
    own = Zygote()
    try:
        log = tmp_path / "replay.log"
        process = shard(own, log)
        process.wait_for_address()
        os.kill(own.pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while Path(f"/proc/{process.pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not Path(f"/proc/{process.pid}").exists()
        assert "stopping signal=SIGTERM" in log.read_text()
        assert not own.alive
        assert process.exit_code() == -signal.SIGTERM  # its code went with the zygote
    finally:
        own.close()


def test_a_module_that_prints_when_imported_does_not_disturb_the_zygote(
    zygote: Zygote, tmp_path: Path
) -> None:
    """The zygote imports the experiment's environment module; its print goes to stderr, not the replies."""
    noisy = "tests.integration.noisy_environment:NoisyCartPole-v0"
    config = load_experiment("cartpole", [f"environment.id={noisy}"]).model_dump(mode="json")
    assert zygote.precheck(config) is None
    process = shard(zygote, tmp_path / "replay.log")
    process.wait_for_address()
    assert process.stop() == 0
    assert zygote.alive
    assert any("prints when it is imported" in line for line in zygote.errors)  # its stderr
    assert not any(line.startswith("not a reply") for line in zygote.errors)
