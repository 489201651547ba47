"""Versioned network parameters: published by the trainer, pulled or watched by any number of clients."""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping

import torch

from apexrl.common.v1 import tensor_pb2
from services.common import parameter_codec


class ParameterStore:
    """Keeps the latest versions encoded once, so serving a pull costs no re-encoding.

    Versions count up from 1 and continue across learner restarts (the trainer
    starts from the checkpointed version). A learner killed after its last
    checkpoint publishes some numbers again, so each store names its own
    ``lineage`` (random, one per learner start): a (lineage, version) pair never
    names two different sets of parameters. The last ``keep_versions`` stay
    available so an evaluation of an older version can still save that model.
    Each version holds the actors' parameter set and the policy's (the same message
    when the policy is all actors need).
    """

    def __init__(self, first_version: int = 0, keep_versions: int = 64) -> None:
        if keep_versions < 1:
            raise ValueError(f"keep_versions must be >= 1, got {keep_versions}")
        self.lineage = uuid.uuid4().hex
        self._listeners: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._version = first_version
        self._versions: OrderedDict[int, tensor_pb2.NamedTensors] = OrderedDict()
        self._policies: dict[int, tensor_pb2.NamedTensors] = {}
        self._updates: dict[int, int] = {}
        self._keep = keep_versions
        self._closed = False

    @property
    def version(self) -> int:
        with self._lock:
            return self._version

    def publish(
        self,
        actor_parameters: Mapping[str, torch.Tensor],
        policy_parameters: Mapping[str, torch.Tensor],
        updates: int,
    ) -> int:
        """Encodes and publishes a new version, trained by ``updates`` updates; tells every listener."""
        message = parameter_codec.to_wire(actor_parameters)
        policy = message
        if policy_parameters.keys() != actor_parameters.keys():
            policy = parameter_codec.to_wire(policy_parameters)
        with self._lock:
            self._version += 1
            self._versions[self._version] = message
            self._policies[self._version] = policy
            self._updates[self._version] = updates
            while len(self._versions) > self._keep:
                dropped, _ = self._versions.popitem(last=False)
                del self._policies[dropped], self._updates[dropped]
            version = self._version
        self._tell_listeners()
        return version

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Calls ``listener()`` after each publish and on close, on the caller's thread: it must not block."""
        with self._lock:
            self._listeners.append(listener)

    def _tell_listeners(self) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            listener()

    def latest(self, policy_only: bool = False) -> tuple[int, tensor_pb2.NamedTensors | None]:
        """The latest version and its parameters (None before the first publish)."""
        with self._lock:
            return self._version, self._held(self._version, policy_only)

    def _held(self, version: int, policy_only: bool) -> tensor_pb2.NamedTensors | None:
        return (self._policies if policy_only else self._versions).get(version)

    def get(self, version: int) -> tensor_pb2.NamedTensors | None:
        """The parameters of a recent version, or None if it was dropped or never published."""
        with self._lock:
            return self._versions.get(version)

    def updates_of(self, version: int) -> int | None:
        """The learner updates behind a recent version, or None if it was dropped or never published."""
        with self._lock:
            return self._updates.get(version)

    @property
    def closed(self) -> bool:
        with self._lock:
            return self._closed

    def close(self) -> None:
        """Ends every watch (the learner is draining)."""
        with self._lock:
            self._closed = True
        self._tell_listeners()
