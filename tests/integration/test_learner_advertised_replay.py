"""The learner hands actors the shard addresses it advertises, which may differ from the ones it samples."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from apexrl.learner.v1 import learner_pb2, learner_pb2_grpc
from services.common.channels import create_channel
from services.learner.learner import Learner, LearnerSettings
from tests.integration.conftest import ShardFactory
from tests.integration.training_fixtures import small_config

ROOT = Path(__file__).resolve().parents[2]


def test_registration_hands_out_the_advertised_shard_addresses(
    start_shard: ShardFactory, tmp_path: Path
) -> None:
    shard = start_shard(capacity=1000)
    advertised = ("replay.example.org:50051",)
    settings = LearnerSettings((shard.address,), tmp_path / "run", advertised_replay_addresses=advertised)
    learner = Learner(small_config(), settings)
    try:
        stub = learner_pb2_grpc.LearnerServiceStub(create_channel(learner.address))
        reply = stub.RegisterActor(
            learner_pb2.RegisterActorRequest(role=learner_pb2.CLIENT_ROLE_ACTOR), timeout=10
        )
        assert tuple(reply.replay_addresses) == advertised
    finally:
        learner.stop()


def test_advertised_addresses_must_name_every_shard(tmp_path: Path) -> None:
    settings = LearnerSettings(
        ("127.0.0.1:1", "127.0.0.1:2"), tmp_path / "run", advertised_replay_addresses=("a:1",)
    )
    with pytest.raises(ValueError, match="1 advertised replay addresses for 2 shards"):
        Learner(small_config(), settings)


def test_the_learner_command_exits_2_on_a_short_advertised_list(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "services",
            "learner",
            "cartpole",
            "--replay",
            "127.0.0.1:1,127.0.0.1:2",
            "--advertise-replay",
            "shards.example.org:50051",
            "--run-dir",
            str(tmp_path / "run"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "1 advertised replay addresses for 2 shards" in result.stderr
