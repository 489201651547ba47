"""SIGTERM to each service, started as a real process with real peers: it drains, saves its state, exits 0.

Each service gets the stop grace period its container has in docker-compose.yml (shards 60 s,
the learner 90 s, actors and the evaluator 30 s) and must exit 0 within it. What each one
drains is checked where it can be seen: a shard answers a sample its rate limiter holds and
then writes its snapshot; the learner ends a parameter watch cleanly after writing its
checkpoint; an actor's last transitions (the batch in flight and those not yet sent) all
reach the shard; the evaluator abandons an evaluation under way rather than report a part.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml

from apexrl.learner.v1 import learner_pb2, learner_pb2_grpc
from apexrl.replay.v1 import replay_pb2, replay_pb2_grpc
from services.common import tensor_codec
from services.common.channels import create_channel
from services.common.encoded import decoded
from services.common.local_process import LocalProcess
from services.learner.checkpoint import checkpoints, load_checkpoint
from services.replay.snapshot import load_snapshot
from tests.integration.conftest import transitions
from tests.integration.training_fixtures import SMALL

ROOT = Path(__file__).resolve().parents[2]


def grace_periods() -> dict[str, float]:
    """Each role's stop grace period in docker-compose.yml, in seconds."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    services = compose["services"]
    periods = {}
    roles = {"replay": "replay-0", "learner": "learner", "actor": "actor", "evaluator": "evaluator"}
    for role, service in roles.items():
        period = str(services[service]["stop_grace_period"])
        assert re.fullmatch(r"\d+s", period), f"{service}: stop_grace_period {period!r}"
        periods[role] = float(period.removesuffix("s"))
    return periods


GRACE_S = grace_periods()


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.2)


class Processes:
    """Services started as the launcher starts them; whatever still runs at the end is killed."""

    def __init__(self, log_dir: Path) -> None:
        self._log_dir = log_dir
        self._started: list[LocalProcess] = []

    def start(self, name: str, *args: str) -> LocalProcess:
        process = LocalProcess(list(args), self._log_dir / f"{name}.log")
        self._started.append(process)
        return process

    def close(self) -> None:
        for process in self._started:
            if process.exit_code() is None:
                process.process.kill()
            process.stop(timeout_s=30)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    started = Processes(tmp_path / "logs")
    yield started
    started.close()


@dataclass(frozen=True)
class Stopped:
    exit_code: int
    seconds: float  # from the SIGTERM to the exit
    log: str


def sigterm(process: LocalProcess, role: str, log: Path) -> Stopped:
    """SIGTERM, then the exit, which must come within the role's grace period."""
    grace = GRACE_S[role]
    started = time.monotonic()
    process.terminate()
    try:
        process.process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{role} still running {grace} s after SIGTERM, its grace period")
    seconds = time.monotonic() - started
    code = process.stop()  # the log is complete once its copy thread ends
    print(f"{role} exited with code {code} {seconds:.1f} s after SIGTERM (grace period {grace:g} s)")
    return Stopped(code, seconds, log.read_text(encoding="utf-8"))


def processes_log(tmp_path: Path, name: str) -> Path:
    return tmp_path / "logs" / f"{name}.log"


def line_index(log: str, pattern: str) -> int:
    """The number of the first line matching ``pattern``; fails naming it when none does."""
    for number, line in enumerate(log.splitlines()):
        if re.search(pattern, line):
            return number
    raise AssertionError(f"no log line matches {pattern!r}:\n{log[-3000:]}")


def start_shard(processes: Processes, name: str, *flags: str) -> tuple[LocalProcess, str]:
    shard = processes.start(name, "replay", "--port", "0", "--seed", "3", *flags)
    return shard, shard.wait_for_address()


def start_learner(
    processes: Processes, run_dir: Path, replay: str, preset: str, *overrides: str
) -> tuple[LocalProcess, str]:
    sets = [item for override in overrides for item in ("--set", override)]
    learner = processes.start(
        "learner", "learner", preset, *sets, "--replay", replay, "--run-dir", str(run_dir), "--port", "0"
    )
    return learner, learner.wait_for_address()


def replay_stub(address: str) -> replay_pb2_grpc.ReplayServiceStub:
    return replay_pb2_grpc.ReplayServiceStub(create_channel(address))


def learner_stub(address: str) -> learner_pb2_grpc.LearnerServiceStub:
    return learner_pb2_grpc.LearnerServiceStub(create_channel(address))


def info(stub: replay_pb2_grpc.ReplayServiceStub) -> replay_pb2.GetInfoResponse:
    return stub.GetInfo(replay_pb2.GetInfoRequest(), timeout=10)


def status(stub: learner_pb2_grpc.LearnerServiceStub) -> learner_pb2.GetStatusResponse:
    return stub.GetStatus(learner_pb2.GetStatusRequest(), timeout=10)


# A sample the rate limiter holds this long: well within the shard's 5 s drain, so it is
# answered while the shard stops, and long enough to send the SIGTERM while it waits.
HOLD_S = 4.0


def test_a_shard_answers_the_sample_its_rate_limiter_holds_then_snapshots_and_exits_0(
    processes: Processes, tmp_path: Path
) -> None:
    snapshot = tmp_path / "replay-0.snapshot"
    # The samples-per-insert cursor must stay in 1 x 10 +- 10 = [0, 20].
    shard, address = start_shard(
        processes,
        "replay-0",
        "--capacity",
        "1000",
        "--snapshot-path",
        str(snapshot),
        "--min-size-to-sample",
        "10",
        "--samples-per-insert",
        "1",
        "--samples-per-insert-tolerance",
        "10",
    )
    stub = replay_stub(address)
    insert = replay_pb2.InsertTransitionsRequest(
        batch=tensor_codec.encode_columns(transitions(0, 10)), priorities=tensor_codec.encode(np.ones(10))
    )
    stub.InsertTransitions(insert, timeout=30)  # the cursor at 10
    # 15 more samples would take it to -5: the sample waits for inserts that never come.
    answered: dict[str, float] = {}
    held = stub.SampleTransitions.future(
        replay_pb2.SampleTransitionsRequest(batch_size=15, max_wait_s=HOLD_S), timeout=60
    )

    def on_answer(_call: object) -> None:
        answered["at"] = time.monotonic()

    held.add_done_callback(on_answer)
    wait_for(lambda: info(stub).rate_limiter_waits >= 1, 30, "the rate limiter to hold the sample")
    assert not held.done(), "the held sample was answered before the SIGTERM (a machine far too slow?)"
    terminated = time.monotonic()

    stopped = sigterm(shard, "replay", processes_log(tmp_path, "replay-0"))

    assert stopped.exit_code == 0, stopped.log[-3000:]
    # Answered by the shard, after the SIGTERM and before the exit: not cut off by the stop.
    error = held.exception()
    assert isinstance(error, grpc.RpcError)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
    assert error.details() == f"sample held back by the samples-per-insert rate limiter for {HOLD_S:g} s"
    assert terminated < answered["at"] <= terminated + stopped.seconds
    # Then the snapshot, of every item acknowledged.
    assert (
        line_index(stopped.log, r"stopping signal=SIGTERM")
        < line_index(stopped.log, rf"snapshot saved path={re.escape(str(snapshot))} items=10 ")
        < line_index(stopped.log, r"replay shard stopped")
    )
    state = load_snapshot(snapshot)
    assert (state.rows, state.counters.inserts, state.counters.samples) == (10, 10, 0)
    np.testing.assert_array_equal(np.sort(decoded(state.columns)["action"]), np.arange(10))


@dataclass
class Watch:
    """A WatchParameters stream read on a thread: what it received and how it ended."""

    versions: list[tuple[str, int, int]] = field(default_factory=list)  # lineage, version, tensors
    error: grpc.RpcError | None = None
    ended: threading.Event = field(default_factory=threading.Event)

    def read(self, stub: learner_pb2_grpc.LearnerServiceStub) -> None:
        try:
            for reply in stub.WatchParameters(learner_pb2.WatchParametersRequest(), timeout=300):
                self.versions.append((reply.lineage, reply.version, len(reply.parameters.tensors)))
        except grpc.RpcError as error:
            self.error = error
        finally:
            self.ended.set()


def test_the_learner_checkpoints_ends_a_parameter_watch_cleanly_and_exits_0(
    processes: Processes, tmp_path: Path
) -> None:
    _, replay = start_shard(processes, "replay-0", "--capacity", "20000")
    run_dir = tmp_path / "run"
    # SMALL checkpoints once an hour: the one checkpoint is the one the stop writes.
    learner, address = start_learner(processes, run_dir, replay, "cartpole", *SMALL)
    processes.start("actor-0", "actor", "--learner", address)
    stub = learner_stub(address)
    wait_for(lambda: status(stub).updates >= 30, 180, "30 updates")
    watch = Watch()
    threading.Thread(target=watch.read, args=(stub,), daemon=True).start()
    wait_for(lambda: len(watch.versions) >= 2, 60, "two versions on the watch")
    before = status(stub)
    assert not checkpoints(run_dir / "checkpoints")

    stopped = sigterm(learner, "learner", processes_log(tmp_path, "learner"))

    assert stopped.exit_code == 0, stopped.log[-3000:]
    assert watch.ended.wait(30), "the watch did not end with the learner"
    # The stream ended with OK, every message whole: not cut off mid-stream.
    assert watch.error is None, watch.error
    lineages = {lineage for lineage, _, _ in watch.versions}
    assert lineages == {before.parameter_lineage}
    versions = [version for _, version, _ in watch.versions]
    assert versions == sorted(set(versions))
    assert all(tensors > 0 for _, _, tensors in watch.versions)
    (checkpoint,) = checkpoints(run_dir / "checkpoints")
    _, counters, _ = load_checkpoint(checkpoint)
    assert counters.updates >= before.updates
    assert counters.parameter_version >= max(versions[-1], before.parameter_version)
    assert counters.environment_steps >= before.environment_steps > 0
    assert checkpoint.name == f"checkpoint-{counters.updates:012d}.safetensors"
    assert (
        line_index(stopped.log, r"stopping signal=SIGTERM")
        < line_index(stopped.log, rf"checkpoint saved path=\S+ updates={counters.updates}$")
        < line_index(stopped.log, r"learner stopped")
    )
    assert (run_dir / "metrics.csv").is_file()
    # No evaluator ran, so no evaluation: the learner draws no curve of nothing.
    assert not (run_dir / "learning_curve.png").exists()
    assert "Traceback" not in stopped.log


def test_an_actor_delivers_every_transition_it_made_then_exits_0(
    processes: Processes, tmp_path: Path
) -> None:
    """Each environment step makes one n-step transition (those still open are flushed on stop), so
    the shard, written by this actor only, must hold exactly as many as the actor took steps."""
    _, replay = start_shard(processes, "replay-0", "--capacity", "100000")
    _, address = start_learner(processes, tmp_path / "run", replay, "cartpole", *SMALL)
    actor = processes.start("actor-0", "actor", "--learner", address)
    shard = replay_stub(replay)
    wait_for(lambda: info(shard).inserts >= 500, 180, "500 transitions in the shard")

    stopped = sigterm(actor, "actor", processes_log(tmp_path, "actor-0"))

    assert stopped.exit_code == 0, stopped.log[-3000:]
    steps = re.findall(r"actor stopped steps=(\d+)", stopped.log)
    assert len(steps) == 1, stopped.log[-3000:]
    assert info(shard).inserts == int(steps[0])
    assert "insert failed" not in stopped.log
    assert "Traceback" not in stopped.log


def test_the_evaluator_abandons_an_evaluation_under_way_and_exits_0(
    processes: Processes, tmp_path: Path
) -> None:
    """Pendulum episodes made ten million steps long: an evaluation would take hours, so an exit
    within the grace period is one from the middle of it, and nothing of it may be reported."""
    _, replay = start_shard(processes, "replay-0", "--capacity", "1000")
    _, address = start_learner(
        processes,
        tmp_path / "run",
        replay,
        "pendulum",
        "general.device=cpu",
        "general.evaluation_episodes=2",
        "environment.options.max_episode_steps=10000000",
    )
    evaluator = processes.start("evaluator", "evaluator", "--learner", address)
    stub = learner_stub(address)

    def evaluating() -> bool:
        # An evaluator's heartbeat, sent every 10 s while it plays, names the version it plays.
        clients = status(stub).actors
        return any(
            client.role == learner_pb2.CLIENT_ROLE_EVALUATOR and client.parameter_version == 1
            for client in clients
        )

    wait_for(evaluating, 120, "the evaluator to be playing version 1")

    stopped = sigterm(evaluator, "evaluator", processes_log(tmp_path, "evaluator"))

    assert stopped.exit_code == 0, stopped.log[-3000:]
    assert not status(stub).HasField("latest_evaluation")
    assert "evaluated version" not in stopped.log
    assert "Traceback" not in stopped.log
