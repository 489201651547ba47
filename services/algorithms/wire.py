"""The wire forms of what every family shares: torso kinds and exploration settings."""

from __future__ import annotations

from typing import Literal

from apexrl.learner.v1 import learner_pb2
from services.algorithms.interface import ExplorationSetting

TorsoKind = Literal["mlp", "nature_cnn"]

_TORSO_KINDS: dict[TorsoKind, learner_pb2.NetworkKind.ValueType] = {
    "mlp": learner_pb2.NETWORK_KIND_MLP,
    "nature_cnn": learner_pb2.NETWORK_KIND_NATURE_CNN,
}


def torso_kind_to_wire(kind: TorsoKind) -> learner_pb2.NetworkKind.ValueType:
    return _TORSO_KINDS[kind]


def torso_kind_from_wire(kind: learner_pb2.NetworkKind.ValueType) -> TorsoKind:
    """The config name of a wire NetworkKind; ValueError for unknown kinds."""
    for name, value in _TORSO_KINDS.items():
        if value == kind:
            return name
    raise ValueError(f"unknown network kind {kind}")


def exploration_to_wire(setting: ExplorationSetting | None, rung: int | None) -> learner_pb2.Exploration:
    """The oneof field named like the setting's kind; nothing set for deterministic clients."""
    message = learner_pb2.Exploration(rung=rung or 0)
    if setting is not None:
        setattr(message, setting.kind, setting.value)
    return message


def exploration_from_wire(message: learner_pb2.Exploration) -> ExplorationSetting | None:
    """The setting an actor was given, or None when the learner set none."""
    kind = message.WhichOneof("setting")
    if kind is None:
        return None
    return ExplorationSetting(kind, getattr(message, kind))
