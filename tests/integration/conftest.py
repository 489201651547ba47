"""Real replay shards on 127.0.0.1, started with the production start-up code."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from apexrl.replay.v1 import replay_pb2_grpc
from services.common.channels import create_channel
from services.learner.learner import Learner, LearnerSettings
from services.replay.settings import ReplayShardSettings
from services.replay.shard import ReplayShard
from tests.integration.training_fixtures import small_config

ShardFactory = Callable[..., ReplayShard]


@pytest.fixture
def start_shard() -> Iterator[ShardFactory]:
    """Starts shards with the given settings and stops whatever is still running afterwards."""
    shards: list[ReplayShard] = []

    def start(**settings: Any) -> ReplayShard:
        settings.setdefault("seed", 1234 + len(shards))
        shard = ReplayShard(ReplayShardSettings(**settings))
        shards.append(shard)
        return shard

    yield start
    for shard in shards:
        shard.stop(snapshot=False)


@pytest.fixture
def learner(start_shard: ShardFactory, tmp_path: Path) -> Iterator[Learner]:
    """A learner on an empty shard, with no actors: it never trains, so only the test publishes.

    A module that needs another learner defines its own ``learner`` fixture.
    """
    learner = Learner(
        small_config(), LearnerSettings((start_shard(capacity=1000).address,), tmp_path / "run")
    )
    yield learner
    learner.stop()


def stub_for(shard: ReplayShard) -> replay_pb2_grpc.ReplayServiceStub:
    return replay_pb2_grpc.ReplayServiceStub(create_channel(shard.address))


def transitions(first: int, count: int, observation_size: int = 4) -> dict[str, NDArray[np.generic]]:
    """W1-shaped transitions whose action holds their global index, so tests can identify items."""
    index = np.arange(first, first + count)
    observation = np.repeat(index[:, None], observation_size, axis=1).astype(np.float32)
    return {
        "observation": observation,
        "action": index.astype(np.int64),
        "reward": np.ones(count, dtype=np.float32),
        "discount": np.full(count, 0.99, dtype=np.float32),
        "next_observation": observation + 1,
    }
