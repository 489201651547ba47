"""The Ape-X DQN learner core: online and target networks, Adam, one prioritized update at a time."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from services.common.experiment import AlgorithmConfig
from services.common.networks import NetworkSpec, QNetwork, build_q_network
from services.learner.losses import DqnBatch, double_q_loss, new_priorities


@dataclass(frozen=True)
class UpdateResult:
    loss: float
    priorities: NDArray[np.float64]


def network_spec(config: AlgorithmConfig) -> NetworkSpec:
    network = config.network
    return NetworkSpec(kind=network.kind, hidden_sizes=tuple(network.hidden_sizes), dueling=network.dueling)


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda`` or ``auto`` (cuda when available); ValueError for cuda without a GPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("general.device is 'cuda' but torch sees no CUDA device; use 'cpu' or 'auto'")
    return torch.device(name)


class DqnLearner:
    """Double Q-learning with n-step targets and importance weights (Horgan et al. 2018)."""

    def __init__(
        self,
        config: AlgorithmConfig,
        observation_shape: tuple[int, ...],
        num_actions: int,
        device: torch.device,
        seed: int,
    ) -> None:
        torch.manual_seed(seed)
        self._config = config
        self.device = device
        spec = network_spec(config)
        self.online: QNetwork = build_q_network(spec, observation_shape, num_actions).to(device)
        self.target: QNetwork = build_q_network(spec, observation_shape, num_actions).to(device)
        self.target.load_state_dict(self.online.state_dict())
        self.target.requires_grad_(False)
        self.optimizer = torch.optim.Adam(
            self.online.parameters(), lr=config.learning_rate, eps=config.adam_epsilon, foreach=True
        )
        self.updates = 0

    def importance_exponent(self) -> float:
        """beta, annealed linearly from its start value to 1 (Schaul et al. 2016)."""
        start = self._config.importance_exponent_start
        progress = min(1.0, self.updates / self._config.importance_annealing_updates)
        return start + (1.0 - start) * progress

    def _tensor(self, array: NDArray[Any], dtype: torch.dtype | None = None) -> torch.Tensor:
        tensor = torch.from_numpy(np.asarray(array))
        return tensor.to(self.device, dtype=dtype, non_blocking=True)

    def update(
        self, columns: Mapping[str, NDArray[Any]], importance_weights: NDArray[np.float32]
    ) -> UpdateResult:
        """One gradient step on a sampled batch; returns the new priorities |TD| of its items."""
        batch = DqnBatch(
            observation=self._tensor(columns["observation"]),
            action=self._tensor(columns["action"], torch.int64),
            reward=self._tensor(columns["reward"], torch.float32),
            discount=self._tensor(columns["discount"], torch.float32),
            next_observation=self._tensor(columns["next_observation"]),
        )
        result = double_q_loss(
            self.online,
            self.target,
            batch,
            self._tensor(importance_weights, torch.float32),
            self._config.huber_delta,
        )
        self.optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(result.loss)
        torch.nn.utils.clip_grad_norm_(self.online.parameters(), self._config.gradient_clip_norm)
        self.optimizer.step()
        self.updates += 1
        if self.updates % self._config.target_update_interval == 0:
            self.target.load_state_dict(self.online.state_dict())
        return UpdateResult(
            loss=float(result.loss.detach()),
            priorities=new_priorities(result.td_errors),
        )

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Everything a checkpoint needs to resume training exactly: networks and Adam moments."""
        tensors = {f"online.{k}": v for k, v in self.online.state_dict().items()}
        tensors.update({f"target.{k}": v for k, v in self.target.state_dict().items()})
        for index, state in self.optimizer.state_dict()["state"].items():
            for name, value in state.items():
                tensors[f"optimizer.{index}.{name}"] = torch.as_tensor(value)
        return tensors

    def load_state_tensors(self, tensors: Mapping[str, torch.Tensor], updates: int) -> None:
        """Restores :meth:`state_tensors`; KeyError or RuntimeError if they do not fit these networks."""

        def part(prefix: str) -> dict[str, torch.Tensor]:
            return {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}

        self.online.load_state_dict(part("online."))
        self.target.load_state_dict(part("target."))
        optimizer_state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in part("optimizer.").items():
            index, name = key.split(".", 1)
            optimizer_state.setdefault(int(index), {})[name] = value
        current = self.optimizer.state_dict()
        self.optimizer.load_state_dict({"state": optimizer_state, "param_groups": current["param_groups"]})
        self.updates = updates
