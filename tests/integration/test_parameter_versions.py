"""A client holding a version the learner has not reached (from an earlier learner of the run)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from apexrl.learner.v1 import learner_pb2, learner_pb2_grpc
from services.common.channels import create_channel
from services.learner.learner import Learner, LearnerSettings
from tests.integration.conftest import ShardFactory
from tests.integration.training_fixtures import small_config

TIMEOUT_S = 10
AHEAD = 50


@pytest.fixture
def learner(start_shard: ShardFactory, tmp_path: Path) -> Iterator[Learner]:
    """A learner with no actors: it never trains, so only the test publishes."""
    shard = start_shard(capacity=1000)
    learner = Learner(small_config(), LearnerSettings((shard.address,), tmp_path / "run"))
    yield learner
    learner.stop()


@pytest.fixture
def stub(learner: Learner) -> Iterator[learner_pb2_grpc.LearnerServiceStub]:
    channel = create_channel(learner.address)
    yield learner_pb2_grpc.LearnerServiceStub(channel)
    channel.close()


def test_a_pull_from_a_client_ahead_of_the_learner_gets_the_current_parameters(
    learner: Learner, stub: learner_pb2_grpc.LearnerServiceStub
) -> None:
    version = learner.store.version
    reply = stub.GetParameters(
        learner_pb2.GetParametersRequest(known_version=version + AHEAD), timeout=TIMEOUT_S
    )
    assert (reply.version, reply.up_to_date) == (version, False)
    assert reply.parameters.tensors


def test_a_watch_from_a_client_ahead_of_the_learner_pushes_each_new_version(
    learner: Learner, stub: learner_pb2_grpc.LearnerServiceStub
) -> None:
    stream = stub.WatchParameters(
        learner_pb2.WatchParametersRequest(known_version=learner.store.version + AHEAD), timeout=5
    )
    stop = threading.Event()

    def publish_until_stopped() -> None:
        while not stop.wait(0.2):
            core = learner.core
            learner.store.publish(core.actor_parameters(), core.policy_parameters(), core.updates)

    publisher = threading.Thread(target=publish_until_stopped, daemon=True)
    publisher.start()
    try:
        pushed = next(stream)
    finally:
        stop.set()
        publisher.join(timeout=10)
        stream.cancel()
    assert 1 <= pushed.version <= learner.store.version
    assert pushed.parameters.tensors
