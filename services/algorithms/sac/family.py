"""SAC as the services see it: its temperature ladder, learner and policy."""

from __future__ import annotations

import torch

from apexrl.learner.v1 import learner_pb2
from services.algorithms.actions import ActionScaler, box_actions
from services.algorithms.actor_critic import Critic, SquashedGaussianPolicy
from services.algorithms.actor_critic_config import ActorCriticNetworkConfig
from services.algorithms.interface import ExplorationKind, ExplorationSetting
from services.algorithms.ladder import log_ladder
from services.algorithms.sac.acting import SacPolicy
from services.algorithms.sac.config import SacConfig
from services.algorithms.sac.learning import SacLearner
from services.common.environments import EnvironmentSpec


class SacFamily:
    """Continuous (Box) actions only; actors sample the policy, its std scaled by the rung's temperature."""

    name = "sac"
    wire_algorithm = SacConfig.wire_algorithm
    exploration_kind: ExplorationKind = "policy_temperature"

    def check_environment(self, environment: EnvironmentSpec) -> None:
        box_actions(environment, "SAC")

    def exploration(self, config: SacConfig, rung: int) -> ExplorationSetting:
        ladder = config.exploration
        temperature = log_ladder(rung, highest=ladder.highest_temperature, lowest=ladder.lowest_temperature)
        return ExplorationSetting("policy_temperature", temperature)

    def make_learner(
        self, config: SacConfig, environment: EnvironmentSpec, device: torch.device, seed: int
    ) -> SacLearner:
        actions = box_actions(environment, "SAC")
        return SacLearner(config, environment.observation_shape, actions, device, seed)

    def make_policy(self, network: learner_pb2.NetworkSpec, environment: EnvironmentSpec) -> SacPolicy:
        config = ActorCriticNetworkConfig.from_wire(network)
        scaler = ActionScaler.from_box(box_actions(environment, "SAC"))
        shape = environment.observation_shape
        return SacPolicy(
            SquashedGaussianPolicy(shape, scaler.size, config.hidden_sizes),
            Critic(shape, scaler.size, config.critic_hidden_sizes),
            scaler,
        )
