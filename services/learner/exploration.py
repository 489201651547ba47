"""The exploration ladder: a spread of epsilons for any number of actors joining and leaving.

Ape-X gives actor i of a fixed N the epsilon 0.4^(1 + 7 i / (N - 1)): exponents
evenly spaced over [1, 8]. With elastic scaling N is unknown, so rung r takes the
exponent 1 + 7 f(r) where f is the base-2 van der Corput sequence 0, 1/2, 1/4,
3/4, 1/8, 5/8, ...: every prefix of rungs covers [0, 1) about evenly, so the
first N actors are spread almost as well as Ape-X's fixed ladder for any N.
Actors that leave free their rung and the next one to join takes the lowest free
rung, which keeps the occupied rungs a prefix and the spread intact.
"""

from __future__ import annotations

import heapq
import threading


def van_der_corput(index: int) -> float:
    """The ``index``-th point of the base-2 van der Corput sequence, in [0, 1)."""
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    fraction, scale = 0.0, 0.5
    while index:
        fraction += scale * (index & 1)
        index >>= 1
        scale /= 2
    return fraction


def ladder_epsilon(rung: int, base_epsilon: float = 0.4, exponent: float = 7.0) -> float:
    """epsilon = base ** (1 + exponent * f(rung)): rung 0 is 0.4, rung 1 is 0.4^4.5, ..."""
    return float(base_epsilon ** (1.0 + exponent * van_der_corput(rung)))


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
