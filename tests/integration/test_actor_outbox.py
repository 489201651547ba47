"""The actor's outbox against real shards: batches spread over shards, and nothing lost while none accepts."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from numpy.typing import NDArray

from services.actor.actor import Outbox
from services.actor.metrics import ActorMetrics
from services.algorithms.apex_dqn.acting import DqnPolicy
from services.algorithms.apex_dqn.config import DqnNetworkConfig
from services.algorithms.apex_dqn.networks import QNetwork
from services.common.encoded import Column
from services.common.sharded_replay import ShardedReplayClient
from services.launcher.ports import pick_free_ports
from services.replay.shard import ReplayShard
from tests.integration.conftest import ShardFactory, transitions


@pytest.fixture
def network() -> DqnPolicy:
    """Enough actions for ``transitions``, whose action is the transition's index (below 128 here)."""
    torch.manual_seed(0)
    return DqnPolicy(QNetwork(DqnNetworkConfig(kind="mlp", hidden_sizes=(16,), dueling=True), (4,), 128))


@pytest.fixture
def sender() -> Iterator[ThreadPoolExecutor]:
    executor = ThreadPoolExecutor(max_workers=1)
    yield executor
    executor.shutdown(wait=True)


def stored_actions(*shards: ReplayShard) -> list[int]:
    """The action column (each transition's index) of every item the shards hold."""
    return sorted(np.concatenate([shard.table.export_state().columns["action"] for shard in shards]).tolist())


def sent(metrics: ActorMetrics) -> float | None:
    return metrics.registry.get_sample_value("apexrl_actor_transitions_sent_total")


def wait_until_ready(outbox: Outbox, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not outbox.ready():
        assert time.monotonic() < deadline, "the outbox never became ready to send"
        time.sleep(0.01)


def test_batches_alternate_over_shards_and_are_counted_once_accepted(
    start_shard: ShardFactory, network: DqnPolicy, sender: ThreadPoolExecutor
) -> None:
    shards = [start_shard(capacity=1000) for _ in range(2)]
    replay = ShardedReplayClient([shard.address for shard in shards], seed=0)
    metrics = ActorMetrics()
    outbox = Outbox(replay, batch_size=32, metrics=metrics, sender=sender)
    for first in range(0, 96, 8):
        outbox.add(transitions(first, 8))
        if outbox.ready():
            outbox.send(network)
    outbox.flush(network)
    assert [shard.table.info().size for shard in shards] == [64, 32]
    assert stored_actions(*shards) == list(range(96))
    assert sent(metrics) == 96
    replay.close()


def test_transitions_held_while_no_shard_accepts_arrive_once_one_is_back(
    start_shard: ShardFactory, network: DqnPolicy, sender: ThreadPoolExecutor
) -> None:
    # Below the ephemeral range, so no outgoing connection takes the port while the shard is down.
    (port,) = pick_free_ports(1)
    shard = start_shard(capacity=1000, port=port)
    replay = ShardedReplayClient(
        [shard.address], seed=0, timeout_s=2.0, min_backoff_s=0.05, max_backoff_s=0.1
    )
    metrics = ActorMetrics()
    outbox = Outbox(replay, batch_size=16, metrics=metrics, sender=sender)
    outbox.add(transitions(0, 16))
    outbox.flush(network)
    shard.stop(snapshot=False)

    outbox.add(transitions(16, 16))
    outbox.flush(network)  # refused: kept, and no retry before a second has passed
    outbox.add(transitions(32, 16))
    assert not outbox.ready()
    assert sent(metrics) == 16

    restarted = start_shard(capacity=1000, port=port)
    wait_until_ready(outbox)
    outbox.flush(network)
    assert stored_actions(restarted) == list(range(16, 48))
    assert sent(metrics) == 48
    replay.close()


def test_a_batch_that_does_not_fill_leaves_after_the_hold_time(
    start_shard: ShardFactory, network: DqnPolicy, sender: ThreadPoolExecutor
) -> None:
    shard = start_shard(capacity=1000)
    replay = ShardedReplayClient([shard.address], seed=0)
    outbox = Outbox(replay, batch_size=1000, metrics=ActorMetrics(), sender=sender, max_hold_s=0.3)
    assert not outbox.ready()
    outbox.add(transitions(0, 10))
    held_at = time.monotonic()
    wait_until_ready(outbox)
    assert time.monotonic() - held_at >= 0.3
    outbox.flush(network)
    assert stored_actions(shard) == list(range(10))
    replay.close()


class RecordingReplayClient(ShardedReplayClient):
    """The real client, noting the size of every insert it makes."""

    def __init__(self, addresses: list[str]) -> None:
        super().__init__(addresses, seed=0, timeout_s=2.0, min_backoff_s=0.05, max_backoff_s=0.1)
        self.insert_sizes: list[int] = []

    def insert(
        self,
        columns: Mapping[str, Column],
        priorities: NDArray[np.floating],
        max_wait_s: float = 0.0,
    ) -> tuple[int, NDArray[np.int64]]:
        self.insert_sizes.append(len(columns["reward"]))
        return super().insert(columns, priorities, max_wait_s)


def test_a_backlog_kept_through_an_outage_drains_in_batches_of_the_usual_size(
    start_shard: ShardFactory, network: DqnPolicy, sender: ThreadPoolExecutor
) -> None:
    (port,) = pick_free_ports(1)  # below the ephemeral range: see above
    shard = start_shard(capacity=1000, port=port)
    shard.stop(snapshot=False)
    replay = RecordingReplayClient([shard.address])
    outbox = Outbox(replay, batch_size=16, metrics=ActorMetrics(), sender=sender)
    for first in range(0, 112, 8):
        outbox.add(transitions(first, 8))
    outbox.flush(network)  # refused: the first batch is kept, nothing else is tried
    assert replay.insert_sizes == [16]

    restarted = start_shard(capacity=1000, port=port)
    wait_until_ready(outbox)
    outbox.flush(network)
    assert stored_actions(restarted) == list(range(112))
    assert replay.insert_sizes[1:] == [16] * 7
    replay.close()
