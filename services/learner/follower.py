"""A learner group's rank 1 .. N-1: trains its share of every batch in step with rank 0, serves nothing.

It builds the same core as rank 0, takes rank 0's state (the checkpoint rank 0 resumed
from, if any), samples its own share of each global batch from the shards, and sends
its items' priorities back. Parameters, checkpoints, the run log and every RPC are rank
0's; a follower keeps no state of its own and can be started again with its group.
"""

from __future__ import annotations

import logging
import threading

import torch

from services.algorithms.experiment import ExperimentConfig, batch_share
from services.algorithms.families import family_named
from services.common.environments import describe_environment
from services.learner.device import resolve_device
from services.learner.feed_process import ReplayFeed
from services.learner.group import (
    GroupError,
    GroupSettings,
    LearnerGroup,
    feed_seed,
    group_device,
)
from services.learner.metrics import LearnerMetrics

logger = logging.getLogger(__name__)


class Follower:
    """Joins the group on construction; :meth:`run` trains until the group stops or fails."""

    def __init__(
        self, config: ExperimentConfig, replay_addresses: tuple[str, ...], group: GroupSettings
    ) -> None:
        if group.rank == 0:
            raise ValueError("rank 0 of a learner group is the learner service, not a follower")
        self.config = config
        device = group_device(resolve_device(config.general.device), group)
        torch.set_num_threads(config.general.learner_threads)
        settings = config.environment
        environment = describe_environment(
            settings.id, settings.options, settings.frame_stack, settings.atari_settings()
        )
        family = family_named(config.algorithm.name)
        family.check_environment(environment)
        self.core = family.make_learner(config.algorithm, environment, device, config.general.seed)
        self.group = LearnerGroup(group, device)
        self.group.share_state(self.core)
        self.feed = ReplayFeed(
            list(replay_addresses),
            batch_share(config.algorithm.batch_size, group.size),
            self.core.importance_exponent(),
            config.algorithm.min_replay_size,
            seed=feed_seed(config.general.seed, group),
            batches_per_request=config.algorithm.batches_per_sample_request,
        ).start()
        self.failure: str | None = None
        self.metrics = LearnerMetrics()  # its updates, on its own /metrics where one is served

    def run(self, stop: threading.Event) -> None:
        """Updates in step with the group until any rank stops it (``stop``: this one asks to)."""
        try:
            while True:
                batch = self.feed.get(timeout_s=0.2)
                if batch is None and not stop.is_set():
                    continue
                if self.group.agree_to_stop(stop.is_set()):
                    break
                assert batch is not None  # agreed to go on: this rank was not asked to stop
                result = self.core.update(batch.columns, batch.importance_weights)
                self.feed.release(batch, result.priorities, self.core.importance_exponent())
                self.metrics.updates.inc()
        except GroupError as error:
            self.failure = str(error)
            logger.error("training stopped: %s", error)
            return
        logger.info("the learner group stopped at update %d", self.core.updates)

    def close(self) -> None:
        self.feed.stop()
        self.group.leave()
