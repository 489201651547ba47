"""Acting with the local SAC policy: sampling it at the rung's temperature, and initial priorities."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from services.algorithms.actor_critic import ActorCriticPolicy, SquashedGaussianPolicy
from services.algorithms.interface import ExplorationSetting


class SacPolicy(ActorCriticPolicy[SquashedGaussianPolicy]):
    """An actor's or evaluator's copy of the squashed Gaussian policy and of the first critic.

    Its initial priorities |r + d Q(s', tanh(mean(s'))) - Q(s, a)| (``ActorCriticPolicy``)
    leave out the learner's entropy term -alpha log pi(a'|s'): the actor does not know alpha,
    and a priority only has to rank transitions roughly until the learner's first update of
    them replaces it with the full soft TD error.
    """

    def deterministic_unit(self, observations: torch.Tensor) -> torch.Tensor:
        return self.policy.deterministic(observations)

    def explore_unit(
        self, observations: NDArray[Any], exploration: ExplorationSetting, rng: np.random.Generator
    ) -> tuple[NDArray[Any], NDArray[Any]]:
        """tanh(mean + temperature * std * eps), eps ~ N(0, 1) from ``rng``; and tanh(mean)."""
        with torch.inference_mode():
            mean, log_std = self.policy(torch.from_numpy(np.asarray(observations)))
        noise = rng.standard_normal(size=tuple(mean.shape))
        centre = mean.numpy()
        return np.tanh(centre + exploration.value * np.exp(log_std.numpy()) * noise), np.tanh(centre)
