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
    """

    def __init__(self, first_version: int = 0, keep_versions: int = 64) -> None:
        self._condition = threading.Condition()
        self._version = first_version
        self._versions: OrderedDict[int, tensor_pb2.NamedTensors] = OrderedDict()
        self._keep = keep_versions
        self._closed = False

    @property
    def version(self) -> int:
        with self._condition:
            return self._version

    def publish(self, state_dict: Mapping[str, torch.Tensor]) -> int:
        """Encodes and publishes a new version; wakes every watcher."""
        message = parameter_codec.to_wire(state_dict)
        with self._condition:
            self._version += 1
            self._versions[self._version] = message
            while len(self._versions) > self._keep:
                self._versions.popitem(last=False)
            self._condition.notify_all()
            return self._version

    def latest(self) -> tuple[int, tensor_pb2.NamedTensors | None]:
        """The latest version and its parameters (None before the first publish)."""
        with self._condition:
            return self._version, self._versions.get(self._version)

    def get(self, version: int) -> tensor_pb2.NamedTensors | None:
        """The parameters of a recent version, or None if it was dropped or never published."""
        with self._condition:
            return self._versions.get(version)

    def wait_newer(self, known_version: int, timeout_s: float) -> tuple[int, tensor_pb2.NamedTensors | None]:
        """Blocks until a version newer than ``known_version`` exists, the store closes, or the timeout."""
        with self._condition:
            self._condition.wait_for(
                lambda: self._closed or (self._version > known_version and self._version in self._versions),
                timeout=timeout_s,
            )
            if self._version > known_version:
                return self._version, self._versions.get(self._version)
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
