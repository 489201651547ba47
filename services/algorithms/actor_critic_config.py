"""The network settings of the actor-critic families (TD3, SAC) and their wire codec."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from apexrl.learner.v1 import learner_pb2
from services.algorithms.wire import torso_kind_from_wire, torso_kind_to_wire
from services.common.config import StrictModel
from services.common.experiment import LayerWidths


class ActorCriticNetworkConfig(StrictModel):
    """The policy's and each critic's fully connected widths; vector observations only for now.

    TD3 and SAC share it. It lives apart from the networks (``actor_critic.py``) because
    config modules stay free of torch, for the launcher's sake.
    """

    kind: Literal["mlp"] = Field("mlp", description="Torso of the policy and critics (an MLP).")
    hidden_sizes: LayerWidths = Field((256, 256), description="The policy's hidden widths.")
    critic_hidden_sizes: LayerWidths = Field((256, 256), description="Each critic's hidden widths.")

    def to_wire(self) -> learner_pb2.NetworkSpec:
        return learner_pb2.NetworkSpec(
            kind=torso_kind_to_wire(self.kind),
            hidden_sizes=self.hidden_sizes,
            critic_hidden_sizes=self.critic_hidden_sizes,
        )

    @classmethod
    def from_wire(cls, network: learner_pb2.NetworkSpec) -> ActorCriticNetworkConfig:
        """The config a wire spec stands for, validated as the learner's was (ValueError otherwise)."""
        return cls.model_validate(
            {
                "kind": torso_kind_from_wire(network.kind),
                "hidden_sizes": tuple(network.hidden_sizes),
                "critic_hidden_sizes": tuple(network.critic_hidden_sizes),
            }
        )
