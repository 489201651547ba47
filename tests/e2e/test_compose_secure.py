"""docker-compose.yml with deploy/compose/secure.yml: mutual TLS and a token between the containers.

Run by ``make compose-test`` after the other compose tests, on its own compose project:
secrets from ``apexrl secrets --shared`` handed over as Docker secrets, two actors, then
down with its volumes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from apexrl.replay.v1 import replay_pb2, replay_pb2_grpc
from services.common.certificates import Secrets, generate_secrets
from services.common.channels import create_channel
from services.common.security import SecuritySettings
from tests.e2e.compose_stack import (
    COMPOSE_TEST_MARKS,
    ROOT,
    ComposeStack,
    actor_records,
    describe,
    running,
    wait_until,
)

pytestmark = COMPOSE_TEST_MARKS

PROJECT = "apexrl-e2e-secure"
ACTORS = 2


@pytest.fixture(scope="module")
def secrets(tmp_path_factory: pytest.TempPathFactory) -> Secrets:
    return generate_secrets(tmp_path_factory.mktemp("compose") / "secrets", shared=True)


@pytest.fixture(scope="module")
def stack(secrets: Secrets) -> Iterator[ComposeStack]:
    stack = ComposeStack(
        PROJECT,
        {"APEXRL_SECRETS_DIR": str(secrets.directory)},
        override_files=[ROOT / "deploy" / "compose" / "secure.yml"],
        security=secrets.settings,
    )
    with running(stack, ACTORS, "compose-e2e-secure-logs") as up:
        yield up


def info_code(address: str, security: SecuritySettings) -> grpc.StatusCode:
    with create_channel(address, security=security) as channel:
        try:
            replay_pb2_grpc.ReplayServiceStub(channel).GetInfo(replay_pb2.GetInfoRequest(), timeout=10)
        except grpc.RpcError as error:
            return error.code()
    return grpc.StatusCode.OK


@pytest.mark.timeout(900)
def test_the_secure_stack_trains_refuses_outsiders_and_logs_no_secret(
    stack: ComposeStack, secrets: Secrets
) -> None:
    status = wait_until(
        lambda: stack.status_if(lambda status: status.updates >= 50 and len(actor_records(status)) == ACTORS),
        600,
        f"{ACTORS} actors and 50 learner updates over mutual TLS",
        poll_s=5,
    )
    print(f"[compose e2e secure] {describe(status)}", flush=True)
    shard = f"127.0.0.1:{stack.ports['APEXRL_REPLAY_0_PORT']}"
    settings = secrets.settings
    assert info_code(shard, settings) == grpc.StatusCode.OK
    assert info_code(shard, SecuritySettings()) == grpc.StatusCode.UNAVAILABLE  # plaintext
    certificate_only = SecuritySettings(
        tls_cert=settings.tls_cert, tls_key=settings.tls_key, tls_ca=settings.tls_ca
    )
    assert info_code(shard, certificate_only) == grpc.StatusCode.UNAUTHENTICATED
    token = Path(str(settings.token_file)).read_text().strip()
    for container in stack.containers():
        log = stack.logs(container)
        assert token not in log, f"the token is in the log of {container}"
    for service in ("replay-0", "replay-1", "learner"):
        [container] = stack.containers(service)
        assert "tls=True token=True" in stack.logs(container), service
