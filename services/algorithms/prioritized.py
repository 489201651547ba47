"""Prioritized-replay arithmetic every family shares: priorities from TD errors, the annealed beta."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from services.common.experiment import OffPolicyConfig

# Added to every |TD error|: a priority of 0 would make an item unsampleable for good.
PRIORITY_EPSILON = 1e-6


def priorities_from_td(td_errors: torch.Tensor) -> NDArray[np.float64]:
    """Priorities |td| + epsilon for the replay, as float64 on the host."""
    return priorities_of(td_errors.detach().cpu().numpy())


def priorities_of(td_errors: NDArray[np.floating[Any]]) -> NDArray[np.float64]:
    """Priorities |td| + epsilon of TD errors already on the host."""
    magnitudes: NDArray[np.float64] = np.abs(td_errors).astype(np.float64)
    return magnitudes + PRIORITY_EPSILON


def importance_exponent(config: OffPolicyConfig, updates: int) -> float:
    """beta, annealed linearly from its start value to 1 over the annealing updates (Schaul et al. 2016)."""
    start = config.importance_exponent_start
    progress = min(1.0, updates / config.importance_annealing_updates)
    return start + (1.0 - start) * progress
