"""TD3 as the services see it: its noise ladder, learner and policy."""

from __future__ import annotations

import torch

from apexrl.learner.v1 import learner_pb2
from services.algorithms.actions import ActionScaler, box_actions
from services.algorithms.actor_critic import Critic, DeterministicPolicy
from services.algorithms.actor_critic_config import ActorCriticNetworkConfig
from services.algorithms.interface import ExplorationKind, ExplorationSetting
from services.algorithms.ladder import log_ladder
from services.algorithms.td3.acting import Td3Policy
from services.algorithms.td3.config import Td3Config
from services.algorithms.td3.learning import Td3Learner
from services.common.environments import EnvironmentSpec


class Td3Family:
    """Continuous (Box) actions only; actors explore with Gaussian action noise, one scale per rung."""

    name = "td3"
    wire_algorithm = Td3Config.wire_algorithm
    exploration_kind: ExplorationKind = "action_noise_scale"

    def check_environment(self, environment: EnvironmentSpec) -> None:
        box_actions(environment, "TD3")

    def exploration(self, config: Td3Config, rung: int) -> ExplorationSetting:
        ladder = config.exploration
        scale = log_ladder(rung, highest=ladder.highest_noise_scale, lowest=ladder.lowest_noise_scale)
        return ExplorationSetting("action_noise_scale", scale)

    def make_learner(
        self, config: Td3Config, environment: EnvironmentSpec, device: torch.device, seed: int
    ) -> Td3Learner:
        actions = box_actions(environment, "TD3")
        return Td3Learner(config, environment.observation_shape, actions, device, seed)

    def make_policy(self, network: learner_pb2.NetworkSpec, environment: EnvironmentSpec) -> Td3Policy:
        config = ActorCriticNetworkConfig.from_wire(network)
        scaler = ActionScaler.from_box(box_actions(environment, "TD3"))
        shape = environment.observation_shape
        return Td3Policy(
            DeterministicPolicy(shape, scaler.size, config.hidden_sizes),
            Critic(shape, scaler.size, config.critic_hidden_sizes),
            scaler,
        )
