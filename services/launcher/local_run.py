"""``apexrl run``: K shards, the learner, the evaluator and N actors as supervised local processes."""

from __future__ import annotations

import functools
import importlib
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import grpc
import yaml

from apexrl.learner.v1 import learner_pb2, learner_pb2_grpc
from services.algorithms.experiment import ExperimentConfig
from services.common.channels import create_channel
from services.launcher.children import Child, check_children
from services.launcher.ports import pick_free_ports
from services.launcher.prechecks import PrecheckError
from services.launcher.progress_view import ProgressView, status_row
from services.launcher.zygote import Zygote

logger = logging.getLogger(__name__)

# What draws the learning curve (matplotlib), imported ahead of the stop.
_CURVES = "services.learner.learning_curve"
ACTOR_NICENESS = 10
EVALUATOR_NICENESS = 5


@dataclass(frozen=True)
class RunOutcome:
    """How a run ended and where its results are."""

    run_dir: Path
    reason: str
    status: learner_pb2.GetStatusResponse | None
    interrupted: bool


# The run folder's folder of the actors' datasets (apexrl run --record-actors).
DATASETS = "datasets"


class _CurvesImport:
    """The launcher draws the learning curve at the end: matplotlib (about a second of CPU) is
    imported in the background once the learner has updated, so the stop does not wait for
    it; not sooner, where it would compete with the start for the CPU and delay the first update."""

    def __init__(self) -> None:
        self._first_seen: int | None = None  # the updates of a resumed run when it started
        self._started = False

    def saw(self, updates: int) -> None:
        """The learner's update count, as each status reports it."""
        if self._first_seen is None:
            self._first_seen = updates
        if updates > self._first_seen and not self._started:
            threading.Thread(target=importlib.import_module, args=(_CURVES,), daemon=True).start()
            self._started = True


def default_run_dir(config: ExperimentConfig, root: Path = Path("runs")) -> Path:
    return root / f"{config.environment.id}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


class LocalRun:
    """Starts every role, supervises them, shows progress and stops them in order."""

    def __init__(
        self,
        config: ExperimentConfig,
        run_dir: Path,
        actors: int,
        shards: int,
        record_actors: bool = False,
        learners: int = 1,
        zygote: Zygote | None = None,
    ) -> None:
        self.config = config
        self._learners = learners
        self._zygote = zygote
        # Where rank 0 of a learner group meets the others (chosen at start).
        self._group_port = 0
        self.run_dir = run_dir
        self._config_path = run_dir / "config.yaml"
        run_dir.mkdir(parents=True, exist_ok=True)
        self._config_path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
        logs = run_dir / "logs"
        self.shards = [
            Child(
                f"replay-{k}",
                functools.partial(self._shard_args, k, shards),
                logs / f"replay-{k}.log",
                True,
            )
            for k in range(shards)
        ]
        # A learner group is started and stopped whole: a rank restarted alone could not rejoin
        # it, so any rank that exits ends the run, naming it.
        restarts = {"max_restarts": 0} if learners > 1 else {}
        self.learner = Child(
            "learner", self._learner_args, logs / "learner.log", True, zygote=zygote, **restarts
        )
        self.followers = [
            Child(
                f"learner-{rank}",
                functools.partial(self._follower_args, rank),
                logs / f"learner-{rank}.log",
                False,
                max_restarts=0,
                zygote=zygote,
            )
            for rank in range(1, learners)
        ]
        # Actors take whatever CPU the learner leaves: on a few shared cores the learner's
        # updates, not environment steps, bound how fast a run learns. The evaluator is
        # light but decides when the run is solved, so it comes between the two.
        self.evaluator = Child(
            "evaluator",
            self._client_args("evaluator"),
            logs / "evaluator.log",
            False,
            niceness=EVALUATOR_NICENESS,
            zygote=zygote,
        )
        # Each actor writes its own dataset, named by its id: datasets/actor-<id>.
        recording = ["--dataset-dir", str(run_dir / DATASETS)] if record_actors else []
        self.actors = [
            Child(
                f"actor-{i}",
                self._client_args("actor", recording),
                logs / f"actor-{i}.log",
                False,
                niceness=ACTOR_NICENESS,
                zygote=zygote,
            )
            for i in range(actors)
        ]

    def _shard_args(self, index: int, shards: int, port: int) -> list[str]:
        algorithm = self.config.algorithm
        args = [
            "replay",
            "--port",
            str(port),
            "--capacity",
            str(math.ceil(algorithm.replay_capacity / shards)),
            "--priority-exponent",
            str(algorithm.priority_exponent),
            "--snapshot-path",
            str(self.run_dir / f"replay-{index}.snapshot"),
            # Shards snapshot as often as the learner checkpoints: a part killed with -9
            # (and restarted by the launcher) loses at most that interval of its state, and
            # one setting bounds what a crash of either costs.
            "--snapshot-interval-s",
            str(self.config.general.checkpoint_interval_s),
            "--seed",
            str(self.config.general.seed + index),
        ]
        if algorithm.samples_per_insert > 0:
            tolerance = 10 * max(
                algorithm.batch_size, algorithm.samples_per_insert * algorithm.actor.insert_batch_size
            )
            args += ["--samples-per-insert", str(algorithm.samples_per_insert)]
            args += ["--samples-per-insert-tolerance", str(tolerance)]
        return args

    def _learner_args(self, port: int) -> list[str]:
        # The launcher draws the learning curve once every part has stopped (apexrl run's stop).
        args = [*self._group_args(0), "--run-dir", str(self.run_dir), "--port", str(port)]
        return [*args, "--no-learning-curve"]

    def _follower_args(self, rank: int, _port: int) -> list[str]:
        return self._group_args(rank)

    def _group_args(self, rank: int) -> list[str]:
        replay = ",".join(shard.address for shard in self.shards)
        args = ["learner", str(self._config_path), "--replay", replay]
        if self._learners > 1:
            args += ["--group-size", str(self._learners), "--group-rank", str(rank)]
            args += ["--group-address", f"127.0.0.1:{self._group_port}"]
        return args

    def _client_args(self, role: str, extra: Sequence[str] = ()) -> Callable[[int], list[str]]:
        return lambda _port: [role, "--learner", self.learner.address, *extra]

    def _children(self) -> list[Child]:
        return [*self.shards, self.learner, *self.followers, self.evaluator, *self.actors]

    def start(self, precheck: Callable[[], str | None] = lambda: None) -> None:
        """Every role at once, on ports chosen first: clients retry until the services they need serve.

        The shards, which need no torch, start first; the rest once ``precheck`` (which may
        wait for the zygote's imports meanwhile) has found no reason the learner would stop
        at start; PrecheckError with its reason otherwise.
        """
        serving = [*self.shards, self.learner]
        *ports, self._group_port = pick_free_ports(len(serving) + 1)
        for child, port in zip(serving, ports, strict=True):
            child.port = port
        for shard in self.shards:
            shard.launch()
        logger.info("shards started count=%d", len(self.shards))
        problem = precheck()
        if problem is not None:
            raise PrecheckError(problem)
        logger.info("experiment checked")
        for child in self._children()[len(self.shards) :]:
            child.launch()
        logger.info("roles started forked=%s", self._zygote is not None and self._zygote.alive)
        for child in self._children():
            child.ready()
        logger.info("every role serving")

    def supervise(self, stop: threading.Event, view: ProgressView, poll_s: float = 0.25) -> RunOutcome:
        """Runs until the learner reports the run finished, ``stop`` is set, or a part fails for good."""
        channel = create_channel(self.learner.address, default_timeout_s=5.0)
        learner = learner_pb2_grpc.LearnerServiceStub(channel)
        status: learner_pb2.GetStatusResponse | None = None
        curves = _CurvesImport()
        try:
            while not stop.wait(poll_s):
                check_children(self._children())
                try:
                    status = learner.GetStatus(learner_pb2.GetStatusRequest(), timeout=5.0)
                except grpc.RpcError as error:
                    logger.warning("learner status unavailable code=%s", error.code().name)
                    continue
                view.update(status)
                curves.saw(status.updates)
                if status.finished:
                    return RunOutcome(self.run_dir, "finished", status, interrupted=False)
            return RunOutcome(self.run_dir, "interrupted", status, interrupted=True)
        finally:
            channel.close()

    def shutdown(self) -> dict[str, int | None]:
        """Stops actors (they flush to the shards), evaluator and learner (checkpoint), then the shards."""
        codes: dict[str, int | None] = {}
        for group in ([*self.actors, self.evaluator, self.learner, *self.followers], self.shards):
            for child in group:
                child.terminate()
            for child in group:
                codes[child.name] = child.stop()
        return codes


def run_locally(
    config: ExperimentConfig,
    run_dir: Path,
    actors: int,
    shards: int,
    stop: threading.Event,
    view: ProgressView,
    record_actors: bool = False,
    learners: int = 1,
    zygote: Zygote | None = None,
    precheck: Callable[[], str | None] = lambda: None,
) -> RunOutcome:
    """The whole run; RunFailedError names the part that could not be kept alive, PrecheckError
    the reason the experiment cannot run (nothing but the shards started then)."""
    run = LocalRun(config, run_dir, actors, shards, record_actors, learners, zygote)
    started = time.monotonic()
    try:
        run.start(precheck)
        outcome = run.supervise(stop, view)
    finally:
        view.close()
        codes = run.shutdown()
        logger.info("run stopped seconds=%.1f exit_codes=%s", time.monotonic() - started, codes)
    if outcome.status is not None:
        logger.info("final status %s", status_row(outcome.status, config))
    return outcome
