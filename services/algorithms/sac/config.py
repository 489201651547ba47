"""The ``algorithm`` section of a SAC experiment, and its ladder of sampling temperatures.

SAC explores by sampling its own stochastic policy, so by default every actor samples it
as is (both ends of the ladder 1.0). What the ladder can vary per actor is a multiplier of
the policy's standard deviation when sampling, a = tanh(mean + multiplier * std * eps):
rung r uses ``log_ladder(r, highest, lowest)``, rung 0 the highest, later rungs filling in
geometrically towards the lowest for any number of actors (``ladder.py``). Multipliers other
than 1 make the actors' behaviour differ from the policy being learned, which off-policy
learning tolerates; the learner always samples the policy itself.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from apexrl.learner.v1 import learner_pb2
from services.algorithms.actor_critic_config import ActorCriticNetworkConfig
from services.common.config import StrictModel
from services.common.experiment import OffPolicyConfig


class TemperatureLadderConfig(StrictModel):
    """Multipliers of the policy's std when actors sample: rung 0 the highest, down to the lowest."""

    highest_temperature: float = Field(1.0, gt=0, description="Std multiplier of rung 0.")
    lowest_temperature: float = Field(1.0, gt=0, description="Std multiplier the later rungs approach.")

    @model_validator(mode="after")
    def _lowest_at_most_highest(self) -> TemperatureLadderConfig:
        if self.lowest_temperature > self.highest_temperature:
            raise ValueError(
                f"lowest_temperature ({self.lowest_temperature}) must not exceed "
                f"highest_temperature ({self.highest_temperature})"
            )
        return self


class SacConfig(OffPolicyConfig):
    """SAC with a learned temperature alpha (Haarnoja et al. 2018, "SAC: algorithms and applications")."""

    wire_algorithm: ClassVar[learner_pb2.Algorithm.ValueType] = learner_pb2.ALGORITHM_SAC

    name: Literal["sac"] = Field("sac", description="The algorithm family.")
    policy_learning_rate: float = Field(1e-3, gt=0, le=1, description="Adam's step size for the policy.")
    critic_learning_rate: float = Field(1e-3, gt=0, le=1, description="Adam's step size for the critics.")
    temperature_learning_rate: float = Field(
        1e-3, gt=0, le=1, description="Adam's step size for the entropy temperature."
    )
    target_update_rate: float = Field(0.005, gt=0, le=1, description="tau of the polyak target updates.")
    initial_temperature: float = Field(1.0, gt=0, description="alpha before learning (SB3's 'auto' too).")
    target_entropy: float | None = Field(
        None, description="The entropy alpha steers towards; None = -(action dimensions)."
    )
    network: ActorCriticNetworkConfig = ActorCriticNetworkConfig()
    exploration: TemperatureLadderConfig = TemperatureLadderConfig()
