"""Training progress the learner reports: rates, evaluations, the best model and the stop condition."""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from services.common.experiment import GeneralConfig


class RateMeter:
    """Events per second over the last ``window_s`` seconds."""

    def __init__(self, window_s: float = 10.0) -> None:
        self._window_s = window_s
        self._samples: deque[tuple[float, int]] = deque()

    def rate(self, count: int) -> float:
        now = time.monotonic()
        self._samples.append((now, count))
        while len(self._samples) > 2 and now - self._samples[0][0] > self._window_s:
            self._samples.popleft()
        first_time, first_count = self._samples[0]
        return (count - first_count) / (now - first_time) if now > first_time else 0.0


@dataclass(frozen=True)
class Evaluation:
    parameter_version: int
    mean_return: float
    std_return: float
    episodes: int
    updates: int


class Progress:
    """Thread-safe record of evaluations and the run's stop condition."""

    def __init__(
        self, general: GeneralConfig, elapsed_before_s: float, best_mean_return: float | None
    ) -> None:
        self._general = general
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._elapsed_before_s = elapsed_before_s
        self.latest: Evaluation | None = None
        self.best: Evaluation | None = None
        self._best_mean = -math.inf if best_mean_return is None else best_mean_return
        self._stop_reason: str | None = None

    def elapsed_s(self) -> float:
        return self._elapsed_before_s + time.monotonic() - self._started

    @property
    def best_mean_return(self) -> float | None:
        with self._lock:
            return None if self._best_mean == -math.inf else self._best_mean

    def record_evaluation(self, version: int, returns: list[float], updates: int) -> bool:
        """Stores an evaluation; True when it is the best so far."""
        values = np.asarray(returns, dtype=np.float64)
        evaluation = Evaluation(version, float(values.mean()), float(values.std()), len(returns), updates)
        with self._lock:
            self.latest = evaluation
            solved = self._general.solved_return
            if solved is not None and evaluation.mean_return >= solved and self._stop_reason is None:
                self._stop_reason = (
                    f"solved: evaluation mean return {evaluation.mean_return:.1f} >= {solved:g}"
                )
            if evaluation.mean_return > self._best_mean:
                self._best_mean = evaluation.mean_return
                self.best = evaluation
                return True
            return False

    def check_budget(self, environment_steps: int, updates: int) -> None:
        """Marks the run finished once a budget is spent."""
        general = self._general
        reasons = [
            (environment_steps >= general.max_environment_steps, f"{environment_steps} environment steps"),
            (general.max_updates > 0 and updates >= general.max_updates, f"{updates} updates"),
            (self.elapsed_s() >= general.max_wall_time_s, f"{general.max_wall_time_s:g} s wall time"),
        ]
        with self._lock:
            for spent, reason in reasons:
                if spent and self._stop_reason is None:
                    self._stop_reason = f"budget spent: {reason}"

    @property
    def stop_reason(self) -> str | None:
        with self._lock:
            return self._stop_reason
