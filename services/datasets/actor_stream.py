"""An actor's own episodes, exploring as it trains, written to a Minari dataset off the acting thread."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from numpy.typing import NDArray

from services.actor.metrics import DATASET_DROPPED, DATASET_WRITTEN, ActorMetrics
from services.datasets.episodes import EpisodeTrace, RecordedEpisode
from services.datasets.writer import DatasetWriter, default_dataset_id, installed_versions

logger = logging.getLogger(__name__)

# Episodes waiting for the writer thread; beyond it an episode is dropped and counted, so a
# slow disk never holds the actor back.
MAX_PENDING_EPISODES = 8


def new_dataset_folder(directory: Path, actor_id: int) -> Path:
    """``actor-<id>`` in ``directory``, or ``actor-<id>-2``, ... where a dataset of that name exists."""
    path = directory / f"actor-{actor_id}"
    suffix = 2
    while path.exists():
        path = directory / f"actor-{actor_id}-{suffix}"
        suffix += 1
    return path


class EpisodeStream:
    """Records the lockstep environments of one actor and writes each episode as it ends.

    ``context`` is read when an episode ends: what the episode's metadata records of the
    actor then (its id, parameter version and lineage, exploration setting). After
    ``max_episodes`` episodes, or once a write has failed, the stream records no more.
    """

    def __init__(
        self,
        path: Path,
        environment: gym.Env[Any, Any],
        environment_id: str,
        metadata: Mapping[str, Any],
        metrics: ActorMetrics,
        context: Callable[[], Mapping[str, Any]],
        max_episodes: int,
    ) -> None:
        self._writer = DatasetWriter(
            path,
            default_dataset_id(path, environment_id),
            environment,
            {"requirements": installed_versions("apexrl", "gymnasium", "ale-py"), **metadata},
        )
        self._metrics = metrics
        self._context = context
        self._max_episodes = max_episodes
        self._traces: list[EpisodeTrace | None] = []
        self._accepted = 0
        self._pending: list[Future[None]] = []
        self._failed = threading.Event()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="actor-dataset")
        logger.info("writing episodes to the dataset %s id=%s", path, self._writer.dataset_id)

    @property
    def path(self) -> Path:
        return self._writer.path

    def begin(self, observations: NDArray[Any], seeds: list[int] | None = None) -> None:
        """The first observation of every environment, after their first resets."""
        self._traces = [
            EpisodeTrace(observation, None if seeds is None else seeds[index])
            for index, observation in enumerate(observations)
        ]

    def step(
        self,
        actions: NDArray[Any],
        rewards: NDArray[np.float64],
        terminated: NDArray[np.bool_],
        truncated: NDArray[np.bool_],
        next_observations: NDArray[Any],
    ) -> None:
        """One lockstep step of every environment; a trace ends where ``terminated | truncated``."""
        for index, trace in enumerate(self._traces):
            if trace is not None:
                trace.add(
                    actions[index],
                    rewards[index],
                    terminated[index],
                    truncated[index],
                    next_observations[index],
                )
                if terminated[index] or truncated[index]:
                    self._traces[index] = None
                    self._finished(trace.finish())

    def restart(self, index: int, observation: NDArray[Any]) -> None:
        """Environment ``index`` was reset after its episode ended: a new trace begins."""
        if self._accepted < self._max_episodes and not self._failed.is_set():
            self._traces[index] = EpisodeTrace(observation)

    def _finished(self, episode: RecordedEpisode) -> None:
        if self._accepted >= self._max_episodes:  # begun before the limit: not written
            return
        self._pending = [write for write in self._pending if not write.done()]
        if self._failed.is_set() or len(self._pending) >= MAX_PENDING_EPISODES:
            self._metrics.dataset_episodes.labels(DATASET_DROPPED).inc()
            return
        self._accepted += 1
        if self._accepted == self._max_episodes:
            logger.info("dataset %s: %d episodes, the limit; recording stops", self.path, self._max_episodes)
        metadata = dict(self._context())
        self._pending.append(self._thread.submit(self._write, episode, metadata))

    def _write(self, episode: RecordedEpisode, metadata: dict[str, Any]) -> None:
        try:
            self._writer.write(episode, {**metadata, "return": episode.episode_return})
        except Exception:
            # A full disk or a removed folder: training goes on without the dataset.
            logger.exception("writing the dataset %s failed; recording stops", self.path)
            self._failed.set()
            self._metrics.dataset_episodes.labels(DATASET_DROPPED).inc()
            return
        self._metrics.dataset_episodes.labels(DATASET_WRITTEN).inc()

    def close(self) -> None:
        """Waits for the episodes handed to the writer; episodes under way are not written."""
        self._thread.shutdown(wait=True)
        logger.info(
            "dataset %s closed episodes=%d steps=%d", self.path, self._writer.episodes, self._writer.steps
        )
