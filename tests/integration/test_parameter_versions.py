"""Parameter versions never name two sets of parameters: a restarted learner publishes under a new lineage.

A learner killed after its last checkpoint resumes from that checkpoint and
numbers the versions after it again, with other parameters. A client holding
such a version of the old lineage must get the new parameters at once, by pull
or watch, whatever the numbers say.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import torch

from apexrl.learner.v1 import learner_pb2, learner_pb2_grpc
from services.common import parameter_codec
from services.common.channels import create_channel
from services.learner.learner import Learner, LearnerSettings
from tests.integration.conftest import ShardFactory
from tests.integration.training_fixtures import small_config

TIMEOUT_S = 10
PUBLISHED_AFTER_CHECKPOINT = 5


def start_learner(shard_address: str, run_dir: Path) -> Learner:
    """A learner with no actors: it never trains, so only the test publishes."""
    return Learner(small_config(), LearnerSettings((shard_address,), run_dir))


def publish(learner: Learner, times: int = 1) -> int:
    core = learner.core
    for _ in range(times):
        version = learner.store.publish(core.actor_parameters(), core.policy_parameters(), core.updates)
    return version


def perturb(learner: Learner) -> None:
    """Makes the learner's parameters differ from its checkpoint's (training would)."""
    with torch.no_grad():
        for tensor in learner.core.actor_parameters().values():
            tensor.add_(1.0)


@pytest.fixture
def stub(learner: Learner) -> Iterator[learner_pb2_grpc.LearnerServiceStub]:
    channel = create_channel(learner.address)
    yield learner_pb2_grpc.LearnerServiceStub(channel)
    channel.close()


def test_a_caller_is_current_only_with_the_same_lineage_and_version(
    learner: Learner, stub: learner_pb2_grpc.LearnerServiceStub
) -> None:
    first = stub.GetParameters(learner_pb2.GetParametersRequest(), timeout=TIMEOUT_S)
    assert first.lineage == learner.store.lineage != ""
    for known_lineage, current in [(first.lineage, True), ("", False), ("another-learner", False)]:
        reply = stub.GetParameters(
            learner_pb2.GetParametersRequest(known_version=first.version, known_lineage=known_lineage),
            timeout=TIMEOUT_S,
        )
        assert (reply.version, reply.lineage, reply.up_to_date) == (first.version, first.lineage, current)
        assert bool(reply.parameters.tensors) is not current


def test_a_watch_is_silent_for_a_caller_that_is_current_and_pushes_another_lineages_holder_at_once(
    learner: Learner, stub: learner_pb2_grpc.LearnerServiceStub
) -> None:
    version = learner.store.version
    current = stub.WatchParameters(
        learner_pb2.WatchParametersRequest(known_version=version, known_lineage=learner.store.lineage),
        timeout=TIMEOUT_S,
    )
    elsewhere = stub.WatchParameters(
        learner_pb2.WatchParametersRequest(known_version=version + 50, known_lineage="another-learner"),
        timeout=TIMEOUT_S,
    )
    pushed = next(elsewhere)
    assert (pushed.version, pushed.lineage) == (version, learner.store.lineage)
    assert pushed.parameters.tensors
    published = publish(learner)
    assert next(current).version == published  # its first message is the new version, not the held one
    assert next(elsewhere).version == published
    current.cancel()
    elsewhere.cancel()


def test_versions_repeated_by_a_restarted_learner_reach_a_client_of_the_old_lineage(
    start_shard: ShardFactory, tmp_path: Path
) -> None:
    """A learner checkpoints, publishes 5 more versions and dies; the restarted one reaches the
    same numbers with other parameters. The run folder is copied right after the checkpoint,
    which is the state a kill -9 leaves on disk."""
    shard = start_shard(capacity=1000)
    first = start_learner(shard.address, tmp_path / "run")
    first.save_checkpoint()
    shutil.copytree(tmp_path / "run", tmp_path / "crashed")
    perturb(first)
    old_version = publish(first, PUBLISHED_AFTER_CHECKPOINT)
    old_lineage = first.store.lineage
    old_parameters = first.store.get(old_version)
    assert old_parameters is not None
    first.stop()

    second = start_learner(shard.address, tmp_path / "crashed")
    try:
        perturb(second)
        perturb(second)
        assert publish(second, PUBLISHED_AFTER_CHECKPOINT - 1) == old_version  # the number repeats
        assert second.store.lineage != old_lineage
        channel = create_channel(second.address)
        stub = learner_pb2_grpc.LearnerServiceStub(channel)
        reply = stub.GetParameters(
            learner_pb2.GetParametersRequest(known_version=old_version, known_lineage=old_lineage),
            timeout=TIMEOUT_S,
        )
        assert not reply.up_to_date
        assert (reply.version, reply.lineage) == (old_version, second.store.lineage)
        received = parameter_codec.from_wire(reply.parameters)
        new = second.core.actor_parameters()
        old = parameter_codec.from_wire(old_parameters)
        assert received.keys() == new.keys() == old.keys()
        for name, tensor in received.items():
            torch.testing.assert_close(tensor, new[name])
            assert not torch.equal(tensor, old[name])
        watch = stub.WatchParameters(
            learner_pb2.WatchParametersRequest(known_version=old_version, known_lineage=old_lineage),
            timeout=TIMEOUT_S,
        )
        assert next(watch).lineage == second.store.lineage
        watch.cancel()
        with pytest.raises(grpc.RpcError) as refused:
            stub.ReportEvaluation(
                learner_pb2.ReportEvaluationRequest(
                    parameter_version=old_version, episode_returns=[1.0], parameter_lineage=old_lineage
                ),
                timeout=TIMEOUT_S,
            )
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert old_lineage in (refused.value.details() or "")
        channel.close()
    finally:
        second.stop()
