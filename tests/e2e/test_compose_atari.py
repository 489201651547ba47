"""docker-compose.yml with the Atari experiment: Pong trains in the images, its frames stored compressed.

Run by ``make compose-test`` after tests/e2e/test_compose.py, on its own compose project:
``APEXRL_EXPERIMENT=./deploy/compose/pong.yaml``, two actors, then down with its volumes.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from apexrl.common.v1 import tensor_pb2
from apexrl.replay.v1 import replay_pb2, replay_pb2_grpc
from services.common.channels import create_channel
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

PROJECT = "apexrl-e2e-atari"
EXPERIMENT = ROOT / "deploy" / "compose" / "pong.yaml"
ACTORS = 2


@pytest.fixture(scope="module")
def stack() -> Iterator[ComposeStack]:
    with running(
        ComposeStack(PROJECT, {"APEXRL_EXPERIMENT": str(EXPERIMENT)}), ACTORS, "compose-e2e-atari-logs"
    ) as up:
        yield up


@pytest.mark.timeout(900)
def test_pong_trains_in_the_images_and_the_shards_hold_its_frames_compressed(stack: ComposeStack) -> None:
    status = wait_until(
        lambda: stack.status_if(lambda status: status.updates >= 20 and len(actor_records(status)) == ACTORS),
        600,
        f"{ACTORS} Pong actors and 20 learner updates",
        poll_s=5,
    )
    print(f"[compose e2e atari] {describe(status)}", flush=True)
    assert status.environment_steps >= 5000  # the preset's min_replay_size, reached by the actors
    for port in ("APEXRL_REPLAY_0_PORT", "APEXRL_REPLAY_1_PORT"):
        with create_channel(f"127.0.0.1:{stack.ports[port]}") as channel:
            info = replay_pb2_grpc.ReplayServiceStub(channel).GetInfo(replay_pb2.GetInfoRequest(), timeout=10)
        assert info.signature["observation"].shape == [84, 84, 4]
        assert dict(info.column_codecs) == {
            "observation": tensor_pb2.CODEC_ZSTD,
            "next_observation": tensor_pb2.CODEC_ZSTD,
        }
        assert info.samples > 0
        print(f"[compose e2e atari] {port}: {info.size} items in {info.storage_bytes} bytes", flush=True)
