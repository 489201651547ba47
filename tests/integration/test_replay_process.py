"""The shard as users start it: ``python -m services.replay``, SIGTERM, restart from its snapshot."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from apexrl.replay.v1 import replay_pb2, replay_pb2_grpc
from services.common import tensor_codec
from services.common.channels import create_channel
from services.common.health_probe import is_serving
from services.launcher.ports import pick_free_ports
from tests.integration.conftest import transitions

ROOT = Path(__file__).resolve().parents[2]


def start(*flags: str) -> tuple[subprocess.Popen[str], str]:
    """Starts a shard process and reads its address from the start-up log line."""
    process = subprocess.Popen(
        [sys.executable, "-m", "services.replay", *flags],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    deadline = time.monotonic() + 60
    for line in process.stderr:
        match = re.search(r"replay shard serving address=(\S+)", line)
        if match:
            return process, match.group(1)
        assert time.monotonic() < deadline
    process.wait(timeout=10)
    pytest.fail(f"shard exited with {process.returncode} before serving")


def stop(process: subprocess.Popen[str]) -> int:
    process.send_signal(signal.SIGTERM)
    return process.wait(timeout=30)


def test_sigterm_drains_snapshots_and_a_restart_restores(tmp_path: Path) -> None:
    snapshot = tmp_path / "shard.snapshot"
    flags = ["--capacity", "1000", "--snapshot-path", str(snapshot)]
    # Below the ephemeral range, so no outgoing connection takes the port between the two runs.
    (port,) = pick_free_ports(1)
    process, address = start(*flags, "--port", str(port))
    assert address == f"127.0.0.1:{port}"
    try:
        stub = replay_pb2_grpc.ReplayServiceStub(create_channel(address))
        request = replay_pb2.InsertTransitionsRequest(
            batch=tensor_codec.encode_columns(transitions(0, 40)),
            priorities=tensor_codec.encode(np.ones(40)),
        )
        stub.InsertTransitions(request, timeout=10)
        first_incarnation = stub.GetInfo(replay_pb2.GetInfoRequest(), timeout=10).incarnation
    finally:
        assert stop(process) == 0
    assert snapshot.exists()

    process, address = start(*flags, "--port", str(port))
    try:
        channel = create_channel(address)
        assert is_serving(address)
        probe = subprocess.run(
            [
                sys.executable,
                "-m",
                "services",
                "health",
                address,
                "--service",
                "apexrl.replay.v1.ReplayService",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert (probe.returncode, probe.stdout.strip()) == (0, "SERVING")
        info = replay_pb2_grpc.ReplayServiceStub(channel).GetInfo(replay_pb2.GetInfoRequest(), timeout=10)
        assert (info.size, info.inserts) == (40, 40)
        assert info.incarnation > first_incarnation
    finally:
        assert stop(process) == 0


def kill(process: subprocess.Popen[str]) -> None:
    """kill -9: no drain, no final snapshot."""
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=30) == -signal.SIGKILL
    assert process.stderr is not None
    process.stderr.close()


def test_keys_never_repeat_across_restarts_after_kill_9(tmp_path: Path) -> None:
    snapshot = tmp_path / "shard.snapshot"
    flags = ["--capacity", "1000", "--snapshot-path", str(snapshot), "--port", "0", "--seed", "7"]
    issued: list[np.ndarray] = []  # every key an earlier run handed out
    incarnations: list[int] = []
    # Two runs with no snapshot to restore (the first is killed before writing one), then two
    # restores of the one snapshot the second run saved before it inserted more and was killed.
    for run, has_snapshot in enumerate((False, False, True, True)):
        assert snapshot.exists() == has_snapshot
        process, address = start(*flags)
        try:
            stub = replay_pb2_grpc.ReplayServiceStub(create_channel(address))
            keys = []
            for part in range(2):
                if run == 1 and part == 1:
                    stub.SaveSnapshot(replay_pb2.SaveSnapshotRequest(), timeout=30)
                request = replay_pb2.InsertTransitionsRequest(
                    batch=tensor_codec.encode_columns(transitions(100 * run + 10 * part, 10)),
                    priorities=tensor_codec.encode(np.ones(10)),
                )
                keys.append(tensor_codec.decode(stub.InsertTransitions(request, timeout=10).keys))
            sample = stub.SampleTransitions(replay_pb2.SampleTransitionsRequest(batch_size=2000), timeout=10)
            keys.append(tensor_codec.decode(sample.keys))  # restored items have new keys too
            fresh = np.unique(np.concatenate(keys))
            info = stub.GetInfo(replay_pb2.GetInfoRequest(), timeout=10)
            assert info.size == (30 if has_snapshot else 20) == fresh.size
            if issued:
                old = np.concatenate(issued)
                assert np.intersect1d(old, fresh).size == 0
                update = replay_pb2.UpdatePrioritiesRequest(
                    keys=tensor_codec.encode(old), priorities=tensor_codec.encode(np.full(old.size, 50.0))
                )
                reply = stub.UpdatePriorities(update, timeout=10)
                assert (reply.updated, reply.stale) == (0, old.size)
                after = stub.GetInfo(replay_pb2.GetInfoRequest(), timeout=10)
                assert after.total_priority_mass == info.total_priority_mass == info.size
            issued.append(fresh)
            incarnations.append(info.incarnation)
        finally:
            kill(process)
    assert incarnations == sorted(set(incarnations))


def test_invalid_flags_exit_with_a_message_naming_the_field() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "services.replay", "--capacity", "0", "--priority-exponent", "-1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "capacity: Input should be greater than or equal to 1, got 0" in result.stderr
    assert "priority_exponent: Input should be greater than or equal to 0" in result.stderr


def test_a_stopped_process_refuses_connections_rather_than_hanging() -> None:
    process, address = start("--capacity", "10", "--port", "0")
    assert stop(process) == 0
    stub = replay_pb2_grpc.ReplayServiceStub(create_channel(address))
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetInfo(replay_pb2.GetInfoRequest(), timeout=2)
    assert caught.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    probe = subprocess.run(
        [sys.executable, "-m", "services", "health", address, "--timeout-s", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert probe.returncode == 1
    assert probe.stdout.strip() in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
