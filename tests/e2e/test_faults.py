"""``apexrl run`` survives kill -9 of an actor, a replay shard and the learner, in turn, while it trains.

The run is started as a user starts it (``python -m services run``); the test finds each
child's process (its parent is the launcher, its stdout the child's log), kills it with
SIGKILL and watches the run through the learner's GetStatus and GetParameters, the shards'
GetInfo, the run folder's logs, snapshots, checkpoints and metrics.csv:

- the actor is restarted by the launcher and registers again under a new id;
- the shard is restarted from its last snapshot: every transition it acknowledged before that
  snapshot began is there again, and every one inserted since is held beside them;
- the learner is restarted from its last checkpoint: updates, environment steps and elapsed
  time continue from it, parameters continue from its network, and the versions it publishes
  again carry a new lineage, so no (lineage, version) pair ever names two sets of parameters;
- training goes on after each fault, and the evaluation return does not fall back to where
  the run started.
"""

from __future__ import annotations

import ast
import contextlib
import csv
import hashlib
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pytest

from apexrl.common.v1 import tensor_pb2
from apexrl.learner.v1 import learner_pb2, learner_pb2_grpc
from apexrl.replay.v1 import replay_pb2, replay_pb2_grpc
from services.common import tensor_codec
from services.common.channels import create_channel
from services.learner.checkpoint import Restored, latest_checkpoint
from services.replay.snapshot import load_snapshot

ROOT = Path(__file__).resolve().parents[2]
WIDE_CONSOLE = {**os.environ, "COLUMNS": "1000"}
OVERRIDES = (
    "general.device=cpu",
    "general.seed=0",
    # The launcher snapshots the shards as often as the learner checkpoints.
    "general.checkpoint_interval_s=2",
    # The test ends the run (with SIGTERM) once every fault is survived.
    "general.solved_return=null",
    "general.max_wall_time_s=900",
    # 500,000 items a shard: none is evicted, so every transition can be counted.
    "algorithm.replay_capacity=1000000",
)
CHILDREN = ("replay-0", "replay-1", "learner", "evaluator", "actor-0", "actor-1")
TRAINED_UPDATES = 1500  # trained this far before the first fault
UPDATES_BETWEEN_FAULTS = 300


def wait_for(
    condition: Callable[[], bool],
    timeout_s: float,
    what: str,
    alive: Callable[[], None] = lambda: None,
    poll_s: float = 0.3,
) -> None:
    """Waits for ``condition``; ``alive`` raises at once if what is awaited can no longer come."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        alive()
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(poll_s)


def parameters_digest(parameters: tensor_pb2.NamedTensors) -> str:
    arrays = tensor_codec.decode_named(parameters)
    digest = hashlib.sha256()
    for name in sorted(arrays):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(arrays[name]).tobytes())
    return digest.hexdigest()


class Ledger:
    """Every (lineage, version) received, with the digest of its parameters; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.digests: dict[tuple[str, int], str] = {}
        self.conflicts: list[tuple[str, int]] = []  # pairs received with two sets of parameters

    def record(self, lineage: str, version: int, parameters: tensor_pb2.NamedTensors) -> None:
        digest = parameters_digest(parameters)
        with self._lock:
            if self.digests.setdefault((lineage, version), digest) != digest:
                self.conflicts.append((lineage, version))

    def versions(self, lineage: str) -> dict[int, str]:
        with self._lock:
            return {version: digest for (held, version), digest in self.digests.items() if held == lineage}


class VersionWatch:
    """A WatchParameters stream held open for the whole run (reopened while the learner is down)."""

    def __init__(self, address: str, ledger: Ledger) -> None:
        self._stub = learner_pb2_grpc.LearnerServiceStub(create_channel(address))
        self._ledger = ledger
        self._stop = threading.Event()
        self._call: grpc.RpcContext | None = None
        self._thread = threading.Thread(target=self._watch, name="version-watch", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                stream = self._stub.WatchParameters(learner_pb2.WatchParametersRequest(), timeout=900)
                self._call = stream
                for reply in stream:
                    self._ledger.record(reply.lineage, reply.version, reply.parameters)
            except grpc.RpcError:
                self._stop.wait(0.1)

    def close(self) -> None:
        self._stop.set()
        if self._call is not None:
            self._call.cancel()
        self._thread.join(timeout=30)


@dataclass
class Observer:
    """The learner as a client sees it: polled status and parameters, and every version watched."""

    address: str
    alive: Callable[[], None]
    statuses: list[learner_pb2.GetStatusResponse] = field(default_factory=list)
    ledger: Ledger = field(default_factory=Ledger)
    # The first parameters pulled of each lineage.
    first_parameters: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    # Every evaluation the status reported: (lineage at the time, version, updates, mean return).
    evaluations: list[tuple[str, int, int, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stub = learner_pb2_grpc.LearnerServiceStub(create_channel(self.address))

    def poll(self) -> learner_pb2.GetStatusResponse | None:
        """A status and the current parameters; None while the learner is down."""
        try:
            status = self._stub.GetStatus(learner_pb2.GetStatusRequest(), timeout=5)
            reply = self._stub.GetParameters(learner_pb2.GetParametersRequest(), timeout=5)
        except grpc.RpcError as error:
            if error.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise
            return None
        self.statuses.append(status)
        self.ledger.record(reply.lineage, reply.version, reply.parameters)
        if reply.lineage not in self.first_parameters:
            self.first_parameters[reply.lineage] = tensor_codec.decode_named(reply.parameters)
        if status.HasField("latest_evaluation"):
            evaluation = status.latest_evaluation
            seen = (status.parameter_lineage, evaluation.parameter_version)
            if seen not in {(lineage, version) for lineage, version, _, _ in self.evaluations}:
                self.evaluations.append((*seen, evaluation.updates, evaluation.mean_return))
        return status

    def wait(
        self, condition: Callable[[learner_pb2.GetStatusResponse], bool], timeout_s: float, what: str
    ) -> learner_pb2.GetStatusResponse:
        reached: list[learner_pb2.GetStatusResponse] = []

        def check() -> bool:
            status = self.poll()
            if status is not None and condition(status):
                reached.append(status)
            return bool(reached)

        wait_for(check, timeout_s, what, self.alive)
        return reached[0]

    def current(self) -> learner_pb2.GetStatusResponse:
        return self.wait(lambda _status: True, 60, "the learner's status")


def actor_ids(status: learner_pb2.GetStatusResponse) -> set[int]:
    return {client.actor_id for client in status.actors if client.role == learner_pb2.CLIENT_ROLE_ACTOR}


class Run:
    """``apexrl run`` in a subprocess and its run folder."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.logs = run_dir / "logs"
        run_dir.mkdir(parents=True)
        self._output = open(run_dir.parent / "launcher-output.txt", "w", encoding="utf-8")  # noqa: SIM115
        arguments = [item for override in OVERRIDES for item in ("--set", override)]
        arguments += ["--actors", "2", "--shards", "2", "--run-dir", str(run_dir)]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "services", "run", *arguments],
            cwd=ROOT,
            stdout=self._output,
            stderr=subprocess.STDOUT,
            text=True,
            env=WIDE_CONSOLE,
        )

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""

    def address(self, name: str) -> str:
        found: list[str] = []

        def served() -> bool:
            found.extend(re.findall(r"serving address=(\S+)", self.log(name)))
            return bool(found)

        self.wait(served, 180, f"{name} to serve")
        return found[0]

    def children(self) -> dict[int, str]:
        """The launcher's processes: pid -> the log their stdout goes to.

        They are its children (the shards) and its zygote's (the roles forked from it).
        """
        processes = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                stdout = os.readlink(entry / "fd" / "1")
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile, or not ours to read
            processes[int(entry.name)] = (parent, stdout)
        launcher = self.process.pid
        parents = {launcher} | {pid for pid, (parent, _) in processes.items() if parent == launcher}
        return {pid: stdout for pid, (parent, stdout) in processes.items() if parent in parents}

    def pids(self, name: str) -> list[int]:
        """The live processes of child ``name``: the launcher's children whose stdout is its log."""
        log = str(self.logs / f"{name}.log")
        return [pid for pid, stdout in self.children().items() if stdout == log]

    def pid(self, name: str) -> int:
        """The live process of child ``name``."""
        pids = self.pids(name)
        assert len(pids) == 1, f"processes of {name}: {pids}"
        return pids[0]

    def describe(self, name: str) -> str:
        """What the child ``name`` is doing, for a failure's message: its command line and state."""
        log = str(self.logs / f"{name}.log")
        pids = [pid for pid, stdout in self.children().items() if stdout == log]
        if len(pids) != 1:
            return f"{name}: processes {pids}"
        entry = Path("/proc") / str(pids[0])
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")[:4]
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            return f"{name}: pid {pids[0]} {command} state {state} in {(entry / 'wchan').read_text()!r}"
        except OSError as error:
            return f"{name}: {error}"

    def kill(self, name: str) -> int:
        """kill -9 of child ``name``; returns its pid once the launcher has started another."""
        pid = self.pid(name)
        restarts = self.log("launcher").count(f"restarting child={name} ")
        os.kill(pid, signal.SIGKILL)
        self.wait(
            lambda: self.log("launcher").count(f"restarting child={name} exit_code=-9 ") > restarts,
            120,
            f"the launcher to restart {name}",
        )
        # The launcher says so before it starts the new process, which points its standard
        # streams at its log only once it runs (a forked child does so itself).
        self.wait(lambda: self.pids(name) not in ([], [pid]), 60, f"the new {name} process")
        assert self.process.poll() is None, self.output()
        return pid

    def alive(self) -> None:
        """Fails at once, with the launcher's own words, once the run has ended."""
        code = self.process.poll()
        if code is not None:
            raise AssertionError(f"the run ended with exit code {code}:\n{self.output()}")

    def wait(self, condition: Callable[[], bool], timeout_s: float, what: str) -> None:
        wait_for(condition, timeout_s, what, self.alive)

    def output(self) -> str:
        self._output.flush()
        return (self.run_dir.parent / "launcher-output.txt").read_text(encoding="utf-8")[-3000:]

    def stop(self) -> int:
        """SIGTERM, as Ctrl-C would: the run stops every part in order."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=180)
        finally:
            self._output.close()

    def kill_all(self) -> None:
        """If the test failed midway: kill -9 the launcher and every process under it, by pid.

        (Children are meant to die with the launcher, PR_SET_PDEATHSIG, but a restarted learner
        and actor were once seen to outlive it.)
        """
        if self.process.poll() is None:
            for pid in self.descendants():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.process.kill()
            self.process.wait(timeout=60)
        if not self._output.closed:
            self._output.close()

    def descendants(self) -> list[int]:
        """Every process under the launcher (children, and theirs: the learner's feed process)."""
        parents: dict[int, int] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
        found, frontier = [], [self.process.pid]
        while frontier:
            below = [pid for pid, parent in parents.items() if parent in frontier]
            found += below
            frontier = below
        return found


def shard_info(address: str) -> replay_pb2.GetInfoResponse:
    stub = replay_pb2_grpc.ReplayServiceStub(create_channel(address))
    return stub.GetInfo(replay_pb2.GetInfoRequest(), timeout=10)


def relative_distance(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    assert a.keys() == b.keys()
    difference = math.sqrt(sum(float(np.sum((a[name] - b[name]) ** 2)) for name in a))
    return difference / math.sqrt(sum(float(np.sum(b[name] ** 2)) for name in b))


def checkpoint_network(restored: Restored) -> dict[str, np.ndarray]:
    """The actors' network (the online Q network) as the checkpoint holds it."""
    prefix = "online."
    return {
        name.removeprefix(prefix): tensor.numpy()
        for name, tensor in restored.tensors.items()
        if name.startswith(prefix)
    }


def first_evaluation_return(run: Run) -> float:
    """The run's first evaluation, of the network it started with: its start level."""
    found = re.search(r"evaluated version=(\d+) mean_return=(\S+)", run.log("evaluator"))
    assert found is not None
    assert int(found.group(1)) <= 20, "the first evaluation came after training had started"
    return float(found.group(2))


@dataclass
class Report:
    """The figures of each fault, printed at the end (pytest -s) and in a failure."""

    lines: list[str] = field(default_factory=list)

    def add(self, line: str) -> None:
        self.lines.append(line)
        print(line, flush=True)


def actor_starts(run: Run) -> int:
    """How many times actor-0 has logged that it runs (after registering and building its environments)."""
    return len(re.findall(r"actor running actor_id=", run.log("actor-0")))


def kill_an_actor(run: Run, observer: Observer, report: Report) -> None:
    before = observer.wait(lambda status: len(actor_ids(status)) == 2, 120, "two actors registered")
    run.wait(lambda: actor_starts(run) >= 1, 120, "actor-0 running")
    started = actor_starts(run)
    killed = run.kill("actor-0")
    assert run.pid("actor-0") != killed
    after = observer.wait(
        lambda status: (
            len(actor_ids(status)) >= 2
            and max(actor_ids(status)) > max(actor_ids(before))
            and status.updates >= before.updates + UPDATES_BETWEEN_FAULTS
        ),
        180,
        f"the new actor to register and {UPDATES_BETWEEN_FAULTS} more updates",
    )
    assert after.parameter_lineage == before.parameter_lineage  # the learner went on untouched
    # The new process registers before it logs that it runs; on a loaded machine the learner
    # can count its registration and the updates first.
    run.wait(lambda: actor_starts(run) == started + 1, 120, "the restarted actor-0 running")
    report.add(
        f"actor-0 killed (pid {killed}): actor ids {sorted(actor_ids(before))} -> "
        f"{sorted(actor_ids(after))}, updates {before.updates} -> {after.updates}"
    )


def kill_a_shard(run: Run, observer: Observer, report: Report) -> None:
    address = run.address("replay-0")
    snapshot = run.run_dir / "replay-0.snapshot"
    run.wait(lambda: "snapshot saved" in run.log("replay-0"), 60, "a snapshot of replay-0")
    before = observer.current()
    acknowledged = shard_info(address)
    killed = run.kill("replay-0")
    # What the shard comes back with: the last snapshot it finished before the kill.
    state = load_snapshot(snapshot)
    rows, inserts = state.rows, state.counters.inserts
    saves = re.findall(r"snapshot saved path=(\S+) items=(\d+) ", run.log("replay-0"))
    assert saves[-1] == (str(snapshot), str(rows)), "the file is not the last snapshot logged"
    # Every transition acknowledged before the snapshot began is in it (none was evicted).
    assert 0 < rows == inserts
    run.wait(
        lambda: f"snapshot loaded path={snapshot} items={rows} " in run.log("replay-0"),
        120,
        "replay-0 to load its snapshot",
    )
    restored = shard_info(address)
    # Nothing acknowledged before the snapshot is lost, and every insert since is held beside it.
    assert restored.inserts >= inserts
    assert restored.size == rows + (restored.inserts - inserts)
    assert restored.incarnation > acknowledged.incarnation
    after = observer.wait(
        lambda status: (
            status.updates >= before.updates + UPDATES_BETWEEN_FAULTS and status.replay_shards_up == 2
        ),
        180,
        f"{UPDATES_BETWEEN_FAULTS} more updates from both shards",
    )
    assert after.parameter_lineage == before.parameter_lineage
    report.add(
        f"replay-0 killed (pid {killed}): {acknowledged.inserts} inserts acknowledged when last asked; "
        f"its last snapshot held {rows} rows = its {inserts} inserts; restarted with size "
        f"{restored.size}, inserts {restored.inserts}; updates {before.updates} -> {after.updates}"
    )


@dataclass(frozen=True)
class LearnerRestart:
    checkpoint: Restored
    old_lineage: str
    new_lineage: str


def kill_the_learner(run: Run, observer: Observer, report: Report) -> LearnerRestart:
    checkpoints = run.run_dir / "checkpoints"
    before = observer.current()

    def just_past_a_checkpoint(status: learner_pb2.GetStatusResponse) -> bool:
        """A checkpoint written in the last second, since the faults above, and five versions
        published after it: the kill lands before the next checkpoint (2 s apart), and the
        restarted learner publishes some version numbers again."""
        found = latest_checkpoint(checkpoints)
        return (
            found is not None
            and found.counters.updates > before.updates
            and time.time() - found.path.stat().st_mtime < 1.0
            and status.parameter_version >= found.counters.parameter_version + 5
        )

    last = observer.wait(just_past_a_checkpoint, 120, "five versions past a checkpoint")
    killed = run.kill("learner")
    restored = latest_checkpoint(checkpoints)
    assert restored is not None
    counters = restored.counters
    resumed = (
        f"resumed from checkpoint updates={counters.updates} version={counters.parameter_version} "
        f"environment_steps={counters.environment_steps}"
    )
    run.wait(lambda: resumed in run.log("learner"), 120, f"the learner to log '{resumed}'")
    first = observer.wait(
        lambda status: status.parameter_lineage != last.parameter_lineage, 120, "the restarted learner"
    )
    # The counters continue from the checkpoint, never from zero.
    assert first.updates >= counters.updates
    assert first.elapsed_s >= counters.elapsed_s
    assert first.parameter_version > counters.parameter_version
    # The trainer's figures (environment steps, replay size and capacity) read 0 in a status
    # answered before its first refresh, right after the start: the steps are checked on the
    # first refreshed status (the replay's capacity is known then).
    refreshed = observer.wait(
        lambda status: status.parameter_lineage == first.parameter_lineage and status.replay_capacity > 0,
        60,
        "the restarted learner's first refreshed status",
    )
    assert refreshed.environment_steps >= counters.environment_steps
    # The parameters continue from the checkpoint's network: much nearer to it than to the
    # network the run started with (which a learner starting afresh would serve, same seed).
    network = checkpoint_network(restored)
    served = observer.first_parameters[first.parameter_lineage]
    started = observer.first_parameters[observer.statuses[0].parameter_lineage]
    from_checkpoint = relative_distance(served, network)
    trained = relative_distance(started, network)
    assert from_checkpoint < trained / 4, (from_checkpoint, trained)
    # Actors and the evaluator register again, under ids the checkpointed learner never gave out.
    again = observer.wait(
        lambda status: (
            len(status.actors) == 3
            and min(client.actor_id for client in status.actors) >= counters.next_actor_id
            and status.updates >= first.updates + UPDATES_BETWEEN_FAULTS
        ),
        180,
        f"two actors and the evaluator registered again and {UPDATES_BETWEEN_FAULTS} more updates",
    )
    report.add(
        f"learner killed (pid {killed}) at updates {last.updates}, version {last.parameter_version}, "
        f"lineage {last.parameter_lineage[:8]}; checkpoint: updates {counters.updates}, version "
        f"{counters.parameter_version}, environment steps {counters.environment_steps}, elapsed "
        f"{counters.elapsed_s:.1f} s; restarted: updates {first.updates}, version {first.parameter_version}, "
        f"lineage {first.parameter_lineage[:8]}, elapsed {first.elapsed_s:.1f} s, environment steps "
        f"{first.environment_steps} then {refreshed.environment_steps}; served parameters "
        f"{from_checkpoint:.3f} from the checkpoint's network, which is {trained:.3f} from the first; "
        f"clients {sorted(client.actor_id for client in again.actors)}; updates -> {again.updates}"
    )
    return LearnerRestart(restored, last.parameter_lineage, first.parameter_lineage)


def check_versions(observer: Observer, restart: LearnerRestart, report: Report) -> None:
    """Version numbers the restarted learner publishes again carry its new lineage, and other parameters."""
    ledger = observer.ledger
    assert not ledger.conflicts, (
        f"(lineage, version) pairs received with two sets of parameters: {ledger.conflicts}"
    )
    assert {lineage for lineage, _ in ledger.digests} == {restart.old_lineage, restart.new_lineage}
    old, new = ledger.versions(restart.old_lineage), ledger.versions(restart.new_lineage)
    checkpointed = restart.checkpoint.counters.parameter_version
    # The killed learner had published past its checkpoint; the restarted one starts after the
    # checkpoint and went past those, so each number between was published under both lineages.
    assert max(old) > checkpointed
    assert checkpointed < min(new)
    assert max(new) > max(old)
    repeated = sorted(old.keys() & new.keys())
    assert all(old[version] != new[version] for version in repeated)
    report.add(
        f"versions received: {len(old)} of lineage {restart.old_lineage[:8]} ({min(old)}..{max(old)}), "
        f"{len(new)} of lineage {restart.new_lineage[:8]} ({min(new)}..{max(new)}); published under "
        f"both: {checkpointed + 1}..{max(old)}, {len(repeated)} of them received under both, each time "
        "with other parameters; no pair with two"
    )


def check_evaluations(run: Run, observer: Observer, restart: LearnerRestart, report: Report) -> None:
    start = first_evaluation_return(run)
    # The start level: a network that has not learned (CartPole's pole falls in about ten steps).
    assert start < 50, f"the first evaluation returned {start}"
    floor = max(50.0, 4 * start)
    observer.wait(
        lambda _status: sum(lineage == restart.new_lineage for lineage, *_ in observer.evaluations) >= 3,
        180,
        "three evaluations after the learner's restart",
    )
    after = [
        (version, updates, value)
        for lineage, version, updates, value in observer.evaluations
        if lineage == restart.new_lineage
    ][:3]
    assert all(updates >= restart.checkpoint.counters.updates for _, updates, _ in after)
    assert max(value for _, _, value in after) >= floor, (start, after)
    report.add(f"evaluation returns: start {start:.1f}; first after the learner's restart {after}")


def check_metrics(run: Run, restart: LearnerRestart) -> None:
    """metrics.csv: the counters fall back at most once, at the restart, and then only to the checkpoint."""
    with open(run.run_dir / "metrics.csv", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    counters = restart.checkpoint.counters
    for column, floor in (
        ("updates", counters.updates),
        ("elapsed_s", counters.elapsed_s),
        ("environment_steps", counters.environment_steps),
    ):
        values = [float(row[column]) for row in rows]
        drops = [index for index in range(1, len(values)) if values[index] < values[index - 1]]
        assert len(drops) <= 1, (column, drops)
        assert all(values[index] >= floor for index in drops), (column, [values[i] for i in drops], floor)
    assert float(rows[-1]["updates"]) > counters.updates


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_local_run_survives_kill_9_of_an_actor_a_shard_and_the_learner(tmp_path: Path) -> None:
    run = Run(tmp_path / "run")
    report = Report()
    watch: VersionWatch | None = None
    try:
        observer = Observer(run.address("learner"), run.alive)
        watch = VersionWatch(observer.address, observer.ledger)
        observer.wait(
            lambda status: status.updates >= TRAINED_UPDATES,
            300,
            f"{TRAINED_UPDATES} updates before the faults",
        )
        kill_an_actor(run, observer, report)
        kill_a_shard(run, observer, report)
        restart = kill_the_learner(run, observer, report)
        check_evaluations(run, observer, restart, report)
        watch.close()
        check_versions(observer, restart, report)
        code = run.stop()
        assert code == 130, run.output()  # stopped, as by Ctrl-C
        check_metrics(run, restart)
        stopped = re.search(r"run stopped seconds=\S+ exit_codes=(\{.*\})", run.log("launcher"))
        assert stopped is not None
        codes = ast.literal_eval(stopped.group(1))
        assert codes == dict.fromkeys(codes, 0), codes  # every part, restarted or not, stopped cleanly
        assert len(codes) == 6
    except AssertionError as error:
        survived = "\n".join(report.lines)
        # Where a part did not come back, say what its process is doing.
        children = "" if run.process.poll() is not None else "\n".join(map(run.describe, CHILDREN))
        raise AssertionError(f"{error}\nsurvived so far:\n{survived}\n{children}") from error
    finally:
        if watch is not None:
            watch.close()
        run.kill_all()
