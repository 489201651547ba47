"""The actor's outbox against real shards, through a real transport process: batches spread over
shards, nothing lost while none accepts, and a batch a shard refuses for good dropped and counted
without holding back the ones after it."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import pytest
import torch
from numpy.typing import NDArray

from services.actor import actor
from services.actor.actor import Outbox
from services.actor.metrics import ActorMetrics
from services.actor.transport import ReplaySettings, Transport
from services.algorithms.apex_dqn.acting import DqnPolicy
from services.algorithms.apex_dqn.config import DqnNetworkConfig
from services.algorithms.apex_dqn.networks import QNetwork
from services.common.security import SecuritySettings
from services.common.sharded_replay import ShardedReplayClient
from services.launcher.ports import pick_free_ports
from services.replay.shard import ReplayShard
from tests.integration.conftest import ShardFactory, transitions


@pytest.fixture
def network() -> DqnPolicy:
    """Enough actions for ``transitions``, whose action is the transition's index (below 128 here)."""
    torch.manual_seed(0)
    return DqnPolicy(QNetwork(DqnNetworkConfig(kind="mlp", hidden_sizes=(16,), dueling=True), (4,), 128))


TransportFactory = Callable[..., Transport]


@pytest.fixture
def start_transport() -> Iterator[TransportFactory]:
    """Starts transport processes inserting into the given shards; closes them afterwards.

    Nothing listens at the learner's address: these tests only insert.
    """
    started: list[Transport] = []

    def start(addresses: Sequence[str], insert_wait_s: float = actor._INSERT_WAIT_S) -> Transport:
        (port,) = pick_free_ports(1)
        transport = Transport(f"127.0.0.1:{port}", SecuritySettings(), timeout_s=2.0)
        started.append(transport)
        transport.configure_replay(
            ReplaySettings(
                addresses, 0, (), insert_wait_s, timeout_s=2.0, min_backoff_s=0.05, max_backoff_s=0.1
            )
        )
        return transport

    yield start
    for transport in started:
        transport.close()


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
    start_shard: ShardFactory, network: DqnPolicy, start_transport: TransportFactory
) -> None:
    shards = [start_shard(capacity=1000) for _ in range(2)]
    transport = start_transport([shard.address for shard in shards])
    metrics = ActorMetrics()
    outbox = Outbox(transport, batch_size=32, metrics=metrics)
    for first in range(0, 96, 8):
        outbox.add(transitions(first, 8))
        if outbox.ready():
            outbox.send(network)
    outbox.flush(network)
    assert [shard.table.info().size for shard in shards] == [64, 32]
    assert stored_actions(*shards) == list(range(96))
    assert sent(metrics) == 96


def test_transitions_held_while_no_shard_accepts_arrive_once_one_is_back(
    start_shard: ShardFactory, network: DqnPolicy, start_transport: TransportFactory
) -> None:
    # Below the ephemeral range, so no outgoing connection takes the port while the shard is down.
    (port,) = pick_free_ports(1)
    shard = start_shard(capacity=1000, port=port)
    transport = start_transport([shard.address])
    metrics = ActorMetrics()
    outbox = Outbox(transport, batch_size=16, metrics=metrics)
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


def test_a_batch_that_does_not_fill_leaves_after_the_hold_time(
    start_shard: ShardFactory, network: DqnPolicy, start_transport: TransportFactory
) -> None:
    shard = start_shard(capacity=1000)
    transport = start_transport([shard.address])
    outbox = Outbox(transport, batch_size=1000, metrics=ActorMetrics(), max_hold_s=0.3)
    assert not outbox.ready()
    outbox.add(transitions(0, 10))
    held_at = time.monotonic()
    wait_until_ready(outbox)
    assert time.monotonic() - held_at >= 0.3
    outbox.flush(network)
    assert stored_actions(shard) == list(range(10))


def insert_requests(shard: ReplayShard) -> float:
    """Insert requests the shard served, unary or over a stream."""
    registry = shard.metrics.registry
    return sum(
        registry.get_sample_value("apexrl_replay_request_seconds_count", {"method": method}) or 0.0
        for method in ("InsertTransitions", "InsertStream")
    )


def kept_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == actor.__name__ and record.getMessage().startswith("insert failed, keeping")
    ]


def test_a_backlog_kept_through_an_outage_drains_in_batches_of_the_usual_size(
    start_shard: ShardFactory,
    network: DqnPolicy,
    start_transport: TransportFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    (port,) = pick_free_ports(1)  # below the ephemeral range: see above
    shard = start_shard(capacity=1000, port=port)
    shard.stop(snapshot=False)
    transport = start_transport([shard.address])
    outbox = Outbox(transport, batch_size=16, metrics=ActorMetrics())
    for first in range(0, 112, 8):
        outbox.add(transitions(first, 8))
    outbox.flush(network)  # refused: the first batch is kept, nothing else is tried
    (kept,) = kept_logged(caplog)
    assert kept.startswith("insert failed, keeping 112 transitions dropped=0 ")

    restarted = start_shard(capacity=1000, port=port)
    wait_until_ready(outbox)
    outbox.flush(network)
    assert stored_actions(restarted) == list(range(112))
    assert insert_requests(restarted) == 7  # 112 transitions, in requests of at most 16


def malformed(first: int, count: int) -> dict[str, NDArray[np.generic]]:
    """``transitions`` whose reward is float64: a shard whose signature says float32 refuses them."""
    columns = transitions(first, count)
    columns["reward"] = columns["reward"].astype(np.float64)
    return columns


def refused(metrics: ActorMetrics, shard: str, code: str = "INVALID_ARGUMENT") -> float | None:
    return metrics.registry.get_sample_value(
        "apexrl_actor_batches_refused_total", {"shard": shard, "code": code}
    )


def dropped(metrics: ActorMetrics, reason: str) -> float | None:
    return metrics.registry.get_sample_value("apexrl_actor_transitions_dropped_total", {"reason": reason})


def refusals_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == actor.__name__ and record.levelno == logging.ERROR
    ]


def test_a_batch_a_shard_refuses_for_good_is_dropped_and_counted_and_the_backlog_drains(
    start_shard: ShardFactory,
    network: DqnPolicy,
    start_transport: TransportFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    shard = start_shard(capacity=1000)
    transport = start_transport([shard.address])
    metrics = ActorMetrics()
    outbox = Outbox(transport, batch_size=16, metrics=metrics)
    # The first batch fixes the table's signature (reward float32); the second breaks it.
    for columns in (transitions(0, 16), malformed(16, 16), transitions(32, 16), transitions(48, 16)):
        outbox.add(columns)
    outbox.flush(network)
    assert stored_actions(shard) == list(range(16)) + list(range(32, 64))
    assert sent(metrics) == 48
    assert refused(metrics, "0") == 1
    assert dropped(metrics, "refused") == 16
    assert dropped(metrics, "outbox_full") == 0
    (logged,) = refusals_logged(caplog)  # once for the batch, with the shard and the server's message
    assert "shard=0" in logged
    assert shard.address in logged
    assert "code=INVALID_ARGUMENT" in logged
    assert "'reward' is float64[] but the table signature has float32[]" in logged


def test_after_a_batch_refused_for_good_the_next_one_leaves_at_once(
    start_shard: ShardFactory, network: DqnPolicy, start_transport: TransportFactory
) -> None:
    shard = start_shard(capacity=1000)
    transport = start_transport([shard.address])
    metrics = ActorMetrics()
    outbox = Outbox(transport, batch_size=16, metrics=metrics)
    # As the actor's loop does it: each full batch leaves as soon as the outbox is ready,
    # once the one before it is settled.
    for columns in (transitions(0, 16), malformed(16, 16), transitions(32, 16)):
        outbox.add(columns)
        assert outbox.ready()
        outbox.send(network)
    # Settling the refused batch did not put the outbox on a retry delay.
    outbox.add(transitions(48, 16))
    assert outbox.ready()
    outbox.send(network)
    outbox.flush(network)
    assert stored_actions(shard) == list(range(16)) + list(range(32, 64))
    assert sent(metrics) == 48
    assert refused(metrics, "0") == 1
    assert dropped(metrics, "refused") == 16


def test_refusals_are_counted_by_the_shard_that_refused(
    start_shard: ShardFactory,
    network: DqnPolicy,
    start_transport: TransportFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    healthy, other = start_shard(capacity=1000), start_shard(capacity=1000)
    # The second shard's table already holds observations of another size: it refuses ours.
    seeding = ShardedReplayClient([other.address], seed=0)
    seeding.insert(transitions(1000, 4, observation_size=8), np.ones(4))
    seeding.close()
    transport = start_transport([healthy.address, other.address])
    metrics = ActorMetrics()
    outbox = Outbox(transport, batch_size=16, metrics=metrics)
    for first in range(0, 96, 16):
        outbox.add(transitions(first, 16))
    outbox.flush(network)  # round robin: batches 0, 2 and 4 to the first shard, 1, 3 and 5 to the second
    assert stored_actions(healthy) == list(range(16)) + list(range(32, 48)) + list(range(64, 80))
    assert stored_actions(other) == list(range(1000, 1004))
    assert sent(metrics) == 48
    assert refused(metrics, "1") == 3
    assert refused(metrics, "0") is None
    assert dropped(metrics, "refused") == 48
    logged = refusals_logged(caplog)
    assert len(logged) == 3
    assert all("shard=1" in message and other.address in message for message in logged)
    assert all("table signature" in message for message in logged)


def test_a_batch_the_rate_limiter_holds_back_is_kept_and_arrives_once_sampling_catches_up(
    start_shard: ShardFactory,
    network: DqnPolicy,
    start_transport: TransportFactory,
) -> None:
    # One sample per inserted item within +-16 of 16: two batches of 16 fit before any sampling.
    shard = start_shard(
        capacity=1000, min_size_to_sample=16, samples_per_insert=1.0, samples_per_insert_tolerance=16.0
    )
    # Inserts fail at once with RESOURCE_EXHAUSTED instead of waiting on the limiter.
    transport = start_transport([shard.address], insert_wait_s=0.0)
    metrics = ActorMetrics()
    outbox = Outbox(transport, batch_size=16, metrics=metrics)
    for first in range(0, 48, 16):
        outbox.add(transitions(first, 16))
    outbox.flush(network)  # the third batch is held back: kept, not dropped
    assert stored_actions(shard) == list(range(32))
    assert sent(metrics) == 32
    assert refused(metrics, "0", "RESOURCE_EXHAUSTED") is None
    assert dropped(metrics, "refused") == 0

    learner = ShardedReplayClient([shard.address], seed=1)
    learner.sample(16, importance_exponent=0.4)  # makes room for one more batch
    learner.close()
    wait_until_ready(outbox)
    outbox.flush(network)
    assert stored_actions(shard) == list(range(48))
    assert sent(metrics) == 48


def test_the_oldest_transitions_beyond_the_bound_are_counted_as_dropped(
    network: DqnPolicy, start_transport: TransportFactory
) -> None:
    (port,) = pick_free_ports(1)  # nothing listens there: every insert finds the shard down
    transport = start_transport([f"127.0.0.1:{port}"])
    metrics = ActorMetrics()
    outbox = Outbox(transport, batch_size=1, metrics=metrics)
    bound = actor._MAX_OUTBOX_BATCHES  # transitions, with batches of one
    for first in range(bound + 6):
        outbox.add(transitions(first, 1))
    outbox.flush(network)
    assert dropped(metrics, "outbox_full") == 6
    assert dropped(metrics, "refused") == 0
    assert sent(metrics) == 0
