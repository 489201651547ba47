"""Exploration rungs for actors joining and leaving: the lowest free rung goes to the next actor.

Keeping the occupied rungs a prefix keeps the family's ladder (services/algorithms/ladder.py)
spread well whatever the number of actors.
"""

from __future__ import annotations

import heapq
import threading


class ExplorationLadder:
    """Hands out the lowest free rung; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._free: list[int] = []
        self._next = 0

    def acquire(self) -> int:
        with self._lock:
            if self._free:
                return heapq.heappop(self._free)
            rung = self._next
            self._next += 1
            return rung

    def release(self, rung: int) -> None:
        with self._lock:
            if rung >= self._next or rung in self._free:
                raise ValueError(f"rung {rung} is not held")
            heapq.heappush(self._free, rung)
