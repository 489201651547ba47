"""The learner's gRPC API on its own: registration, versioned pulls, watches, evaluations, errors."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from safetensors.numpy import load_file

from apexrl.learner.v1 import learner_pb2, learner_pb2_grpc
from services.common import parameter_codec
from services.common.channels import create_channel
from services.common.health_probe import health_status
from services.learner.learner import BEST_MODEL, Learner, LearnerSettings
from services.learner.servicer import SERVICE_NAME
from tests.integration.conftest import ShardFactory
from tests.integration.training_fixtures import small_config, wait_for

TIMEOUT_S = 10


@pytest.fixture
def learner(start_shard: ShardFactory, tmp_path: Path) -> Iterator[Learner]:
    shard = start_shard(capacity=1000)
    config = small_config("general.solved_return=100")
    learner = Learner(config, LearnerSettings((shard.address,), tmp_path / "run", metrics_port=0))
    yield learner
    learner.stop()


@pytest.fixture
def stub(learner: Learner) -> learner_pb2_grpc.LearnerServiceStub:
    return learner_pb2_grpc.LearnerServiceStub(create_channel(learner.address))


def test_registration_hands_out_the_spec_shards_and_distinct_exploration(
    learner: Learner, stub: learner_pb2_grpc.LearnerServiceStub
) -> None:
    replies = [
        stub.RegisterActor(
            learner_pb2.RegisterActorRequest(role=learner_pb2.CLIENT_ROLE_ACTOR), timeout=TIMEOUT_S
        )
        for _ in range(3)
    ]
    assert len({reply.actor_id for reply in replies}) == 3
    assert [reply.exploration.rung for reply in replies] == [0, 1, 2]
    assert replies[0].exploration.epsilon == pytest.approx(0.4)
    assert len({reply.exploration.epsilon for reply in replies}) == 3
    spec = replies[0].spec
    assert (spec.environment_id, spec.n_step) == ("CartPole-v1", 3)
    assert list(replies[0].replay_addresses) == list(learner.settings.replay_addresses)
    assert replies[0].actor_settings.insert_batch_size == 32
    assert replies[0].evaluation_settings.episodes == 10


def test_a_caller_that_is_current_gets_no_parameters(stub: learner_pb2_grpc.LearnerServiceStub) -> None:
    first = stub.GetParameters(learner_pb2.GetParametersRequest(known_version=0), timeout=TIMEOUT_S)
    assert first.version >= 1
    assert not first.up_to_date
    state = parameter_codec.from_wire(first.parameters)
    assert "head.value.weight" in state
    again = stub.GetParameters(
        learner_pb2.GetParametersRequest(known_version=first.version, known_lineage=first.lineage),
        timeout=TIMEOUT_S,
    )
    assert again.up_to_date
    assert again.version == first.version
    assert not again.parameters.tensors


def test_a_watch_pushes_the_current_version_then_each_new_one(
    learner: Learner, stub: learner_pb2_grpc.LearnerServiceStub
) -> None:
    stream = stub.WatchParameters(learner_pb2.WatchParametersRequest(known_version=0), timeout=TIMEOUT_S)
    first = next(stream)
    core = learner.core
    published = learner.store.publish(core.actor_parameters(), core.policy_parameters(), core.updates)
    second = next(stream)
    assert second.version == published > first.version
    assert set(second.parameters.tensors) == set(first.parameters.tensors)
    stream.cancel()


@pytest.mark.parametrize(
    ("request_message", "code", "message"),
    [
        (learner_pb2.RegisterActorRequest(), grpc.StatusCode.INVALID_ARGUMENT, "role must be"),
        (
            learner_pb2.GetParametersRequest(actor_id=987),
            grpc.StatusCode.NOT_FOUND,
            "actor 987 is not registered",
        ),
        (learner_pb2.ReportEvaluationRequest(parameter_version=1), grpc.StatusCode.INVALID_ARGUMENT, "empty"),
        (
            learner_pb2.ReportEvaluationRequest(parameter_version=1, episode_returns=[1.0, float("nan")]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "must be finite",
        ),
        (
            learner_pb2.ReportEvaluationRequest(parameter_version=999, episode_returns=[1.0]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "parameter_version 999 was never published",
        ),
    ],
)
def test_bad_requests_get_a_status_naming_the_problem(
    stub: learner_pb2_grpc.LearnerServiceStub, request_message: object, code: grpc.StatusCode, message: str
) -> None:
    methods: dict[type, Callable[..., object]] = {
        learner_pb2.RegisterActorRequest: stub.RegisterActor,
        learner_pb2.GetParametersRequest: stub.GetParameters,
        learner_pb2.ReportEvaluationRequest: stub.ReportEvaluation,
    }
    method = methods[type(request_message)]
    with pytest.raises(grpc.RpcError) as caught:
        method(request_message, timeout=TIMEOUT_S)
    assert caught.value.code() == code
    assert message in (caught.value.details() or "")


def test_the_best_evaluation_saves_the_model_and_solving_finishes_the_run(
    learner: Learner, stub: learner_pb2_grpc.LearnerServiceStub
) -> None:
    version = stub.GetParameters(learner_pb2.GetParametersRequest(), timeout=TIMEOUT_S).version
    low = stub.ReportEvaluation(
        learner_pb2.ReportEvaluationRequest(parameter_version=version, episode_returns=[10.0, 20.0]),
        timeout=TIMEOUT_S,
    )
    assert (low.new_best, low.finished) == (True, False)
    saved = load_file(str(learner.settings.run_dir / BEST_MODEL))
    expected = parameter_codec.from_wire(learner.store.get(version))  # type: ignore[arg-type]
    for name, tensor in expected.items():
        np.testing.assert_array_equal(saved[name], tensor.numpy())
    worse = stub.ReportEvaluation(
        learner_pb2.ReportEvaluationRequest(parameter_version=version, episode_returns=[5.0]),
        timeout=TIMEOUT_S,
    )
    assert not worse.new_best
    solved = stub.ReportEvaluation(
        learner_pb2.ReportEvaluationRequest(parameter_version=version, episode_returns=[150.0, 110.0]),
        timeout=TIMEOUT_S,
    )
    assert (solved.new_best, solved.finished) == (True, True)
    status = stub.GetStatus(learner_pb2.GetStatusRequest(), timeout=TIMEOUT_S)
    assert status.finished
    assert status.best_evaluation.mean_return == pytest.approx(130.0)
    assert status.latest_evaluation.episodes == 2

    def metrics_page() -> str:
        url = f"http://127.0.0.1:{learner.metrics_port}/metrics"
        text: str = urllib.request.urlopen(url, timeout=TIMEOUT_S).read().decode()
        return text

    wait_for(
        lambda: "apexrl_learner_evaluation_return 130.0" in metrics_page(),
        10.0,
        "the latest evaluation in the learner's metrics",
    )


def test_health_and_metrics_are_served(learner: Learner) -> None:
    assert health_status(learner.address, SERVICE_NAME) == "SERVING"
    page = urllib.request.urlopen(
        f"http://127.0.0.1:{learner.metrics_port}/metrics", timeout=TIMEOUT_S
    ).read()
    text = page.decode()
    for name in (
        "apexrl_learner_updates_total",
        "apexrl_learner_parameter_version",
        "apexrl_learner_evaluation_return",
    ):
        assert name in text


def test_a_watch_names_an_unknown_actor_and_keeps_a_known_ones_registration_current(
    learner: Learner, stub: learner_pb2_grpc.LearnerServiceStub
) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        next(stub.WatchParameters(learner_pb2.WatchParametersRequest(actor_id=987), timeout=TIMEOUT_S))
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    assert "actor 987 is not registered" in (refused.value.details() or "")
    actor = stub.RegisterActor(
        learner_pb2.RegisterActorRequest(role=learner_pb2.CLIENT_ROLE_ACTOR), timeout=TIMEOUT_S
    )
    stream = stub.WatchParameters(
        learner_pb2.WatchParametersRequest(actor_id=actor.actor_id), timeout=TIMEOUT_S
    )
    pushed = next(stream)
    stream.cancel()
    [record] = [row for row in learner.registry.active() if row.actor_id == actor.actor_id]
    assert record.parameter_version == pushed.version
