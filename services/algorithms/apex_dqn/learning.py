"""The Ape-X DQN learner core: online and target networks, Adam, one prioritized update at a time."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from numpy.typing import NDArray

from services.algorithms.apex_dqn.config import ApexDqnConfig
from services.algorithms.apex_dqn.losses import DqnBatch, double_q_loss
from services.algorithms.apex_dqn.networks import QNetwork
from services.algorithms.data_parallel import average_gradients
from services.algorithms.interface import Columns, UpdateResult
from services.algorithms.prioritized import importance_exponent, priorities_from_td
from services.algorithms.torsos import seeded
from services.algorithms.training_state import load_training_tensors, to_device, training_tensors


class DqnLearner:
    """Double Q-learning with n-step targets and importance weights (Horgan et al. 2018)."""

    def __init__(
        self,
        config: ApexDqnConfig,
        observation_shape: tuple[int, ...],
        num_actions: int,
        device: torch.device,
        seed: int,
    ) -> None:
        self._config = config
        self.device = device

        def build() -> QNetwork:
            return QNetwork(config.network, observation_shape, num_actions)

        online, target = seeded(seed, lambda: (build(), build()))
        self.online: QNetwork = online.to(device)
        self.target: QNetwork = target.to(device)
        self.target.load_state_dict(self.online.state_dict())
        self.target.requires_grad_(False)
        self.optimizer = torch.optim.Adam(
            self.online.parameters(), lr=config.learning_rate, eps=config.adam_epsilon, foreach=True
        )
        self.updates = 0

    def importance_exponent(self) -> float:
        return importance_exponent(self._config, self.updates)

    def update(self, columns: Columns, importance_weights: NDArray[np.float32]) -> UpdateResult:
        """One gradient step on a sampled batch; returns the new priorities |TD| of its items."""
        device = self.device
        batch = DqnBatch(
            observation=to_device(columns["observation"], device),
            action=to_device(columns["action"], device, torch.int64),
            reward=to_device(columns["reward"], device, torch.float32),
            discount=to_device(columns["discount"], device, torch.float32),
            next_observation=to_device(columns["next_observation"], device),
        )
        result = double_q_loss(
            self.online,
            self.target,
            batch,
            to_device(importance_weights, device, torch.float32),
            self._config.huber_delta,
        )
        self.optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(result.loss)
        average_gradients(self.online.parameters())
        torch.nn.utils.clip_grad_norm_(self.online.parameters(), self._config.gradient_clip_norm)
        self.optimizer.step()
        self.updates += 1
        if self.updates % self._config.target_update_interval == 0:
            self.target.load_state_dict(self.online.state_dict())
        return UpdateResult(loss=float(result.loss.detach()), priorities=priorities_from_td(result.td_errors))

    def actor_parameters(self) -> dict[str, torch.Tensor]:
        """The online Q network: actors act with it and score their transitions with it."""
        return dict(self.online.state_dict())

    def policy_parameters(self) -> dict[str, torch.Tensor]:
        """The same network: acting greedily needs the Q values."""
        return self.actor_parameters()

    def _training_parts(self) -> tuple[dict[str, torch.nn.Module], dict[str, torch.optim.Optimizer]]:
        return {"online": self.online, "target": self.target}, {"optimizer": self.optimizer}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Everything a checkpoint needs to resume training exactly: networks and Adam moments."""
        return training_tensors(*self._training_parts())

    def load_state_tensors(self, tensors: Mapping[str, torch.Tensor], updates: int) -> None:
        """Restores :meth:`state_tensors`; KeyError or RuntimeError if they do not fit these networks."""
        load_training_tensors(tensors, *self._training_parts())
        self.updates = updates
