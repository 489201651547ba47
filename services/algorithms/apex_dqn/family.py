"""Ape-X DQN as the services see it: its wire network spec, epsilon ladder, learner and policy."""

from __future__ import annotations

import torch

from apexrl.learner.v1 import learner_pb2
from services.algorithms.apex_dqn.acting import DqnPolicy
from services.algorithms.apex_dqn.config import ApexDqnConfig, DqnNetworkConfig, EpsilonLadderConfig
from services.algorithms.apex_dqn.learning import DqnLearner
from services.algorithms.apex_dqn.networks import QNetwork
from services.algorithms.interface import ExplorationKind, ExplorationSetting
from services.algorithms.ladder import log_ladder
from services.common.environments import DiscreteActions, EnvironmentSpec


def ladder_epsilon(rung: int, ladder: EpsilonLadderConfig) -> float:
    """Ape-X's epsilon = base ** (1 + exponent * f(rung)): rung 0 is 0.4, rung 1 is 0.4^4.5, ..."""
    base = ladder.base_epsilon
    return log_ladder(rung, highest=base, lowest=base ** (1.0 + ladder.exponent))


def _action_count(environment: EnvironmentSpec) -> int:
    if not isinstance(environment.actions, DiscreteActions):
        raise ValueError(f"Ape-X DQN needs a discrete action space, got {environment.actions}")
    return environment.actions.count


class ApexDqnFamily:
    """Discrete actions only; actors explore epsilon-greedily, one epsilon per ladder rung."""

    name = "apex_dqn"
    wire_algorithm = ApexDqnConfig.wire_algorithm
    exploration_kind: ExplorationKind = "epsilon"

    def check_environment(self, environment: EnvironmentSpec) -> None:
        _action_count(environment)

    def exploration(self, config: ApexDqnConfig, rung: int) -> ExplorationSetting:
        return ExplorationSetting("epsilon", ladder_epsilon(rung, config.exploration))

    def make_learner(
        self, config: ApexDqnConfig, environment: EnvironmentSpec, device: torch.device, seed: int
    ) -> DqnLearner:
        return DqnLearner(config, environment.observation_shape, _action_count(environment), device, seed)

    def make_policy(self, network: learner_pb2.NetworkSpec, environment: EnvironmentSpec) -> DqnPolicy:
        q_network = QNetwork(
            DqnNetworkConfig.from_wire(network), environment.observation_shape, _action_count(environment)
        )
        return DqnPolicy(q_network)
