"""InsertStream on real shards: what a stream inserts, a shard's limit on streams, and failures."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from apexrl.replay.v1 import replay_pb2
from services.common import tensor_codec
from services.common.encoded import dense
from services.common.sharded_replay import INSERT_STREAM_LIMIT_KEY, InsertRefusedError, ShardedReplayClient
from services.replay.shard import ReplayShard
from tests.integration.conftest import ShardFactory, stub_for, transitions


def _stored_actions(client: ShardedReplayClient, count: int) -> set[int]:
    """The actions (the items' global indexes) of a large sample: every item when ``count`` are held."""
    sample = client.sample(20 * count, importance_exponent=0.0)
    return set(dense(sample.columns["action"]).tolist())


def _served_over_streams(shard: ReplayShard) -> float | None:
    """Insert requests the shard served over InsertStream (None: none)."""
    return shard.metrics.registry.get_sample_value(
        "apexrl_replay_request_seconds_count", {"method": "InsertStream"}
    )


def _insert_request(first: int, count: int) -> replay_pb2.InsertTransitionsRequest:
    request = replay_pb2.InsertTransitionsRequest()
    tensor_codec.encode_columns_into(request.batch, transitions(first, count))
    tensor_codec.encode_into(request.priorities, np.ones(count, dtype=np.float32))
    return request


def test_inserts_over_the_stream_store_what_unary_inserts_store(start_shard: ShardFactory) -> None:
    streamed, unary = start_shard(capacity=1000), start_shard(capacity=1000)
    for shard, stream_inserts in ((streamed, True), (unary, False)):
        client = ShardedReplayClient([shard.address], seed=0, stream_inserts=stream_inserts)
        keys = [client.insert(transitions(first, 50), np.ones(50))[1] for first in range(0, 300, 50)]
        assert np.array_equal(np.concatenate(keys), np.arange(300) + keys[0][0])
        assert shard.table.info().size == 300
        assert _stored_actions(client, 300) == set(range(300))
        client.close()
    assert _served_over_streams(streamed) == 6
    assert _served_over_streams(unary) is None


def test_a_shard_at_its_stream_limit_refuses_the_stream_and_the_writer_inserts_unary(
    start_shard: ShardFactory,
) -> None:
    shard = start_shard(capacity=1000, max_insert_streams=1, max_workers=4)
    first = ShardedReplayClient([shard.address], seed=0, stream_inserts=True)
    first.insert(transitions(0, 10), np.ones(10))  # holds the shard's one insert stream
    # A raw stream beyond the limit: refused before its request is read, the limit said.
    stub = stub_for(shard)
    call = stub.InsertStream(iter([replay_pb2.InsertStreamRequest(insert=_insert_request(10, 10))]))
    with pytest.raises(grpc.RpcError) as refused:
        next(call)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    trailing = refused.value.trailing_metadata()
    limits = [item.value for item in trailing if item.key == INSERT_STREAM_LIMIT_KEY]
    assert limits in (["1"], [b"1"])  # gRPC's stubs say bytes; an ASCII key's value is a str
    assert shard.table.info().size == 10
    # The client's second writer gets the same refusal and sends its batch unary instead.
    second = ShardedReplayClient([shard.address], seed=1, stream_inserts=True)
    for start in range(10, 60, 10):
        second.insert(transitions(start, 10), np.ones(10))
    first.insert(transitions(60, 10), np.ones(10))
    assert _stored_actions(first, 70) == set(range(70))
    refusals = shard.metrics.registry.get_sample_value(
        "apexrl_replay_request_errors_total", {"method": "InsertStream", "code": "RESOURCE_EXHAUSTED"}
    )
    assert refusals == 2
    # Once the first writer closes its stream, a new stream is served.
    first.close()
    stub.InsertTransitions(_insert_request(70, 1))
    replies = stub.InsertStream(iter([replay_pb2.InsertStreamRequest(insert=_insert_request(71, 5))]))
    assert len(tensor_codec.decode(next(replies).insert.keys, "keys")) == 5
    second.close()


def test_a_refused_batch_ends_its_stream_only_and_the_next_batch_goes_on_a_new_one(
    start_shard: ShardFactory,
) -> None:
    shard = start_shard(capacity=1000)
    client = ShardedReplayClient([shard.address], seed=0, stream_inserts=True)
    client.insert(transitions(0, 20), np.ones(20))
    with pytest.raises(InsertRefusedError) as refused:
        client.insert(transitions(20, 20), np.full(20, np.nan))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "priorities" in refused.value.details()
    assert shard.table.info().size == 20
    client.insert(transitions(40, 20), np.ones(20))
    assert _stored_actions(client, 40) == set(range(20)) | set(range(40, 60))
    client.close()


def test_the_stream_limit_leaves_threads_for_other_calls() -> None:
    from services.replay.settings import ReplayShardSettings  # noqa: PLC0415

    with pytest.raises(ValueError, match="max_insert_streams"):
        ReplayShardSettings(max_workers=4, max_insert_streams=4)
