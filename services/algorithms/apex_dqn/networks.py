"""Q-networks for discrete actions: a shared torso and a plain or dueling head."""

from __future__ import annotations

import torch
from torch import nn

from services.algorithms.apex_dqn.config import DqnNetworkConfig
from services.algorithms.torsos import MlpTorso, NatureCnnTorso, build_torso


class DuelingHead(nn.Module):
    """Wang et al. (2016): Q(s, a) = V(s) + A(s, a) - mean_a' A(s, a'), from separate linear streams."""

    def __init__(self, in_features: int, num_actions: int) -> None:
        super().__init__()
        self.value = nn.Linear(in_features, 1)
        self.advantage = nn.Linear(in_features, num_actions)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        value: torch.Tensor = self.value(features)
        advantage: torch.Tensor = self.advantage(features)
        # Subtracting the mean advantage makes V and A identifiable (the paper's equation 9).
        return value + advantage - advantage.mean(dim=1, keepdim=True)


class QNetwork(nn.Module):
    """Q-values for discrete actions: a torso (MLP or Nature CNN) and a plain or dueling head.

    Learner, actors and evaluator all build it from the same :class:`DqnNetworkConfig`,
    so they agree on every parameter name.
    """

    def __init__(
        self, config: DqnNetworkConfig, observation_shape: tuple[int, ...], num_actions: int
    ) -> None:
        super().__init__()
        if num_actions < 1:
            raise ValueError(f"num_actions must be at least 1, got {num_actions}")
        self.config = config
        self.observation_shape = tuple(observation_shape)
        self.num_actions = num_actions
        self.torso: MlpTorso | NatureCnnTorso = build_torso(
            config.kind, self.observation_shape, tuple(config.hidden_sizes)
        )
        self.head: DuelingHead | nn.Linear
        if config.dueling:
            self.head = DuelingHead(self.torso.output_size, num_actions)
        else:
            self.head = nn.Linear(self.torso.output_size, num_actions)

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        """[B, *observation_shape] observations -> [B, num_actions] float32 Q-values."""
        if tuple(observations.shape[1:]) != self.observation_shape:
            raise ValueError(
                f"expected observations of shape [B, *{self.observation_shape}], "
                f"got {tuple(observations.shape)}"
            )
        q_values: torch.Tensor = self.head(self.torso(observations))
        return q_values
