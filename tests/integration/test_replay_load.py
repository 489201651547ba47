"""Two replay shard processes under load: 64 inserting clients and a sampling learner for 60 s.

Every item a client had acknowledged (keys returned) is counted per shard; at the end
each shard's own counters must agree exactly: inserts = acknowledged items, size =
min(inserts, capacity), so inserted = stored + evicted. No error is allowed: the shards
run without the samples-per-insert limiter, the one refusal replay.proto documents for a
load of valid requests. The gRPC server's own admission limit (services/common/serving.py:
``maximum_concurrent_rpcs`` = 4 x ``max_workers`` = 64 calls per shard), which answers
RESOURCE_EXHAUSTED "Concurrent RPC limit exceeded!", is not among them, so it fails the
test too: 64 clients and a learner can put more than 64 calls on one shard at once.

The shards run as separate processes, started as ``apexrl run`` starts them
(``python -m services replay``, through LocalProcess): in-process shards would share the
test's interpreter lock with the 64 client threads and the sampler, so the server would
be throttled by its own clients and the load would not be the one a deployment sees.
The clients are threads, each with its own ShardedReplayClient (its own channels): a
thread releases the lock while its call is in flight, so the shards see up to 64
concurrent inserts (the test reports the most it saw), which is what the load is about.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pytest
from numpy.typing import NDArray

from apexrl.replay.v1 import replay_pb2, replay_pb2_grpc
from services.common.channels import create_channel
from services.common.local_process import LocalProcess
from services.common.sharded_replay import ShardedReplayClient
from services.replay.demo import cartpole_like_transitions

LOAD_SECONDS = 60.0
CLIENTS = 64
SHARDS = 2
CAPACITY = 20_000  # per shard: small enough that both shards evict many times over
INSERT_BATCH = 32
SAMPLE_BATCH = 128
IMPORTANCE_EXPONENT = 0.4
SEED = 20_240
JOIN_TIMEOUT_S = 60.0


def _error_name(call: str, error: Exception) -> str:
    """``insert: RESOURCE_EXHAUSTED Concurrent RPC limit exceeded!``: the call, code and details."""
    if isinstance(error, grpc.RpcError):
        return f"{call}: {error.code().name} {error.details()}"
    return f"{call}: {type(error).__name__} {error}"


class _Warnings(logging.Handler):
    """Counts the sharded client's warnings: it retries a shard it found down on another one
    without raising, so a timed-out or refused call would otherwise pass unseen."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@dataclass
class _InFlight:
    """Inserts in flight now and the most seen at once, over all clients."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    now: int = 0
    most: int = 0

    def enter(self) -> None:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)

    def leave(self) -> None:
        with self.lock:
            self.now -= 1


@dataclass
class _Inserter:
    """One client's acknowledged keys per shard and its errors."""

    keys: list[list[NDArray[np.int64]]] = field(default_factory=lambda: [[] for _ in range(SHARDS)])
    calls: int = 0
    errors: Counter[str] = field(default_factory=Counter)

    def acknowledged(self, shard: int) -> int:
        return sum(len(keys) for keys in self.keys[shard])


@dataclass
class _Sampler:
    batches: int = 0
    sampled: list[int] = field(default_factory=lambda: [0] * SHARDS)  # items drawn from each shard
    updated: int = 0
    stale: int = 0
    errors: Counter[str] = field(default_factory=Counter)


def insert_until(
    stop: threading.Event,
    addresses: list[str],
    index: int,
    tally: _Inserter,
    first_item: list[threading.Event],
    in_flight: _InFlight,
) -> None:
    rng = np.random.default_rng(SEED + 1 + index)
    client = ShardedReplayClient(addresses, seed=SEED + 1 + index)
    try:
        while not stop.is_set():
            columns = cartpole_like_transitions(rng, INSERT_BATCH)
            priorities = 1.0 - rng.random(INSERT_BATCH)  # in (0, 1]
            tally.calls += 1
            in_flight.enter()
            try:
                shard, keys = client.insert(columns, priorities)
            except Exception as error:  # every failure is counted; the test allows none
                tally.errors[_error_name("insert", error)] += 1
                time.sleep(0.05)
                continue
            finally:
                in_flight.leave()
            tally.keys[shard].append(keys)
            first_item[shard].set()
    finally:
        client.close()


def sample_until(
    stop: threading.Event, addresses: list[str], tally: _Sampler, first_item: list[threading.Event]
) -> None:
    """A learner's loop: a prioritized batch over both shards, then new priorities for it."""
    for event in first_item:
        if not event.wait(JOIN_TIMEOUT_S):
            tally.errors["no insert acknowledged before the sampler started"] += 1
            return
    rng = np.random.default_rng(SEED)
    client = ShardedReplayClient(addresses, seed=SEED)
    try:
        while not stop.is_set():
            call = "sample"
            try:
                sample = client.sample(SAMPLE_BATCH, IMPORTANCE_EXPONENT)
                tally.batches += 1
                for shard, count in enumerate(np.bincount(sample.shards, minlength=SHARDS)):
                    tally.sampled[shard] += int(count)
                call = "update_priorities"
                applied = client.update_priorities(
                    sample.shards, sample.keys, 1.0 - rng.random(len(sample.keys))
                )
            except Exception as error:  # every failure is counted; the test allows none
                tally.errors[_error_name(call, error)] += 1
                time.sleep(0.05)
                continue
            tally.updated += applied
            tally.stale += len(sample.keys) - applied
    finally:
        client.close()


@pytest.fixture
def shard_processes(tmp_path: Path) -> Iterator[list[LocalProcess]]:
    processes = [
        LocalProcess(
            [
                "replay",
                "--port",
                "0",
                "--capacity",
                str(CAPACITY),
                "--min-size-to-sample",
                "1",
                "--seed",
                str(SEED + 100 + k),
            ],
            tmp_path / f"replay-{k}.log",
        )
        for k in range(SHARDS)
    ]
    try:
        yield processes
    finally:
        for process in processes:
            process.stop()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_64_inserting_clients_and_a_sampler_for_60_s_every_acknowledged_item_is_stored_or_evicted(
    shard_processes: list[LocalProcess],
) -> None:
    addresses = [process.wait_for_address() for process in shard_processes]
    warnings = _Warnings()
    client_logger = logging.getLogger("services.common.sharded_replay")
    client_logger.addHandler(warnings)
    stop = threading.Event()
    first_item = [threading.Event() for _ in range(SHARDS)]
    in_flight = _InFlight()
    inserters = [_Inserter() for _ in range(CLIENTS)]
    sampler = _Sampler()
    threads = [
        threading.Thread(
            target=insert_until,
            args=(stop, addresses, index, tally, first_item, in_flight),
            name=f"inserter-{index}",
        )
        for index, tally in enumerate(inserters)
    ]
    threads.append(
        threading.Thread(target=sample_until, args=(stop, addresses, sampler, first_item), name="sampler")
    )
    started = time.monotonic()
    try:
        for thread in threads:
            thread.start()
        stop.wait(LOAD_SECONDS)
    finally:
        stop.set()
        for thread in threads:
            thread.join(JOIN_TIMEOUT_S)
        client_logger.removeHandler(warnings)
    elapsed_s = time.monotonic() - started
    assert not [thread.name for thread in threads if thread.is_alive()]

    infos = []
    for address in addresses:
        channel = create_channel(address)
        infos.append(replay_pb2_grpc.ReplayServiceStub(channel).GetInfo(replay_pb2.GetInfoRequest()))
        channel.close()
    acknowledged = [sum(tally.acknowledged(shard) for tally in inserters) for shard in range(SHARDS)]
    errors = sum((tally.errors for tally in inserters), Counter[str]()) + sampler.errors
    figures = {
        "seconds": round(elapsed_s, 1),
        "insert_calls": sum(tally.calls for tally in inserters),
        "most_inserts_in_flight": in_flight.most,
        "shards": [
            {
                "acknowledged": acknowledged[shard],
                "inserts": info.inserts,
                "stored": info.size,
                "evicted": info.inserts - info.size,
                "samples": info.samples,
                "priority_updates": info.priority_updates,
            }
            for shard, info in enumerate(infos)
        ],
        "sample_batches": sampler.batches,
        "sampled_items": sampler.sampled,
        "priorities_updated": sampler.updated,
        "stale_updates": sampler.stale,
        "errors": dict(errors),
        "client_warnings": warnings.messages[:10],
    }
    print(json.dumps({"test": "replay_load", **figures}))

    assert not errors, figures
    assert not warnings.messages, figures
    assert all(tally.acknowledged(0) + tally.acknowledged(1) > 0 for tally in inserters), figures
    assert sampler.batches > 0, figures
    for shard, info in enumerate(infos):
        inserts, stored = int(info.inserts), int(info.size)
        assert int(info.capacity) == CAPACITY
        assert inserts == acknowledged[shard], figures
        assert stored == min(inserts, CAPACITY), figures
        assert inserts > CAPACITY, f"shard {shard} never evicted: {figures}"
        # Each acknowledged key is one the shard issued, exactly once: keys are the
        # incarnation plus the insertion sequence, so together they are one unbroken range.
        keys = np.sort(np.concatenate([keys for tally in inserters for keys in tally.keys[shard]]))
        np.testing.assert_array_equal(keys, int(info.incarnation) + np.arange(inserts))
        # Every item the shard counted as sampled reached the learner (none in a discarded reply).
        assert int(info.samples) == sampler.sampled[shard], figures
    assert sum(info.priority_updates for info in infos) == sampler.updated, figures
    # A shard stops cleanly (exit 0) after the load, as SIGTERM from a supervisor stops it.
    assert [process.stop() for process in shard_processes] == [0] * SHARDS
