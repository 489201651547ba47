"""Token and mutual TLS on real servers: a replay shard (thread-pool server) and a learner (grpc.aio).

The servers take the process's settings from the environment when they start (as a
service started by its command does); each client names its own settings.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest

from apexrl.learner.v1 import learner_pb2, learner_pb2_grpc
from apexrl.replay.v1 import replay_pb2, replay_pb2_grpc
from services.common.certificates import Secrets, generate_secrets
from services.common.channels import create_channel
from services.common.health_probe import health_status
from services.common.security import SecurityError, SecuritySettings
from services.common.sharded_replay import ShardedReplayClient
from services.learner.learner import Learner, LearnerSettings
from services.replay.shard import ReplayShard
from tests.integration.conftest import ShardFactory, transitions
from tests.integration.training_fixtures import small_config

TIMEOUT_S = 10
NAMES = ("localhost", "127.0.0.1")


@pytest.fixture
def deployment(tmp_path: Path) -> Secrets:
    return generate_secrets(tmp_path / "secrets", NAMES)


@pytest.fixture
def stranger(tmp_path: Path) -> Secrets:
    """Secrets of another deployment: another CA, another token."""
    return generate_secrets(tmp_path / "other", NAMES)


def serve_with(monkeypatch: pytest.MonkeyPatch, settings: SecuritySettings) -> None:
    """The environment a service started with these settings has (services read it at start)."""
    for variable, value in settings.environment().items():
        monkeypatch.setenv(variable, value)


def token_only(secrets: Secrets) -> SecuritySettings:
    return SecuritySettings(token_file=secrets.settings.token_file)


def code_of_info_call(shard: ReplayShard, settings: SecuritySettings) -> grpc.StatusCode:
    with create_channel(shard.address, security=settings) as channel:
        try:
            replay_pb2_grpc.ReplayServiceStub(channel).GetInfo(replay_pb2.GetInfoRequest(), timeout=TIMEOUT_S)
        except grpc.RpcError as error:
            return error.code()
    return grpc.StatusCode.OK


@pytest.fixture
def token_shard(
    start_shard: ShardFactory, deployment: Secrets, monkeypatch: pytest.MonkeyPatch
) -> ReplayShard:
    serve_with(monkeypatch, token_only(deployment))
    return start_shard(capacity=100)


def test_a_shard_with_a_token_refuses_calls_without_it_and_serves_calls_with_it(
    token_shard: ReplayShard, deployment: Secrets, stranger: Secrets, tmp_path: Path
) -> None:
    assert code_of_info_call(token_shard, SecuritySettings()) == grpc.StatusCode.UNAUTHENTICATED
    assert code_of_info_call(token_shard, token_only(stranger)) == grpc.StatusCode.UNAUTHENTICATED
    assert code_of_info_call(token_shard, token_only(deployment)) == grpc.StatusCode.OK
    # A client with the token inserts through the sharded client as actors do; one without stores nothing.
    with_token = ShardedReplayClient([token_shard.address], seed=1, security=token_only(deployment))
    with_token.insert(transitions(0, 5), np.ones(5))
    without = ShardedReplayClient([token_shard.address], seed=1, security=SecuritySettings())
    with pytest.raises(grpc.RpcError) as refused:
        without.insert(transitions(5, 5), np.ones(5))
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "token" in (refused.value.details() or "")
    assert token_shard.table.info().size == 5


def test_health_checks_need_no_token(token_shard: ReplayShard) -> None:
    assert health_status(token_shard.address, "", security=SecuritySettings()) == "SERVING"


def test_the_learner_with_a_token_refuses_unary_and_stream_calls_without_it(
    start_shard: ShardFactory, deployment: Secrets, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    serve_with(monkeypatch, token_only(deployment))
    shard = start_shard(capacity=1000)
    learner = Learner(small_config(), LearnerSettings((shard.address,), tmp_path / "run"))
    try:
        with create_channel(learner.address, security=SecuritySettings()) as channel:
            stub = learner_pb2_grpc.LearnerServiceStub(channel)
            with pytest.raises(grpc.RpcError) as status_refused:
                stub.GetStatus(learner_pb2.GetStatusRequest(), timeout=TIMEOUT_S)
            with pytest.raises(grpc.RpcError) as watch_refused:
                next(stub.WatchParameters(learner_pb2.WatchParametersRequest(), timeout=TIMEOUT_S))
        assert status_refused.value.code() == watch_refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert health_status(learner.address, "", security=SecuritySettings()) == "SERVING"
        with create_channel(learner.address, security=token_only(deployment)) as channel:
            stub = learner_pb2_grpc.LearnerServiceStub(channel)
            assert stub.GetStatus(learner_pb2.GetStatusRequest(), timeout=TIMEOUT_S).parameter_version >= 1
            pushed = next(stub.WatchParameters(learner_pb2.WatchParametersRequest(), timeout=TIMEOUT_S))
            assert pushed.parameters.tensors
    finally:
        learner.stop()


def test_mutual_tls_admits_only_clients_with_a_certificate_of_the_deployments_ca(
    start_shard: ShardFactory, deployment: Secrets, stranger: Secrets, monkeypatch: pytest.MonkeyPatch
) -> None:
    tls = SecuritySettings(
        tls_cert=deployment.settings.tls_cert,
        tls_key=deployment.settings.tls_key,
        tls_ca=deployment.settings.tls_ca,
    )
    serve_with(monkeypatch, tls)
    shard = start_shard(capacity=100)
    assert code_of_info_call(shard, tls) == grpc.StatusCode.OK
    # Another CA's certificate, trusting this deployment's CA: the server refuses the handshake.
    impostor = SecuritySettings(
        tls_cert=stranger.settings.tls_cert,
        tls_key=stranger.settings.tls_key,
        tls_ca=deployment.settings.tls_ca,
    )
    assert code_of_info_call(shard, impostor) == grpc.StatusCode.UNAVAILABLE
    # A client that trusts another CA does not accept the server's certificate either.
    assert code_of_info_call(shard, stranger.settings) == grpc.StatusCode.UNAVAILABLE
    assert code_of_info_call(shard, SecuritySettings()) == grpc.StatusCode.UNAVAILABLE  # plaintext
    assert health_status(shard.address, "", security=tls) == "SERVING"


def test_token_and_tls_together(
    start_shard: ShardFactory, deployment: Secrets, monkeypatch: pytest.MonkeyPatch
) -> None:
    serve_with(monkeypatch, deployment.settings)
    shard = start_shard(capacity=100)
    assert code_of_info_call(shard, deployment.settings) == grpc.StatusCode.OK
    certificate_only = SecuritySettings(
        tls_cert=deployment.settings.tls_cert,
        tls_key=deployment.settings.tls_key,
        tls_ca=deployment.settings.tls_ca,
    )
    assert code_of_info_call(shard, certificate_only) == grpc.StatusCode.UNAUTHENTICATED


def test_bad_settings_are_refused_naming_the_problem(deployment: Secrets, tmp_path: Path) -> None:
    with pytest.raises(SecurityError, match="--tls-key and --tls-ca together; --tls-key, --tls-ca missing"):
        SecuritySettings(tls_cert=deployment.settings.tls_cert)
    with pytest.raises(SecurityError, match=r"cannot read the token file .*nowhere"):
        SecuritySettings(token_file=tmp_path / "nowhere").check()
    blank = tmp_path / "blank"
    blank.write_text("  \n")
    with pytest.raises(SecurityError, match="must hold one token"):
        SecuritySettings(token_file=blank).check()
