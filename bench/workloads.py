"""The replay workloads W1, W2 and W3 of docs/benchmarks.md and their pre-serialized requests."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from apexrl.replay.v1 import replay_pb2
from bench.atari_frames import as_inserted, pong_transitions
from services.common import tensor_codec
from services.common.encoded import Column

# Sampling batch of measures 2 and 3.
SAMPLE_BATCH = 256


@dataclass(frozen=True)
class ColumnShape:
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Workload:
    """One transition signature, the table it fills and how clients batch their inserts."""

    name: str
    columns: dict[str, ColumnShape]
    capacity: int
    # The fewest items the table must hold while sampling is measured (it is full by then).
    min_sampled_size: int
    # Transitions per Insert request: the clients' choice, large enough to amortize a call
    # and small enough (a few MB) that two writers do not queue behind each other.
    insert_batch: int
    # "random": columns of random values; "pong": real Pong transitions of a random policy,
    # their observation columns compressed as actors send them.
    source: str = "random"

    @property
    def item_bytes(self) -> int:
        """Raw bytes of one transition over all columns."""
        return sum(
            np.dtype(column.dtype).itemsize * int(np.prod(column.shape)) for column in self.columns.values()
        )

    @property
    def raw_bytes(self) -> int:
        """Raw bytes of a full table: capacity x bytes per transition."""
        return self.capacity * self.item_bytes


def _transition(observation: ColumnShape) -> dict[str, ColumnShape]:
    return {
        "observation": observation,
        "action": ColumnShape("int64", ()),
        "reward": ColumnShape("float32", ()),
        "discount": ColumnShape("float32", ()),
        "next_observation": observation,
    }


WORKLOADS: dict[str, Workload] = {
    "W1": Workload("W1", _transition(ColumnShape("float32", (4,))), 1_000_000, 100_000, 1000),
    "W2": Workload("W2", _transition(ColumnShape("uint8", (84, 84, 4))), 100_000, 20_000, 64),
    "W3": Workload("W3", _transition(ColumnShape("uint8", (84, 84, 4))), 100_000, 20_000, 256, "pong"),
}


def _random_column(rng: np.random.Generator, column: ColumnShape, count: int) -> NDArray[np.generic]:
    shape = (count, *column.shape)
    if column.dtype == "uint8":
        return rng.integers(0, 256, size=shape, dtype=np.uint8)
    if column.dtype == "int64":
        return rng.integers(0, 2, size=shape, dtype=np.int64)
    return rng.standard_normal(size=shape).astype(column.dtype)


def random_priorities(rng: np.random.Generator, count: int) -> NDArray[np.float32]:
    """Uniform in (0, 1]: 1 - U[0, 1) never hits 0."""
    return (1.0 - rng.random(count)).astype(np.float32)


def insert_requests(workload: Workload, count: int, seed: int) -> list[bytes]:
    """``count`` distinct serialized InsertRequests of ``workload.insert_batch`` transitions."""
    rng = np.random.default_rng(seed)
    requests = []
    played = pong_transitions(count * workload.insert_batch, seed) if workload.source == "pong" else {}
    for index in range(count):
        columns: dict[str, Column]
        if played:
            rows = slice(index * workload.insert_batch, (index + 1) * workload.insert_batch)
            columns = as_inserted({name: column[rows] for name, column in played.items()})
        else:
            columns = {
                name: _random_column(rng, column, workload.insert_batch)
                for name, column in workload.columns.items()
            }
        request = replay_pb2.InsertTransitionsRequest(
            batch=tensor_codec.encode_columns(columns),
            priorities=tensor_codec.encode(random_priorities(rng, workload.insert_batch)),
            max_wait_s=0.0,
        )
        requests.append(request.SerializeToString())
    return requests


def sample_request() -> bytes:
    return replay_pb2.SampleTransitionsRequest(batch_size=SAMPLE_BATCH).SerializeToString()


def sample_stream_request() -> bytes:
    """A SampleStream request for the batch of :func:`sample_request`."""
    sample = replay_pb2.SampleTransitionsRequest(batch_size=SAMPLE_BATCH)
    return replay_pb2.SampleStreamRequest(sample=sample).SerializeToString()


def insert_stream_requests(inserts: list[bytes]) -> list[bytes]:
    """Each serialized InsertTransitions request of ``inserts`` as an InsertStream request."""
    return [
        replay_pb2.InsertStreamRequest(
            insert=replay_pb2.InsertTransitionsRequest.FromString(request)
        ).SerializeToString()
        for request in inserts
    ]


def update_request(sample_reply: bytes, priorities: NDArray[np.float32], *, streamed: bool = False) -> bytes:
    """New priorities for every key of a serialized SampleTransitionsResponse (a
    SampleStreamResponse when ``streamed``), as a learner sends them."""
    if streamed:
        keys = replay_pb2.SampleStreamResponse.FromString(sample_reply).sample.keys
    else:
        keys = replay_pb2.SampleTransitionsResponse.FromString(sample_reply).keys
    request = replay_pb2.UpdatePrioritiesRequest(keys=keys, priorities=tensor_codec.encode(priorities))
    return request.SerializeToString()
