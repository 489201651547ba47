"""The ``algorithm`` section of a TD3 experiment, and its ladder of exploration noise scales.

Actor rung r explores with Gaussian noise of std ``log_ladder(r, highest, lowest)`` in unit
action space, that is relative to half the range of each action dimension, and clips the
noisy action to [-1, 1] before rescaling it to the environment's bounds. Rung 0 explores
most; later rungs fill in the range down to ``lowest_noise_scale`` geometrically, spread
well for any number of actors (``ladder.py``). Ape-X DPG (Horgan et al. 2018) likewise
varies the exploration noise across actors.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from apexrl.learner.v1 import learner_pb2
from services.algorithms.actor_critic_config import ActorCriticNetworkConfig
from services.common.config import StrictModel
from services.common.experiment import OffPolicyConfig


class NoiseLadderConfig(StrictModel):
    """Exploration noise std per rung, geometrically between the highest (rung 0) and the lowest."""

    highest_noise_scale: float = Field(0.3, gt=0, description="Noise std of rung 0, unit action space.")
    lowest_noise_scale: float = Field(0.05, gt=0, description="Noise std the later rungs approach.")

    @model_validator(mode="after")
    def _lowest_at_most_highest(self) -> NoiseLadderConfig:
        if self.lowest_noise_scale > self.highest_noise_scale:
            raise ValueError(
                f"lowest_noise_scale ({self.lowest_noise_scale}) must not exceed "
                f"highest_noise_scale ({self.highest_noise_scale})"
            )
        return self


class Td3Config(OffPolicyConfig):
    """TD3: twin critics, delayed policy and target updates, target smoothing; the paper's defaults."""

    wire_algorithm: ClassVar[learner_pb2.Algorithm.ValueType] = learner_pb2.ALGORITHM_TD3

    name: Literal["td3"] = Field("td3", description="The algorithm family.")
    policy_learning_rate: float = Field(1e-3, gt=0, le=1, description="Adam's step size for the policy.")
    critic_learning_rate: float = Field(1e-3, gt=0, le=1, description="Adam's step size for the critics.")
    target_update_rate: float = Field(0.005, gt=0, le=1, description="tau of the polyak target updates.")
    policy_delay: int = Field(2, ge=1, description="Critic updates per policy and target update.")
    target_noise: float = Field(0.2, ge=0, description="Std of the target policy smoothing noise (unit).")
    target_noise_clip: float = Field(0.5, ge=0, description="The smoothing noise is clipped to +-this.")
    network: ActorCriticNetworkConfig = ActorCriticNetworkConfig()
    exploration: NoiseLadderConfig = NoiseLadderConfig()
