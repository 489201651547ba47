"""The parameter store: the last keep_versions versions held; waits for a version newer than the caller's."""

from __future__ import annotations

import threading
import time

import numpy as np
import torch

from apexrl.common.v1 import tensor_pb2
from services.common import tensor_codec
from services.learner.parameter_store import ParameterStore


def state(value: float) -> dict[str, torch.Tensor]:
    return {"layer.weight": torch.full((2, 3), value), "layer.bias": torch.full((2,), -value)}


def publish(store: ParameterStore, value: float) -> int:
    """A version whose policy is all an actor needs (as for Ape-X DQN), trained by no updates."""
    parameters = state(value)
    return store.publish(parameters, parameters, updates=0)


def weight(message: tensor_pb2.NamedTensors | None) -> float:
    assert message is not None
    arrays = tensor_codec.decode_named(message)
    np.testing.assert_array_equal(arrays["layer.bias"], -arrays["layer.weight"][:, 0])
    return float(arrays["layer.weight"][0, 0])


class Waiter:
    """``store.wait_newer(known, timeout_s)`` on its own thread, timed."""

    def __init__(self, store: ParameterStore, known: int, timeout_s: float) -> None:
        self.result: tuple[int, tensor_pb2.NamedTensors | None] | None = None
        self.returned_at = float("nan")
        self._thread = threading.Thread(target=self._wait, args=(store, known, timeout_s), daemon=True)
        self._thread.start()

    def _wait(self, store: ParameterStore, known: int, timeout_s: float) -> None:
        self.result = store.wait_newer(known, timeout_s)
        self.returned_at = time.monotonic()

    def still_waiting_after(self, seconds: float) -> bool:
        self._thread.join(timeout=seconds)
        return self._thread.is_alive()

    def join(self, timeout_s: float = 30.0) -> tuple[int, tensor_pb2.NamedTensors | None]:
        self._thread.join(timeout=timeout_s)
        assert self.result is not None, "wait_newer did not return"
        return self.result


def test_the_last_keep_versions_are_held_and_versions_continue_from_the_first() -> None:
    store = ParameterStore(first_version=10, keep_versions=3)
    assert store.latest() == (10, None)
    assert store.get(10) is None
    published = [publish(store, float(value)) for value in range(1, 6)]
    assert published == [11, 12, 13, 14, 15]
    assert store.version == 15
    assert [store.get(version) is None for version in range(10, 17)] == [
        True,  # 10: never published here (a checkpoint's version)
        True,  # 11, 12: dropped
        True,
        False,  # 13, 14, 15: the last three
        False,
        False,
        True,  # 16: not yet
    ]
    assert [weight(store.get(version)) for version in (13, 14, 15)] == [3.0, 4.0, 5.0]
    version, latest = store.latest()
    assert version == 15
    assert weight(latest) == 5.0


def test_a_wait_for_a_newer_version_returns_at_once_when_one_exists_and_wakes_on_a_publish() -> None:
    store = ParameterStore(keep_versions=4)
    publish(store, 1.0)
    publish(store, 2.0)
    started = time.monotonic()
    version, parameters = store.wait_newer(1, timeout_s=30)
    assert (version, weight(parameters)) == (2, 2.0)
    assert time.monotonic() - started < 5

    waiter = Waiter(store, known=2, timeout_s=60)
    assert waiter.still_waiting_after(0.2)  # version 2 is the caller's: nothing newer yet
    published_at = time.monotonic()
    publish(store, 3.0)
    version, parameters = waiter.join()
    assert (version, weight(parameters)) == (3, 3.0)
    assert waiter.returned_at - published_at < 5  # woken by the publish, not its 60 s timeout


def test_a_wait_times_out_with_no_parameters_and_close_ends_it() -> None:
    store = ParameterStore()
    started = time.monotonic()
    assert store.wait_newer(0, timeout_s=0.2) == (0, None)  # nothing published yet
    publish(store, 1.0)
    assert store.wait_newer(1, timeout_s=0.2) == (1, None)
    assert time.monotonic() - started >= 0.4

    waiter = Waiter(store, known=1, timeout_s=60)
    assert waiter.still_waiting_after(0.2)
    closed_at = time.monotonic()
    store.close()
    assert waiter.join() == (1, None)
    assert waiter.returned_at - closed_at < 5
    assert store.closed


def test_a_caller_ahead_of_the_store_gets_nothing_until_the_store_passes_its_version() -> None:
    """A client holding version 7 of an earlier learner (say one that crashed after its last
    checkpoint at version 4): the store compares numbers only, so versions 5 to 7 of this
    learner are not newer for it, and it waits until version 8.
    """
    store = ParameterStore(first_version=4, keep_versions=8)
    publish(store, 5.0)  # version 5
    assert store.wait_newer(7, timeout_s=0.1) == (5, None)
    waiter = Waiter(store, known=7, timeout_s=60)
    publish(store, 6.0)
    publish(store, 7.0)
    assert waiter.still_waiting_after(0.2)
    publish(store, 8.0)
    version, parameters = waiter.join()
    assert (version, weight(parameters)) == (8, 8.0)
