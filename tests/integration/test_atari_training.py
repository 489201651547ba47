"""Pong through the real services: an actor on real frames, two shards holding them compressed, a learner."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from apexrl.common.v1 import tensor_pb2
from apexrl.replay.v1 import replay_pb2
from services.actor.learner_client import LearnerClient
from services.learner.learner import Learner, LearnerSettings
from tests.integration.conftest import ShardFactory, stub_for
from tests.integration.training_fixtures import ActorThread, small_config, wait_for

# The pong preset as it is (Nature CNN, dueling, frames of 84x84x4), with a small batch and
# learning threshold so a few hundred updates take seconds on a CPU.
PONG = (
    "algorithm.network.hidden_sizes=[512]",
    "algorithm.batch_size=16",
    "algorithm.batches_per_sample_request=4",
    "algorithm.min_replay_size=300",
    "algorithm.target_update_interval=100",
    "algorithm.actor.insert_batch_size=64",
)
RAW_TRANSITION_BYTES = 2 * 84 * 84 * 4


def test_pong_trains_for_hundreds_of_updates_over_shards_that_store_its_frames_compressed(
    start_shard: ShardFactory, tmp_path: Path
) -> None:
    shards = [start_shard(capacity=5_000) for _ in range(2)]
    config = small_config(*PONG, preset="pong")
    assert config.environment.atari is not None
    learner = Learner(config, LearnerSettings(tuple(s.address for s in shards), tmp_path / "run"))
    actor = ActorThread(learner.address, "actor-0")
    client = LearnerClient(learner.address)
    try:

        def trained() -> bool:
            status = client.status()
            return status.updates >= 300 and any(row.parameter_version > 1 for row in status.actors)

        wait_for(trained, timeout_s=240, what="300 Pong updates with new parameters at the actor")
        for shard in shards:
            info = stub_for(shard).GetInfo(replay_pb2.GetInfoRequest(), timeout=10)
            assert info.inserts > 0
            assert info.samples > 0
            assert dict(info.column_codecs) == {
                "observation": tensor_pb2.CODEC_ZSTD,
                "next_observation": tensor_pb2.CODEC_ZSTD,
            }
            assert info.signature["observation"].shape == [84, 84, 4]
            # Frames from a game compress far below their raw size (bound: 1/8 of raw).
            held = shard.table.export_state()
            observations = held.columns["observation"]
            assert len(observations) == info.size
            assert observations.nbytes / info.size < RAW_TRANSITION_BYTES / 2 / 8
        assert sum(shard.table.info().priority_updates for shard in shards) > 0
        for name, tensor in learner.core.policy_parameters().items():
            assert np.isfinite(tensor.numpy()).all(), name
    finally:
        actor.close()
        client.close()
        learner.stop()
