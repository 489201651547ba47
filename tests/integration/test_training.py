"""Learner, shards and actors together on 127.0.0.1: training, parameter flow, restarts."""

from __future__ import annotations

from pathlib import Path

import pytest

from apexrl.learner.v1 import learner_pb2
from services.actor.learner_client import LearnerClient
from services.learner.checkpoint import latest_checkpoint
from services.learner.learner import Learner, LearnerSettings
from tests.integration.conftest import ShardFactory
from tests.integration.training_fixtures import ActorThread, small_config, wait_for


def actor_rows(status: learner_pb2.GetStatusResponse) -> list[learner_pb2.ActorStatus]:
    return [actor for actor in status.actors if actor.role == learner_pb2.CLIENT_ROLE_ACTOR]


def test_two_actors_feed_two_shards_and_the_learner_trains_and_publishes_to_them(
    start_shard: ShardFactory, tmp_path: Path
) -> None:
    shards = [start_shard(capacity=20_000) for _ in range(2)]
    learner = Learner(small_config(), LearnerSettings(tuple(s.address for s in shards), tmp_path / "run"))
    actors = [ActorThread(learner.address, f"actor-{i}") for i in range(2)]
    client = LearnerClient(learner.address)
    try:

        def trained() -> bool:
            status = client.status()
            rows = actor_rows(status)
            return status.updates >= 300 and len(rows) == 2 and all(row.parameter_version > 1 for row in rows)

        wait_for(trained, timeout_s=240, what="300 updates with parameters at both actors")
        status = client.status()
        rows = actor_rows(status)
        assert len({row.exploration.epsilon for row in rows}) == 2
        assert status.environment_steps >= 200
        assert status.parameter_version >= 300 // 5
        for shard in shards:
            info = shard.table.info()
            assert info.inserts > 0
            assert info.samples > 0
        assert sum(shard.table.info().priority_updates for shard in shards) > 0
    finally:
        for actor in actors:
            actor.close()
        client.close()
        learner.stop()
    assert (tmp_path / "run" / "metrics.csv").exists()


def test_an_actor_re_registers_after_the_learner_restarts_from_its_checkpoint(
    start_shard: ShardFactory, tmp_path: Path
) -> None:
    shard = start_shard(capacity=20_000)
    run_dir = tmp_path / "run"
    config = small_config()
    first = Learner(config, LearnerSettings((shard.address,), run_dir))
    port = first.port
    actor = ActorThread(first.address, "actor-0")
    client = LearnerClient(first.address, timeout_s=5.0)
    try:
        wait_for(lambda: client.status().updates >= 50, timeout_s=180, what="50 updates")
        first_ids = {row.actor_id for row in actor_rows(client.status())}
        first.stop()  # writes a checkpoint
        restored = latest_checkpoint(run_dir / "checkpoints")
        assert restored is not None
        counters = restored[1]
        assert counters.updates >= 50

        second = Learner(config, LearnerSettings((shard.address,), run_dir, port=port))
        try:

            def re_registered() -> bool:
                status = client.status()
                ids = {row.actor_id for row in actor_rows(status)}
                return bool(ids - first_ids) and status.updates > counters.updates

            wait_for(re_registered, timeout_s=180, what="the actor to re-register and training to go on")
            status = client.status()
            assert min(row.actor_id for row in actor_rows(status)) > max(first_ids)
            assert status.parameter_version > counters.parameter_version
            assert status.environment_steps >= counters.environment_steps
            assert actor.thread.is_alive()
        finally:
            second.stop()
    finally:
        actor.close()
        client.close()
    assert len(list((run_dir / "checkpoints").iterdir())) >= 2


@pytest.mark.parametrize("override", ["algorithm.n_step=1", "algorithm.network.dueling=false"])
def test_variants_of_the_algorithm_train(start_shard: ShardFactory, tmp_path: Path, override: str) -> None:
    shard = start_shard(capacity=5_000)
    learner = Learner(small_config(override), LearnerSettings((shard.address,), tmp_path / "run"))
    actor = ActorThread(learner.address, "actor-0")
    client = LearnerClient(learner.address)
    try:
        wait_for(lambda: client.status().updates >= 30, timeout_s=180, what="30 updates")
    finally:
        actor.close()
        client.close()
        learner.stop()
