"""The SAC learner core: a squashed Gaussian policy, twin critics and targets, a learned temperature."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
from numpy.typing import NDArray

from services.algorithms.actions import ActionScaler
from services.algorithms.actor_critic import (
    SquashedGaussianPolicy,
    TwinCritics,
    batch_from_columns,
    frozen_copy,
    polyak_update,
    published,
    sampling_generator,
)
from services.algorithms.data_parallel import average_gradients
from services.algorithms.interface import Columns, UpdateResult
from services.algorithms.prioritized import importance_exponent, priorities_from_td
from services.algorithms.sac.config import SacConfig
from services.algorithms.sac.losses import sac_critic_loss, sac_policy_loss, temperature_loss
from services.algorithms.torsos import seeded
from services.algorithms.training_state import load_training_tensors, to_device, training_tensors
from services.common.environments import BoxActions

_NETWORKS = ("policy", "critics", "target_critics")
_OPTIMIZERS = ("policy_optimizer", "critic_optimizer", "temperature_optimizer")
_GENERATOR = "sampling_generator"
_LOG_TEMPERATURE = "log_temperature"


class SacLearner:
    """Soft actor-critic with automatic temperature tuning (Haarnoja et al. 2018) on prioritized replay.

    Each update steps the critics, then the policy through the updated critics, then log alpha,
    and moves the target critics towards the online ones (tau). One generator supplies the
    samples: first a~' for the critic targets, then a~ for the policy loss.
    """

    def __init__(
        self,
        config: SacConfig,
        observation_shape: tuple[int, ...],
        actions: BoxActions,
        device: torch.device,
        seed: int,
    ) -> None:
        self._config = config
        self.device = device
        self.scaler = ActionScaler.from_box(actions)
        network, size = config.network, self.scaler.size
        policy, critics = seeded(
            seed,
            lambda: (
                SquashedGaussianPolicy(observation_shape, size, network.hidden_sizes),
                TwinCritics(observation_shape, size, network.critic_hidden_sizes),
            ),
        )
        self.policy: SquashedGaussianPolicy = policy.to(device)
        self.critics: TwinCritics = critics.to(device)
        self.target_critics = frozen_copy(self.critics)
        initial = math.log(config.initial_temperature)
        self.log_temperature = torch.tensor(initial, device=device, requires_grad=True)
        # The heuristic of the SAC paper ("SAC: algorithms and applications"): H_target = -dim(A).
        entropy = config.target_entropy
        self.target_entropy = float(-size) if entropy is None else entropy
        self.policy_optimizer = torch.optim.Adam(
            self.policy.parameters(), lr=config.policy_learning_rate, foreach=True
        )
        self.critic_optimizer = torch.optim.Adam(
            self.critics.parameters(), lr=config.critic_learning_rate, foreach=True
        )
        self.temperature_optimizer = torch.optim.Adam(
            [self.log_temperature], lr=config.temperature_learning_rate, foreach=True
        )
        self.sampling_generator = sampling_generator(seed, device)
        self.updates = 0

    def importance_exponent(self) -> float:
        return importance_exponent(self._config, self.updates)

    def temperature(self) -> float:
        """alpha, the entropy bonus's weight."""
        return float(self.log_temperature.detach().exp())

    def update(self, columns: Columns, importance_weights: NDArray[np.float32]) -> UpdateResult:
        """Critic, policy and temperature steps on a batch; the new priorities |y - Q1(s, a)|."""
        batch = batch_from_columns(columns, self.scaler, self.device)
        # alpha of this update, for all three losses alike.
        alpha = self.log_temperature.detach().exp()
        result = sac_critic_loss(
            self.critics,
            self.target_critics,
            self.policy,
            batch,
            to_device(importance_weights, self.device, torch.float32),
            alpha,
            self.sampling_generator,
        )
        self.critic_optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(result.loss)
        average_gradients(self.critics.parameters())
        self.critic_optimizer.step()
        diagnostics = self._improve_policy(batch.observation, alpha)
        polyak_update(self.target_critics, self.critics, self._config.target_update_rate)
        self.updates += 1
        return UpdateResult(
            loss=float(result.loss.detach()),
            priorities=priorities_from_td(result.td_errors),
            diagnostics=diagnostics,
        )

    def _improve_policy(self, observation: torch.Tensor, alpha: torch.Tensor) -> dict[str, torch.Tensor]:
        """The policy step, then the temperature's; their losses, alpha and the policy's entropy."""
        policy = sac_policy_loss(self.policy, self.critics, observation, alpha, self.sampling_generator)
        self.policy_optimizer.zero_grad(set_to_none=True)
        # Only the policy's gradients: the critics' would be thrown away by their next zero_grad.
        torch.autograd.backward(policy.loss, inputs=list(self.policy.parameters()))
        average_gradients(self.policy.parameters())
        self.policy_optimizer.step()
        loss = temperature_loss(self.log_temperature, policy.log_prob, self.target_entropy)
        self.temperature_optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)
        average_gradients([self.log_temperature])
        self.temperature_optimizer.step()
        return {
            "policy_loss": policy.loss.detach(),
            "temperature": alpha,
            "temperature_loss": loss.detach(),
            "entropy": -policy.log_prob.mean(),  # estimated from the batch's sampled actions
        }

    def actor_parameters(self) -> dict[str, torch.Tensor]:
        """The policy and the first online critic: actors act with one and score with both."""
        return published(self.policy, self.critics.first)

    def policy_parameters(self) -> dict[str, torch.Tensor]:
        return published(self.policy)

    def _training_parts(self) -> tuple[dict[str, torch.nn.Module], dict[str, torch.optim.Optimizer]]:
        modules = {name: getattr(self, name) for name in _NETWORKS}
        return modules, {name: getattr(self, name) for name in _OPTIMIZERS}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Networks, target critics, log alpha, Adam moments and the sampling generator's state."""
        tensors = training_tensors(*self._training_parts())
        tensors[_LOG_TEMPERATURE] = self.log_temperature.detach()
        tensors[_GENERATOR] = self.sampling_generator.get_state()
        return tensors

    def load_state_tensors(self, tensors: Mapping[str, torch.Tensor], updates: int) -> None:
        """Restores :meth:`state_tensors`; KeyError or RuntimeError if they do not fit these networks."""
        owned = load_training_tensors(tensors, *self._training_parts())
        with torch.no_grad():
            self.log_temperature.copy_(owned[_LOG_TEMPERATURE])
        self.sampling_generator.set_state(owned[_GENERATOR].to("cpu", torch.uint8))
        self.updates = updates
