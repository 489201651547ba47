"""Prioritized-replay arithmetic every family shares: priorities from TD errors, the annealed beta."""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import NDArray

from services.common.experiment import OffPolicyConfig

# Added to every |TD error|: a priority of 0 would make an item unsampleable for good.
PRIORITY_EPSILON = 1e-6


def priorities_from_td(td_errors: torch.Tensor) -> NDArray[np.float64]:
    """Priorities |td| + epsilon for the replay, as float64 on the host."""
    magnitudes: NDArray[np.float64] = td_errors.detach().abs().cpu().numpy().astype(np.float64)
    return magnitudes + PRIORITY_EPSILON


def importance_exponent(config: OffPolicyConfig, updates: int) -> float:
    """beta, annealed linearly from its start value to 1 over the annealing updates (Schaul et al. 2016)."""
    start = config.importance_exponent_start
    progress = min(1.0, updates / config.importance_annealing_updates)
    return start + (1.0 - start) * progress
