"""The training loop: prefetched batch -> update -> priorities back, parameters out, metrics logged."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from services.algorithms.experiment import ExperimentConfig
from services.algorithms.interface import LearnerCore
from services.learner.feed_process import ReplayFeed
from services.learner.group import GroupError
from services.learner.metrics import LearnerMetrics
from services.learner.parameter_store import ParameterStore
from services.learner.progress import Progress, RateMeter
from services.learner.registry import ActorRegistry
from services.learner.run_log import RunLog

if TYPE_CHECKING:
    import torch

    from services.learner.group import LearnerGroup

logger = logging.getLogger(__name__)


@dataclass
class Snapshot:
    """The figures GetStatus, metrics and the run log share, refreshed by the training thread."""

    updates: int = 0
    updates_per_second: float = 0.0
    environment_steps: int = 0
    environment_steps_per_second: float = 0.0
    loss: float = float("nan")
    # The latest update's UpdateResult.diagnostics: tensors, read when a row is logged.
    diagnostics: Mapping[str, torch.Tensor] = field(default_factory=dict)
    replay_size: int = 0
    replay_capacity: int = 0
    shards_up: int = 0


class Trainer:
    """Runs on its own thread until stopped or the run's stop condition holds."""

    def __init__(
        self,
        config: ExperimentConfig,
        learner: LearnerCore,
        feed: ReplayFeed,
        store: ParameterStore,
        registry: ActorRegistry,
        progress: Progress,
        metrics: LearnerMetrics,
        run_log: RunLog,
        save_checkpoint: Callable[[], None],
        group: LearnerGroup | None = None,
        on_failure: Callable[[str], None] | None = None,
    ) -> None:
        self._config = config
        self._learner = learner
        self._feed = feed
        self._store = store
        self._registry = registry
        self._progress = progress
        self._metrics = metrics
        self._run_log = run_log
        self._save_checkpoint = save_checkpoint
        # Rank 0 of a learner group: every update is agreed with the other ranks first.
        self._group = group
        self._on_failure = on_failure
        self.failure: str | None = None  # why training could not go on (the group failed)
        self._stop = threading.Event()
        # A resumed learner's counters, from the first status on (not 0 until the first refresh).
        self.snapshot = Snapshot(updates=learner.updates, environment_steps=registry.environment_steps())
        self._update_rate = RateMeter()
        self._step_rate = RateMeter()
        self._thread = threading.Thread(target=self._run, name="trainer", daemon=True)
        self._trained = False  # whether this process has made an update yet (logged once)

    def start(self) -> Trainer:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops training and logs a last metrics row, so the run's final state (say, solved) is in it."""
        self._stop.set()
        self._thread.join(timeout=60)
        if not self._thread.is_alive():
            self._refresh_snapshot()

    @property
    def finished(self) -> bool:
        """Whether the run is done: a budget spent, or the group agreed to stop.

        A group that failed is not a finished run: status keeps saying not finished while the
        learner stops with its error, so the launcher reports the rank that died, not a
        clean end.
        """
        group_stopped = self._group is not None and self._group.stopped
        return self._progress.stop_reason is not None or group_stopped

    def _run(self) -> None:
        try:
            self._train()
            if self._group is not None and not self._group.stopped:
                self._group.agree_to_stop(True)  # the other ranks stop at the same update
        except GroupError as error:
            self.failure = str(error)
            logger.error("training stopped: %s", error)
            if self._on_failure is not None:
                self._on_failure(self.failure)

    def _train(self) -> None:
        general = self._config.general
        next_log = next_checkpoint = time.monotonic()
        next_checkpoint += general.checkpoint_interval_s
        while not self._stop.is_set():
            if self.finished and self._group is not None and not self._group.stopped:
                self._group.agree_to_stop(True)  # a spent budget ends the group's training too
            if self.finished:
                # Nothing left to train (the learner only serves now): sleep until the next
                # row or checkpoint is due instead of spinning.
                self._stop.wait(max(0.0, min(next_log, next_checkpoint) - time.monotonic()))
            else:
                self._train_once()
            now = time.monotonic()
            if now >= next_log:
                next_log = now + general.log_interval_s
                self._refresh_snapshot()
            if now >= next_checkpoint:
                next_checkpoint = now + general.checkpoint_interval_s
                self._save_checkpoint()

    def _train_once(self) -> None:
        waited = time.perf_counter()
        batch = self._feed.get(timeout_s=0.2)
        if batch is None:
            return
        self._metrics.batch_wait_seconds.observe(time.perf_counter() - waited)
        self._metrics.sample_seconds.observe(self._feed.sample_seconds)
        if self._group is not None and self._group.agree_to_stop(False):
            logger.info("the learner group stopped at update %d", self._learner.updates)
            return
        result = self._learner.update(batch.columns, batch.importance_weights)
        self._feed.release(batch, result.priorities, self._learner.importance_exponent())
        self.snapshot.loss = result.loss
        self.snapshot.diagnostics = result.diagnostics
        self._metrics.updates.inc()
        if not self._trained:
            self._trained = True
            logger.info(
                "first update updates=%d replay_size=%d", self._learner.updates, self._feed.replay_size
            )
        if self._learner.updates % self._config.algorithm.parameter_publish_interval == 0:
            learner = self._learner
            self._store.publish(learner.actor_parameters(), learner.policy_parameters(), learner.updates)

    def _refresh_snapshot(self) -> None:
        """Recomputes rates and totals, checks the budget, exports metrics and logs a row."""
        snapshot = self.snapshot
        snapshot.updates = self._learner.updates
        snapshot.environment_steps = self._registry.environment_steps()
        snapshot.updates_per_second = self._update_rate.rate(snapshot.updates)
        snapshot.environment_steps_per_second = self._step_rate.rate(snapshot.environment_steps)
        snapshot.replay_size = self._feed.replay_size
        snapshot.replay_capacity = self._feed.replay_capacity
        snapshot.shards_up = self._feed.shards_up
        self._progress.check_budget(snapshot.environment_steps, snapshot.updates)
        actors = self._registry.active()
        version = self._store.version
        metrics = self._metrics
        metrics.updates_per_second.set(snapshot.updates_per_second)
        metrics.loss.set(snapshot.loss)
        diagnostics = {name: float(value) for name, value in snapshot.diagnostics.items()}
        for name, value in diagnostics.items():
            metrics.diagnostics.labels(name).set(value)
        metrics.importance_exponent.set(self._learner.importance_exponent())
        metrics.parameter_version.set(version)
        metrics.environment_steps.set(snapshot.environment_steps)
        metrics.environment_steps_per_second.set(snapshot.environment_steps_per_second)
        metrics.replay_size.set(snapshot.replay_size)
        metrics.actors.set(sum(1 for actor in actors if actor.role == "actor"))
        held = [
            actor.parameter_version for actor in actors if actor.role == "actor" and actor.parameter_version
        ]
        metrics.parameter_lag.set(version - min(held) if held else 0)
        metrics.priority_updates_dropped.set(self._feed.dropped)
        latest = self._progress.latest
        if latest is not None:
            metrics.evaluation_return.set(latest.mean_return)
        self._run_log.append(
            {
                "elapsed_s": round(self._progress.elapsed_s(), 3),
                "updates": snapshot.updates,
                "updates_per_s": round(snapshot.updates_per_second, 2),
                "environment_steps": snapshot.environment_steps,
                "environment_steps_per_s": round(snapshot.environment_steps_per_second, 2),
                "replay_size": snapshot.replay_size,
                "parameter_version": version,
                "loss": snapshot.loss,
                "importance_exponent": round(self._learner.importance_exponent(), 4),
                "evaluation_return": latest.mean_return if latest is not None else float("nan"),
                "actors": len(actors),
                **diagnostics,
            }
        )
