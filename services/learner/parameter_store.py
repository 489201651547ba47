"""Versioned network parameters: published by the trainer, pulled or watched by any number of clients."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping

import torch

from apexrl.common.v1 import tensor_pb2
from services.common import parameter_codec


class ParameterStore:
    """Keeps the latest versions encoded once, so serving a pull costs no re-encoding.

    Versions count up from 1 and continue across learner restarts (the trainer
    starts from the checkpointed version). The last ``keep_versions`` stay
    available so an evaluation of an older version can still save that model.
    Each version holds the actors' parameter set and the policy's (the same message
    when the policy is all actors need).
    """

    def __init__(self, first_version: int = 0, keep_versions: int = 64) -> None:
        self._condition = threading.Condition()
        self._version = first_version
        self._versions: OrderedDict[int, tensor_pb2.NamedTensors] = OrderedDict()
        self._policies: dict[int, tensor_pb2.NamedTensors] = {}
        self._updates: dict[int, int] = {}
        self._keep = keep_versions
        self._closed = False

    @property
    def version(self) -> int:
        with self._condition:
            return self._version

    def publish(
        self,
        actor_parameters: Mapping[str, torch.Tensor],
        policy_parameters: Mapping[str, torch.Tensor],
        updates: int,
    ) -> int:
        """Encodes and publishes a new version, trained by ``updates`` updates; wakes every watcher."""
        message = parameter_codec.to_wire(actor_parameters)
        policy = message
        if policy_parameters.keys() != actor_parameters.keys():
            policy = parameter_codec.to_wire(policy_parameters)
        with self._condition:
            self._version += 1
            self._versions[self._version] = message
            self._policies[self._version] = policy
            self._updates[self._version] = updates
            while len(self._versions) > self._keep:
                dropped, _ = self._versions.popitem(last=False)
                del self._policies[dropped], self._updates[dropped]
            self._condition.notify_all()
            return self._version

    def latest(self, policy_only: bool = False) -> tuple[int, tensor_pb2.NamedTensors | None]:
        """The latest version and its parameters (None before the first publish)."""
        with self._condition:
            return self._version, self._held(self._version, policy_only)

    def _held(self, version: int, policy_only: bool) -> tensor_pb2.NamedTensors | None:
        return (self._policies if policy_only else self._versions).get(version)

    def get(self, version: int) -> tensor_pb2.NamedTensors | None:
        """The parameters of a recent version, or None if it was dropped or never published."""
        with self._condition:
            return self._versions.get(version)

    def updates_of(self, version: int) -> int | None:
        """The learner updates behind a recent version, or None if it was dropped or never published."""
        with self._condition:
            return self._updates.get(version)

    def wait_newer(
        self, known_version: int, timeout_s: float, policy_only: bool = False
    ) -> tuple[int, tensor_pb2.NamedTensors | None]:
        """Blocks until a version newer than ``known_version`` exists, the store closes, or the timeout."""
        with self._condition:
            self._condition.wait_for(
                lambda: self._closed or (self._version > known_version and self._version in self._versions),
                timeout=timeout_s,
            )
            if self._version > known_version:
                return self._version, self._held(self._version, policy_only)
            return self._version, None

    @property
    def closed(self) -> bool:
        with self._condition:
            return self._closed

    def close(self) -> None:
        """Ends every watch (the learner is draining)."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()
