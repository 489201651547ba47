"""Compressed observation columns through real shards: byte-identical round trips, bad input refused."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
from numpy.typing import NDArray

from apexrl.common.v1 import tensor_pb2
from apexrl.replay.v1 import replay_pb2, replay_pb2_grpc
from services.common import tensor_codec
from services.common.encoded import EncodedItems, compress, decompress, dense
from services.common.sharded_replay import ShardedReplayClient
from services.learner.feed_process import ReplayFeed
from tests.integration.conftest import ShardFactory, stub_for

TIMEOUT_S = 10
FRAME = (84, 84, 4)


def frames(first: int, count: int) -> NDArray[np.uint8]:
    """Image-like, compressible observations that name their item: a flat field of its index, a busy patch."""
    index = np.arange(first, first + count, dtype=np.int64)[:, None, None, None]
    stacks = np.zeros((count, *FRAME), dtype=np.uint8) + (index % 251).astype(np.uint8)
    pixels = np.arange(6 * 6 * 4, dtype=np.int64).reshape(1, 6, 6, 4)
    stacks[:, :6, :6, :] = ((index * 7919 + pixels * 104729) % 256).astype(np.uint8)
    return stacks


def atari_transitions(first: int, count: int) -> dict[str, NDArray[np.generic] | EncodedItems]:
    observations = frames(first, count + 1)
    return {
        "observation": compress(observations[:-1]),
        "action": np.arange(first, first + count, dtype=np.int64),
        "reward": np.ones(count, dtype=np.float32),
        "discount": np.full(count, 0.99, dtype=np.float32),
        "next_observation": compress(observations[1:]),
    }


def insert_request(first: int, count: int) -> replay_pb2.InsertTransitionsRequest:
    request = replay_pb2.InsertTransitionsRequest(priorities=tensor_codec.encode(np.ones(count)))
    tensor_codec.encode_columns_into(request.batch, atari_transitions(first, count))
    return request


def state(stub: replay_pb2_grpc.ReplayServiceStub) -> tuple[int, int, float, int]:
    info = stub.GetInfo(replay_pb2.GetInfoRequest(), timeout=TIMEOUT_S)
    return info.size, info.inserts, info.total_priority_mass, info.storage_bytes


def test_sampled_items_are_the_inserted_bytes_across_eviction_and_a_restart(
    start_shard: ShardFactory, tmp_path: Path
) -> None:
    path = tmp_path / "shard.snapshot"
    shard = start_shard(capacity=50, snapshot_path=path)
    client = ShardedReplayClient([shard.address], seed=0)
    sent: dict[int, bytes] = {}
    for first in range(0, 120, 40):  # 120 items through a ring of 50
        columns = atari_transitions(first, 40)
        client.insert(columns, np.ones(40))
        observations = columns["observation"]
        assert isinstance(observations, EncodedItems)
        for index in range(40):
            sent[first + index] = observations.take(np.array([index])).data.tobytes()

    def check(client: ShardedReplayClient) -> None:
        sample = client.sample(256, importance_exponent=0.5)
        actions = dense(sample.columns["action"])
        assert set(actions.tolist()) <= set(range(70, 120))
        observations = sample.columns["observation"]
        assert isinstance(observations, EncodedItems)
        for row, action in enumerate(actions[:64]):
            assert observations.take(np.array([row])).data.tobytes() == sent[int(action)]
        np.testing.assert_array_equal(decompress(observations), frames(0, 121)[actions])
        next_observations = sample.columns["next_observation"]
        assert isinstance(next_observations, EncodedItems)
        np.testing.assert_array_equal(decompress(next_observations), frames(0, 121)[actions + 1])

    check(client)
    info = stub_for(shard).GetInfo(replay_pb2.GetInfoRequest(), timeout=TIMEOUT_S)
    assert dict(info.column_codecs) == {
        "observation": tensor_pb2.CODEC_ZSTD,
        "next_observation": tensor_pb2.CODEC_ZSTD,
    }
    assert info.signature["observation"] == tensor_pb2.TensorSpec(
        dtype=tensor_pb2.DATA_TYPE_UINT8, shape=FRAME
    )
    raw_bytes = 2 * int(np.prod(FRAME))
    assert 0 < info.storage_bytes < 50 * raw_bytes / 8
    shard.stop()
    restarted = start_shard(capacity=50, snapshot_path=path)
    check(ShardedReplayClient([restarted.address], seed=1))


def _corrupted(request: replay_pb2.InsertTransitionsRequest) -> replay_pb2.InsertTransitionsRequest:
    data = bytearray(request.batch.encoded_columns["observation"].data)
    data[len(data) // 2] ^= 0xFF
    request.batch.encoded_columns["observation"].data = bytes(data)
    return request


def _resized(request: replay_pb2.InsertTransitionsRequest) -> replay_pb2.InsertTransitionsRequest:
    column = request.batch.encoded_columns["observation"]
    column.item_spec.shape[:] = [84, 84, 3]
    return request


def _truncated(request: replay_pb2.InsertTransitionsRequest) -> replay_pb2.InsertTransitionsRequest:
    column = request.batch.encoded_columns["observation"]
    sizes = tensor_codec.decode(column.sizes).copy()
    sizes[-1] -= 1
    tensor_codec.encode_into(column.sizes, sizes)
    column.data = column.data[:-1]
    return request


def _sizes_off(request: replay_pb2.InsertTransitionsRequest) -> replay_pb2.InsertTransitionsRequest:
    column = request.batch.encoded_columns["observation"]
    column.data = column.data + b"\0"
    return request


def _no_codec(request: replay_pb2.InsertTransitionsRequest) -> replay_pb2.InsertTransitionsRequest:
    request.batch.encoded_columns["observation"].codec = tensor_pb2.CODEC_UNSPECIFIED
    return request


def _raw_instead(request: replay_pb2.InsertTransitionsRequest) -> replay_pb2.InsertTransitionsRequest:
    del request.batch.encoded_columns["observation"]
    tensor_codec.encode_into(request.batch.columns["observation"], frames(0, 4))
    return request


def _both(request: replay_pb2.InsertTransitionsRequest) -> replay_pb2.InsertTransitionsRequest:
    tensor_codec.encode_into(request.batch.columns["observation"], frames(0, 4))
    return request


def _zero_size(request: replay_pb2.InsertTransitionsRequest) -> replay_pb2.InsertTransitionsRequest:
    column = request.batch.encoded_columns["observation"]
    sizes = tensor_codec.decode(column.sizes).copy()
    sizes[0], sizes[1] = 0, sizes[0] + sizes[1]
    tensor_codec.encode_into(column.sizes, sizes)
    return request


BAD = {
    "corrupt bytes": (_corrupted, "do not decompress to 28224 bytes each"),
    "another item size": (_resized, "do not decompress to 21168 bytes each"),
    "a truncated item": (_truncated, "do not decompress"),
    "sizes not adding up": (_sizes_off, "sizes add up to"),
    "no codec": (_no_codec, "unknown or unspecified codec 0"),
    "raw where the table holds it encoded": (
        _raw_instead,
        "but the table signature has uint8[84, 84, 4] encoded",
    ),
    "raw and encoded at once": (_both, "given both raw and encoded"),
    "an empty item": (_zero_size, "every item needs at least 1 byte"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_encoded_input_is_invalid_argument_and_changes_nothing(
    start_shard: ShardFactory, case: str
) -> None:
    stub = stub_for(start_shard(capacity=100))
    stub.InsertTransitions(insert_request(0, 10), timeout=TIMEOUT_S)
    before = state(stub)
    breaking, message = BAD[case]
    with pytest.raises(grpc.RpcError) as caught:
        stub.InsertTransitions(breaking(insert_request(10, 4)), timeout=TIMEOUT_S)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (caught.value.details() or "")
    assert state(stub) == before


def test_the_feed_hands_the_learner_decoded_frames(start_shard: ShardFactory) -> None:
    shards = [start_shard(capacity=1000) for _ in range(2)]
    client = ShardedReplayClient([shard.address for shard in shards], seed=0)
    client.insert(atari_transitions(0, 60), np.ones(60))
    client.insert(atari_transitions(60, 60), np.ones(60))
    feed = ReplayFeed([s.address for s in shards], 16, 0.4, 1, seed=0, batches_per_request=4).start()
    try:
        for _ in range(6):
            batch = feed.get(timeout_s=30.0)
            assert batch is not None, "no batch from the feed within 30 s"
            actions = batch.columns["action"]
            assert batch.columns["observation"].shape == (16, *FRAME)
            assert batch.columns["observation"].dtype == np.uint8
            np.testing.assert_array_equal(batch.columns["observation"], frames(0, 121)[actions])
            np.testing.assert_array_equal(batch.columns["next_observation"], frames(0, 121)[actions + 1])
            feed.release(batch, np.ones(16), 0.4)
    finally:
        feed.stop()
