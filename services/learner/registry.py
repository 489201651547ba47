"""Registered actors and evaluators: ids, exploration rungs, heartbeats and their reported progress."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from services.algorithms.interface import ExplorationSetting
from services.learner.exploration import ExplorationLadder


class UnknownActorError(LookupError):
    """An actor id this learner never issued, or whose registration expired."""


@dataclass
class ActorRecord:
    actor_id: int
    role: str
    client_name: str
    rung: int | None
    exploration: ExplorationSetting | None  # None: acts deterministically (evaluators, observers)
    environment_steps: int = 0
    episodes: int = 0
    last_episode_return: float = float("nan")
    parameter_version: int = 0
    last_seen: float = field(default_factory=time.monotonic)


class ActorRegistry:
    """Actors join and leave at any time; one that stays silent for ``expiry_s`` frees its rung.

    Environment steps are summed over every registration, departed ones included,
    on top of ``base_environment_steps`` carried over from a checkpoint.
    """

    def __init__(
        self,
        exploration: Callable[[int], ExplorationSetting],
        expiry_s: float = 30.0,
        base_environment_steps: int = 0,
        first_actor_id: int = 1,
    ) -> None:
        self._lock = threading.Lock()
        self._ladder = ExplorationLadder()
        self._exploration = exploration
        self._expiry_s = expiry_s
        self._actors: dict[int, ActorRecord] = {}
        self._departed_steps = base_environment_steps
        self._next_id = first_actor_id

    def register(self, role: str, client_name: str) -> ActorRecord:
        with self._lock:
            self._expire_locked()
            rung = self._ladder.acquire() if role == "actor" else None
            setting = None if rung is None else self._exploration(rung)
            record = ActorRecord(self._next_id, role, client_name, rung, setting)
            self._actors[record.actor_id] = record
            self._next_id += 1
            return record

    def heartbeat(
        self, actor_id: int, environment_steps: int, episodes: int, last_return: float, version: int
    ) -> None:
        """Records progress; UnknownActorError if the id is unknown or expired."""
        with self._lock:
            record = self._actors.get(actor_id)
            if record is None:
                raise UnknownActorError(
                    f"actor {actor_id} is not registered with this learner; register again"
                )
            record.environment_steps = max(record.environment_steps, environment_steps)
            record.episodes = max(record.episodes, episodes)
            record.last_episode_return = last_return
            record.parameter_version = version
            record.last_seen = time.monotonic()

    def touch(self, actor_id: int, version: int) -> None:
        """Records that the client holds ``version`` (a watch pushed it); UnknownActorError as heartbeat."""
        with self._lock:
            record = self._actors.get(actor_id)
            if record is None:
                raise UnknownActorError(
                    f"actor {actor_id} is not registered with this learner; register again"
                )
            record.parameter_version = version
            record.last_seen = time.monotonic()

    def _expire_locked(self) -> None:
        now = time.monotonic()
        for actor_id in [a for a, r in self._actors.items() if now - r.last_seen > self._expiry_s]:
            record = self._actors.pop(actor_id)
            self._departed_steps += record.environment_steps
            if record.rung is not None:
                self._ladder.release(record.rung)

    def active(self) -> list[ActorRecord]:
        with self._lock:
            self._expire_locked()
            return sorted(self._actors.values(), key=lambda record: record.actor_id)

    def environment_steps(self) -> int:
        with self._lock:
            return self._departed_steps + sum(record.environment_steps for record in self._actors.values())

    @property
    def next_actor_id(self) -> int:
        with self._lock:
            return self._next_id
