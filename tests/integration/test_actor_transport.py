"""The actor's transport process against a real shard and learner: what it inserts arrives byte for byte,
pulls are the learner's own replies, failures come back as the calls' own errors, and it ends with
the acting process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from apexrl.learner.v1 import learner_pb2
from services.actor.learner_client import parameters_request
from services.actor.transport import CallError, ReplaySettings, Transport, TransportError
from services.common.encoded import EncodedItems, decompress
from services.common.security import SecuritySettings
from services.common.sharded_replay import InsertRefusedError
from services.launcher.ports import pick_free_ports
from services.learner.learner import Learner
from tests.integration.conftest import ShardFactory

TIMEOUT_S = 10.0


def gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie not yet reaped counts as exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state == "Z"


def wait_until_gone(pid: int, timeout_s: float = TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not gone(pid):
        assert time.monotonic() < deadline, f"process {pid} is still running"
        time.sleep(0.05)


@pytest.fixture
def transport() -> Iterator[Transport]:
    (port,) = pick_free_ports(1)  # nothing listens there: a learner that is not up
    started = Transport(f"127.0.0.1:{port}", SecuritySettings(), timeout_s=2.0)
    yield started
    started.close()


def frames(count: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 8, size=(count, 84, 84, 4), dtype=np.uint8)


def test_inserted_columns_arrive_byte_for_byte_with_their_priorities(
    start_shard: ShardFactory, transport: Transport
) -> None:
    shard = start_shard(capacity=100)
    transport.configure_replay(ReplaySettings([shard.address], 0, ("observation",), 0.0))
    observation = frames(5)
    columns = {
        "observation": observation,
        "action": np.array([3, 1, 4, 1, 5], dtype=np.int64),
        "reward": np.array([0.5, -1.0, 0.0, 2.25, 1e-7], dtype=np.float32),
        "discount": np.array([0.99, 0.0, 0.99, 0.98, 0.97], dtype=np.float32),
        # A column that is not C-contiguous where it comes from is sent as its values.
        "next_observation": np.asfortranarray(observation[:, ::-1].copy()),
    }
    priorities = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    assert transport.insert(columns, priorities).result() is None
    streamed = shard.metrics.registry.get_sample_value(
        "apexrl_replay_request_seconds_count", {"method": "InsertStream"}
    )
    assert streamed == 1  # off the acting process, inserts go over the shard's stream

    state = shard.table.export_state()
    stored = state.columns
    compressed = stored["observation"]
    assert isinstance(compressed, EncodedItems)  # it travelled compressed, and is kept so
    assert decompress(compressed).tobytes() == observation.tobytes()
    for name in ("action", "reward", "discount", "next_observation"):
        plain = stored[name]
        assert isinstance(plain, np.ndarray)
        assert plain.dtype == columns[name].dtype
        assert plain.tobytes() == np.ascontiguousarray(columns[name]).tobytes()
    exponent = shard.table.info().priority_exponent
    np.testing.assert_allclose(state.priority_masses, priorities.astype(np.float32) ** exponent, rtol=1e-6)


def test_a_refused_insert_is_the_shards_refusal_and_the_next_one_goes_on(
    start_shard: ShardFactory, transport: Transport
) -> None:
    shard = start_shard(capacity=100)
    transport.configure_replay(ReplaySettings([shard.address], 0, (), 0.0))
    good = {"reward": np.ones(4, dtype=np.float32)}
    transport.insert(good, np.ones(4)).result()
    with pytest.raises(InsertRefusedError) as refusal:
        transport.insert({"reward": np.ones(4, dtype=np.float64)}, np.ones(4)).result()
    assert refusal.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (refusal.value.shard, refusal.value.address) == (0, shard.address)
    assert "table signature" in refusal.value.details()
    transport.insert(good, np.ones(4)).result()
    assert shard.table.info().size == 8


def test_one_insert_at_a_time(start_shard: ShardFactory, transport: Transport) -> None:
    transport.configure_replay(ReplaySettings([start_shard(capacity=100).address], 0, (), 0.0))
    first = transport.insert({"reward": np.ones(4, dtype=np.float32)}, np.ones(4))
    with pytest.raises(RuntimeError, match="already in flight"):
        transport.insert({"reward": np.ones(4, dtype=np.float32)}, np.ones(4))
    first.result()


def test_a_pull_is_the_learners_reply_and_an_unknown_actor_its_not_found(learner: Learner) -> None:
    transport = Transport(learner.address, SecuritySettings(), timeout_s=TIMEOUT_S)
    try:
        first = transport.pull(parameters_request(0, 0).SerializeToString()).result()
        assert first is not None
        reply = learner_pb2.GetParametersResponse.FromString(first)
        assert reply.version >= 1
        assert not reply.up_to_date
        assert reply.parameters.tensors

        again = transport.pull(
            parameters_request(reply.version, 0, known_lineage=reply.lineage).SerializeToString()
        ).result()
        assert again is not None
        assert learner_pb2.GetParametersResponse.FromString(again).up_to_date

        with pytest.raises(CallError) as unknown:
            transport.pull(parameters_request(0, 12345).SerializeToString()).result()
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        transport.close()


def test_a_pull_from_a_learner_that_is_not_up_fails_with_its_status(transport: Transport) -> None:
    with pytest.raises(CallError) as failure:
        transport.pull(parameters_request(0, 0).SerializeToString()).result()
    assert failure.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def test_stop_signals_are_left_to_the_acting_process_and_closing_ends_the_child(
    start_shard: ShardFactory, transport: Transport
) -> None:
    # Out of the acting process's session, so out of reach of its terminal's Ctrl-C.
    assert os.getsid(transport.pid) != os.getsid(0)
    transport.configure_replay(ReplaySettings([start_shard(capacity=100).address], 0, (), 0.0))
    transport.insert({"reward": np.ones(4, dtype=np.float32)}, np.ones(4)).result()  # it is up
    os.kill(transport.pid, signal.SIGINT)
    os.kill(transport.pid, signal.SIGTERM)
    transport.insert({"reward": np.ones(4, dtype=np.float32)}, np.ones(4)).result()
    assert not gone(transport.pid)
    transport.close()
    assert gone(transport.pid)


def test_a_child_that_died_is_named_at_the_next_call(start_shard: ShardFactory, transport: Transport) -> None:
    transport.configure_replay(ReplaySettings([start_shard(capacity=100).address], 0, (), 0.0))
    os.kill(transport.pid, signal.SIGKILL)
    wait_until_gone(transport.pid)
    with pytest.raises(TransportError, match=f"pid {transport.pid}"):
        transport.insert({"reward": np.ones(4, dtype=np.float32)}, np.ones(4)).result()


def test_the_child_ends_when_the_acting_process_is_killed(tmp_path: Path) -> None:
    (port,) = pick_free_ports(1)
    script = textwrap.dedent(
        f"""
        import sys, time
        from services.actor.transport import Transport
        from services.common.security import SecuritySettings
        transport = Transport("127.0.0.1:{port}", SecuritySettings(), timeout_s=2.0)
        print(transport.pid, flush=True)
        time.sleep(60)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert not gone(child)
        parent.kill()
        parent.wait()
        wait_until_gone(child)
    finally:
        parent.kill()
        parent.wait()


def test_an_insert_the_child_cannot_make_is_named_and_the_child_goes_on(
    start_shard: ShardFactory, transport: Transport
) -> None:
    with pytest.raises(TransportError, match="an insert before the replay was configured"):
        transport.insert({"reward": np.ones(4, dtype=np.float32)}, np.ones(4)).result()
    shard = start_shard(capacity=100)
    transport.configure_replay(ReplaySettings([shard.address], 0, ("observation",), 0.0))
    with pytest.raises(TransportError, match=r"could not make the insert: KeyError\('observation'\)"):
        transport.insert({"reward": np.ones(4, dtype=np.float32)}, np.ones(4)).result()
    columns = {"reward": np.ones(4, dtype=np.float32), "observation": frames(4)}
    transport.insert(columns, np.ones(4)).result()
    assert shard.table.info().size == 4
