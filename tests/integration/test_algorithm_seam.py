"""What the learner's API says about the algorithm: exploration settings, parameter sets, evaluations."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from apexrl.learner.v1 import learner_pb2, learner_pb2_grpc
from services.actor.actor import build_policy
from services.algorithms.experiment import experiment_spec
from services.common import parameter_codec
from services.common.channels import create_channel
from services.learner.learner import Learner, LearnerSettings
from tests.integration.conftest import ShardFactory
from tests.integration.training_fixtures import small_config, wait_for

TIMEOUT_S = 10


@pytest.fixture
def stub(learner: Learner) -> learner_pb2_grpc.LearnerServiceStub:
    return learner_pb2_grpc.LearnerServiceStub(create_channel(learner.address))


def register(
    stub: learner_pb2_grpc.LearnerServiceStub, role: learner_pb2.ClientRole.ValueType
) -> learner_pb2.RegisterActorResponse:
    return stub.RegisterActor(learner_pb2.RegisterActorRequest(role=role), timeout=TIMEOUT_S)


def test_actors_get_their_familys_exploration_setting_and_evaluators_none(
    stub: learner_pb2_grpc.LearnerServiceStub,
) -> None:
    actor = register(stub, learner_pb2.CLIENT_ROLE_ACTOR).exploration
    assert actor.WhichOneof("setting") == "epsilon"
    assert actor.epsilon == pytest.approx(0.4)
    evaluator = register(stub, learner_pb2.CLIENT_ROLE_EVALUATOR).exploration
    assert evaluator.WhichOneof("setting") is None


def test_a_policy_pull_gets_the_policy_parameters_which_for_dqn_are_the_q_network(
    learner: Learner, stub: learner_pb2_grpc.LearnerServiceStub
) -> None:
    policy = stub.GetParameters(
        learner_pb2.GetParametersRequest(parameter_set=learner_pb2.PARAMETER_SET_POLICY), timeout=TIMEOUT_S
    )
    actor = stub.GetParameters(learner_pb2.GetParametersRequest(), timeout=TIMEOUT_S)
    assert policy.version == actor.version >= 1
    assert set(parameter_codec.from_wire(policy.parameters)) == set(learner.core.policy_parameters())
    assert set(policy.parameters.tensors) == set(actor.parameters.tensors)
    watch = stub.WatchParameters(
        learner_pb2.WatchParametersRequest(parameter_set=learner_pb2.PARAMETER_SET_POLICY), timeout=TIMEOUT_S
    )
    assert set(next(watch).parameters.tensors) == set(policy.parameters.tensors)
    watch.cancel()


def test_an_evaluation_is_recorded_with_the_updates_behind_its_version_not_the_current_ones(
    learner: Learner, stub: learner_pb2_grpc.LearnerServiceStub
) -> None:
    core = learner.core
    version = learner.store.publish(core.actor_parameters(), core.policy_parameters(), updates=123)
    stub.ReportEvaluation(
        learner_pb2.ReportEvaluationRequest(parameter_version=version, episode_returns=[1.0]),
        timeout=TIMEOUT_S,
    )
    status = stub.GetStatus(learner_pb2.GetStatusRequest(), timeout=TIMEOUT_S)
    assert status.updates == 0  # the shard is empty: nothing trained
    assert status.latest_evaluation.updates == 123


def test_a_client_refuses_an_algorithm_it_does_not_implement() -> None:
    spec = experiment_spec(small_config())
    spec.algorithm = learner_pb2.ALGORITHM_UNSPECIFIED
    with pytest.raises(ValueError, match="the learner trains ALGORITHM_UNSPECIFIED, which this client does"):
        build_policy(spec)


def test_a_finished_run_leaves_the_trainer_idle(start_shard: ShardFactory, tmp_path: Path) -> None:
    shard = start_shard(capacity=1000)
    config = small_config("general.max_wall_time_s=0.01", "general.log_interval_s=0.5")
    learner = Learner(config, LearnerSettings((shard.address,), tmp_path / "run"))
    try:
        wait_for(lambda: learner.trainer.finished, 10.0, "the wall-time budget to end the run")
        cpu_before, wall_before = time.process_time(), time.monotonic()
        time.sleep(2.0)
        cpu_s = time.process_time() - cpu_before
        # A trainer thread that spins burns about one core for the whole wait (2 s here);
        # an idle learner process uses a few milliseconds.
        assert cpu_s < 0.25 * (time.monotonic() - wall_before), cpu_s
    finally:
        learner.stop()
