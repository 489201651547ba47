"""The TD3 learner core: a policy and twin critics with their targets, two Adams, one update at a time."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from numpy.typing import NDArray

from services.algorithms.actions import ActionScaler
from services.algorithms.actor_critic import (
    DeterministicPolicy,
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
from services.algorithms.td3.config import Td3Config
from services.algorithms.td3.losses import TargetSmoothing, td3_critic_loss, td3_policy_loss
from services.algorithms.torsos import seeded
from services.algorithms.training_state import load_training_tensors, to_device, training_tensors
from services.common.environments import BoxActions

_NETWORKS = ("policy", "critics", "target_policy", "target_critics")
_OPTIMIZERS = ("policy_optimizer", "critic_optimizer")
_GENERATOR = "noise_generator"


class Td3Learner:
    """Twin delayed DDPG (Fujimoto et al. 2018) on prioritized n-step transitions.

    Every update steps the critics; every ``policy_delay``-th also steps the policy and
    moves all three target networks towards the online ones by polyak averaging.
    """

    def __init__(
        self,
        config: Td3Config,
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
                DeterministicPolicy(observation_shape, size, network.hidden_sizes),
                TwinCritics(observation_shape, size, network.critic_hidden_sizes),
            ),
        )
        self.policy: DeterministicPolicy = policy.to(device)
        self.critics: TwinCritics = critics.to(device)
        self.target_policy = frozen_copy(self.policy)
        self.target_critics = frozen_copy(self.critics)
        self.policy_optimizer = torch.optim.Adam(
            self.policy.parameters(), lr=config.policy_learning_rate, foreach=True
        )
        self.critic_optimizer = torch.optim.Adam(
            self.critics.parameters(), lr=config.critic_learning_rate, foreach=True
        )
        self.noise_generator = sampling_generator(seed, device)
        self._smoothing = TargetSmoothing(config.target_noise, config.target_noise_clip)
        self.updates = 0
        self._policy_loss: torch.Tensor | None = None  # of the latest policy step (every policy_delay)

    def importance_exponent(self) -> float:
        return importance_exponent(self._config, self.updates)

    def update(self, columns: Columns, importance_weights: NDArray[np.float32]) -> UpdateResult:
        """One critic step (and maybe a policy step) on a batch; the new priorities |y - Q1(s, a)|."""
        batch = batch_from_columns(columns, self.scaler, self.device)
        result = td3_critic_loss(
            self.critics,
            self.target_policy,
            self.target_critics,
            batch,
            to_device(importance_weights, self.device, torch.float32),
            self._smoothing,
            self.noise_generator,
        )
        self.critic_optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(result.loss)
        average_gradients(self.critics.parameters())
        self.critic_optimizer.step()
        self.updates += 1
        if self.updates % self._config.policy_delay == 0:
            self._improve_policy(batch.observation)
        diagnostics = {} if self._policy_loss is None else {"policy_loss": self._policy_loss}
        return UpdateResult(
            loss=float(result.loss.detach()),
            priorities=priorities_from_td(result.td_errors),
            diagnostics=diagnostics,
        )

    def _improve_policy(self, observation: torch.Tensor) -> None:
        """A policy step through the just-updated first critic, then the targets follow (tau)."""
        loss = td3_policy_loss(self.policy, self.critics, observation)
        self.policy_optimizer.zero_grad(set_to_none=True)
        # Only the policy's gradients: the critics' would be thrown away by their next zero_grad.
        torch.autograd.backward(loss, inputs=list(self.policy.parameters()))
        average_gradients(self.policy.parameters())
        self.policy_optimizer.step()
        self._policy_loss = loss.detach()
        rate = self._config.target_update_rate
        polyak_update(self.target_policy, self.policy, rate)
        polyak_update(self.target_critics, self.critics, rate)

    def actor_parameters(self) -> dict[str, torch.Tensor]:
        """The policy and the first online critic: actors act with one and score with both."""
        return published(self.policy, self.critics.first)

    def policy_parameters(self) -> dict[str, torch.Tensor]:
        return published(self.policy)

    def _training_parts(self) -> tuple[dict[str, torch.nn.Module], dict[str, torch.optim.Optimizer]]:
        modules = {name: getattr(self, name) for name in _NETWORKS}
        return modules, {name: getattr(self, name) for name in _OPTIMIZERS}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Networks, targets, Adam moments and the smoothing noise generator's state."""
        tensors = training_tensors(*self._training_parts())
        tensors[_GENERATOR] = self.noise_generator.get_state()
        return tensors

    def load_state_tensors(self, tensors: Mapping[str, torch.Tensor], updates: int) -> None:
        """Restores :meth:`state_tensors`; KeyError or RuntimeError if they do not fit these networks."""
        owned = load_training_tensors(tensors, *self._training_parts())
        self.noise_generator.set_state(owned[_GENERATOR].to("cpu", torch.uint8))
        self.updates = updates
