"""Acting with the local TD3 policy: Gaussian exploration noise in unit space, and initial priorities."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from services.algorithms.actor_critic import ActorCriticPolicy, DeterministicPolicy
from services.algorithms.interface import ExplorationSetting


class Td3Policy(ActorCriticPolicy[DeterministicPolicy]):
    """An actor's or evaluator's copy of the deterministic policy and of the first critic."""

    def deterministic_unit(self, observations: torch.Tensor) -> torch.Tensor:
        unit: torch.Tensor = self.policy(observations)
        return unit

    def explore_unit(
        self, observations: NDArray[Any], exploration: ExplorationSetting, rng: np.random.Generator
    ) -> tuple[NDArray[Any], NDArray[Any]]:
        """clip(pi(s) + N(0, scale^2), -1, 1): the noise is relative to half of each range; and pi(s)."""
        with torch.inference_mode():
            unit = self.deterministic_unit(torch.from_numpy(np.asarray(observations))).numpy()
        noisy = unit + rng.normal(0.0, exploration.value, size=unit.shape)
        return np.clip(noisy, -1.0, 1.0), unit
