"""The parameter store: the last keep_versions versions held, listeners told of each publish, lineages."""

from __future__ import annotations

import numpy as np
import pytest
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


def test_listeners_hear_every_publish_and_the_close() -> None:
    store = ParameterStore()
    heard: list[tuple[int, bool]] = []
    store.add_listener(lambda: heard.append((store.version, store.closed)))
    publish(store, 1.0)
    publish(store, 2.0)
    store.close()
    assert heard == [(1, False), (2, False), (2, True)]


def test_each_store_names_its_own_lineage() -> None:
    """Two learners resumed from one checkpoint number their versions alike; lineages tell them apart."""
    first, second = ParameterStore(first_version=7), ParameterStore(first_version=7)
    assert publish(first, 1.0) == publish(second, 2.0) == 8
    assert first.lineage != second.lineage
    assert len(first.lineage) == 32  # 128 random bits: never repeated in practice


def test_keep_versions_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="keep_versions must be >= 1, got 0"):
        ParameterStore(keep_versions=0)
