"""Learner, shards and actors together on 127.0.0.1: training, parameter flow, restarts."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from apexrl.learner.v1 import learner_pb2
from services.actor.learner_client import LearnerClient
from services.common import tensor_codec
from services.launcher.ports import pick_free_ports
from services.learner.checkpoint import TrainingCounters, latest_checkpoint
from services.learner.learner import Learner, LearnerSettings
from services.learner.registry import ActorRegistry
from services.learner.training import Trainer
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


def registry_carry_over(registry: ActorRegistry) -> tuple[int, int]:
    """The environment steps and actor ids the registry counts beyond its own registrations.

    An actor may register and report at any moment, so the figures are read between two
    identical readings of the registrations: heartbeats only raise a registration's steps
    and ids only grow, so equal readings mean nothing moved in between.
    """
    while True:
        before = [(record.actor_id, record.environment_steps) for record in registry.active()]
        steps, next_id = registry.environment_steps(), registry.next_actor_id
        if [(record.actor_id, record.environment_steps) for record in registry.active()] == before:
            return steps - sum(own for _, own in before), next_id - len(before)


def assert_resumed_from(
    learner: Learner, tensors: dict[str, torch.Tensor], counters: TrainingCounters, constructing: float
) -> None:
    """The learner holds exactly the checkpoint's state (its trainer not started yet)."""
    resumed = learner.counters()
    assert resumed.updates == counters.updates
    # One publish at construction, of the restored networks, continuing the version count.
    assert resumed.parameter_version == counters.parameter_version + 1
    published = learner.store.get(counters.parameter_version + 1)
    assert published is not None
    assert learner.store.get(counters.parameter_version) is None
    weights = tensor_codec.decode_named(published)
    online = {
        name.removeprefix("online."): tensor.numpy()
        for name, tensor in tensors.items()
        if name.startswith("online.")
    }
    assert online
    assert set(weights) == set(online)
    for name, array in online.items():
        np.testing.assert_array_equal(weights[name], array, err_msg=name)
    assert registry_carry_over(learner.registry) == (counters.environment_steps, counters.next_actor_id)
    assert resumed.best_mean_return == counters.best_mean_return
    assert counters.elapsed_s <= resumed.elapsed_s <= counters.elapsed_s + time.monotonic() - constructing


def test_an_actor_re_registers_after_the_learner_restarts_from_its_checkpoint(
    start_shard: ShardFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shard = start_shard(capacity=20_000)
    run_dir = tmp_path / "run"
    config = small_config()
    # Below the ephemeral range, so no outgoing connection takes the port while the learner is down.
    (port,) = pick_free_ports(1)
    first = Learner(config, LearnerSettings((shard.address,), run_dir, port=port))
    actor = ActorThread(first.address, "actor-0")
    client = LearnerClient(first.address, timeout_s=5.0)
    try:
        wait_for(lambda: client.status().updates >= 50, timeout_s=180, what="50 updates")
        first_ids = {row.actor_id for row in actor_rows(client.status())}
        first.stop()  # writes a checkpoint
        restored = latest_checkpoint(run_dir / "checkpoints")
        assert restored is not None
        tensors, counters = restored.tensors, restored.counters
        assert counters.updates >= 50
        assert counters.parameter_version >= 50 // 5
        assert counters.environment_steps > 0
        assert counters.next_actor_id > max(first_ids)

        # The constructor starts the trainer last; held back here, nothing trains or publishes
        # until the restored state has been read, so the comparison cannot race the training.
        with monkeypatch.context() as patch:
            patch.setattr(Trainer, "start", lambda trainer: trainer)
            constructing = time.monotonic()
            second = Learner(config, LearnerSettings((shard.address,), run_dir, port=port))
        try:
            try:
                assert_resumed_from(second, tensors, counters, constructing)
            finally:
                second.trainer.start()  # stop() joins the trainer's thread

            def re_registered() -> bool:
                status = client.status()
                ids = {row.actor_id for row in actor_rows(status)}
                # Versions go on from the checkpoint's: the restart's own, then training's.
                published = status.parameter_version > counters.parameter_version + 1
                return bool(ids - first_ids) and status.updates > counters.updates and published

            wait_for(re_registered, timeout_s=180, what="the actor to re-register and training to publish")
            status = client.status()
            # The first registration after the restart gets the next id the checkpoint kept.
            assert min(row.actor_id for row in actor_rows(status)) == counters.next_actor_id
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


CONTINUOUS = (
    "algorithm.network.hidden_sizes=[32, 32]",
    "algorithm.network.critic_hidden_sizes=[32, 32]",
)


@pytest.mark.parametrize("preset", ["pendulum", "pendulum-sac"])
def test_continuous_families_train_through_the_same_shards_actors_and_parameter_service(
    start_shard: ShardFactory, tmp_path: Path, preset: str
) -> None:
    shards = [start_shard(capacity=5_000) for _ in range(2)]
    config = small_config(*CONTINUOUS, preset=preset)
    learner = Learner(config, LearnerSettings(tuple(s.address for s in shards), tmp_path / "run"))
    actors = [ActorThread(learner.address, f"actor-{i}") for i in range(2)]
    client = LearnerClient(learner.address)
    try:

        def trained() -> bool:
            status = client.status()
            rows = actor_rows(status)
            return status.updates >= 60 and len(rows) == 2 and all(row.parameter_version > 1 for row in rows)

        wait_for(trained, timeout_s=180, what="60 updates with parameters at both actors")
        settings = [row.exploration for row in actor_rows(client.status())]
        kind = {"pendulum": "action_noise_scale", "pendulum-sac": "policy_temperature"}[preset]
        assert {setting.WhichOneof("setting") for setting in settings} == {kind}
        if preset == "pendulum":  # TD3's noise ladder: a scale of its own for each actor
            assert len({setting.action_noise_scale for setting in settings}) == 2
        # Actors score their transitions with the critic they pulled, and the learner rescores them.
        assert all(shard.table.info().inserts > 0 for shard in shards)
        assert sum(shard.table.info().priority_updates for shard in shards) > 0
        actor_set = client.get_parameters(0, 0)
        policy_set = client.get_parameters(0, 0, parameter_set=learner_pb2.PARAMETER_SET_POLICY)
        assert actor_set is not None
        assert policy_set is not None
        assert {name.split(".")[0] for name in actor_set.state_dict} == {"policy", "critic"}
        assert {name.split(".")[0] for name in policy_set.state_dict} == {"policy"}
    finally:
        for actor in actors:
            actor.close()
        client.close()
        learner.stop()
