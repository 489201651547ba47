"""The ``algorithm`` section of an Ape-X DQN experiment."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from apexrl.learner.v1 import learner_pb2
from services.algorithms.wire import torso_kind_from_wire, torso_kind_to_wire
from services.common.config import StrictModel
from services.common.experiment import LayerWidths, OffPolicyConfig


class DqnNetworkConfig(StrictModel):
    """The Q network: torso family, hidden widths, dueling head."""

    kind: Literal["mlp", "nature_cnn"] = Field(
        "mlp", description="Torso: an MLP, or the Nature CNN for stacked 84x84 frames."
    )
    hidden_sizes: LayerWidths = Field((256, 256), description="Fully connected widths after the torso.")
    dueling: bool = Field(True, description="Value and advantage streams (Wang et al. 2016).")

    def to_wire(self) -> learner_pb2.NetworkSpec:
        return learner_pb2.NetworkSpec(
            kind=torso_kind_to_wire(self.kind), hidden_sizes=self.hidden_sizes, dueling=self.dueling
        )

    @classmethod
    def from_wire(cls, network: learner_pb2.NetworkSpec) -> DqnNetworkConfig:
        """The config a wire spec stands for, validated as the learner's was."""
        return cls(
            kind=torso_kind_from_wire(network.kind),
            hidden_sizes=tuple(network.hidden_sizes),
            dueling=network.dueling,
        )


class EpsilonLadderConfig(StrictModel):
    """The epsilon ladder: actor rung r acts with epsilon = base ** (1 + exponent * f(r)), f in [0, 1)."""

    base_epsilon: float = Field(0.4, gt=0, le=1, description="epsilon of the first rung (Ape-X: 0.4).")
    exponent: float = Field(
        7.0,
        ge=0,
        description="Rungs explore with base_epsilon^(1 + exponent * f), f in [0, 1) filled in rung by rung.",
    )


class ApexDqnConfig(OffPolicyConfig):
    """Ape-X DQN: double Q-learning, dueling head, n-step returns, prioritized replay."""

    wire_algorithm: ClassVar[learner_pb2.Algorithm.ValueType] = learner_pb2.ALGORITHM_APEX_DQN

    name: Literal["apex_dqn"] = Field("apex_dqn", description="The algorithm family.")
    learning_rate: float = Field(1e-3, gt=0, le=1, description="Adam's step size.")
    adam_epsilon: float = Field(1.5e-4, gt=0, description="Adam's epsilon.")
    target_update_interval: int = Field(250, ge=1, description="Updates between target network copies.")
    gradient_clip_norm: float = Field(10.0, gt=0, description="Gradients are clipped to this global norm.")
    huber_delta: float = Field(1.0, gt=0, description="TD errors beyond this are penalized linearly.")
    network: DqnNetworkConfig = DqnNetworkConfig()
    exploration: EpsilonLadderConfig = EpsilonLadderConfig()
