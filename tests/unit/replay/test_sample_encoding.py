"""Spliced SampleTransitions replies are byte-for-byte replies a client parses like any other."""

from __future__ import annotations

import numpy as np
import pytest

from apexrl.replay.v1 import replay_pb2
from services.common import tensor_codec
from services.common.encoded import Column, EncodedItems, compress, dense
from services.replay.rate_limiter import RateLimiterSettings
from services.replay.sample_encoding import serialize_sample
from services.replay.table import PrioritizedTable, SampledItems


def items(observation_shape: tuple[int, ...], dtype: type) -> SampledItems[Column]:
    rng = np.random.default_rng(1)
    count = 64
    columns: dict[str, Column] = {
        "observation": rng.integers(0, 255, (count, *observation_shape)).astype(dtype),
        "action": rng.integers(0, 6, count),
        "reward": rng.random(count, dtype=np.float32),
        "done": rng.random(count) < 0.5,
        "empty": np.zeros((count, 0), dtype=np.float32),
        # Compressed items travel as they are stored, beside the dense columns.
        "next_observation": compress(rng.integers(0, 3, (count, *observation_shape)).astype(dtype)),
    }
    return SampledItems(rng.integers(0, 1 << 50, count), rng.random(count), columns, 12.5, 1000)


@pytest.mark.parametrize(
    ("shape", "dtype"),
    [((4,), np.float32), ((84, 84, 4), np.uint8)],  # below and above the splicing threshold
)
def test_the_serialized_reply_parses_to_the_message_built_one(shape: tuple[int, ...], dtype: type) -> None:
    sample = items(shape, dtype)
    expected = replay_pb2.SampleTransitionsResponse(
        keys=tensor_codec.encode(sample.keys),
        priority_masses=tensor_codec.encode(sample.priority_masses),
        batch=tensor_codec.encode_columns(sample.columns),
        total_priority_mass=sample.total_priority_mass,
        size=sample.size,
    )
    parsed = replay_pb2.SampleTransitionsResponse.FromString(serialize_sample(sample))
    assert parsed == expected
    decoded = tensor_codec.decode_columns(parsed.batch)
    for name, column in sample.columns.items():
        got = decoded[name]
        if isinstance(column, EncodedItems):
            assert isinstance(got, EncodedItems)
            assert got.data.tobytes() == column.data.tobytes()
            np.testing.assert_array_equal(got.sizes, column.sizes)
        else:
            np.testing.assert_array_equal(dense(got), column)


@pytest.mark.parametrize(
    ("shape", "dtype"),
    [((4,), np.float32), ((84, 84, 4), np.uint8)],  # below and above the splicing threshold
)
def test_a_streamed_reply_holds_the_unary_reply_as_its_sample(shape: tuple[int, ...], dtype: type) -> None:
    sample = items(shape, dtype)
    field = replay_pb2.SampleStreamResponse.DESCRIPTOR.fields_by_name["sample"].number
    streamed = replay_pb2.SampleStreamResponse.FromString(serialize_sample(sample, field))
    assert streamed.sample == replay_pb2.SampleTransitionsResponse.FromString(serialize_sample(sample))


def test_a_reply_joined_from_the_stored_rows_holds_each_sampled_item() -> None:
    table = PrioritizedTable(50, 1.0, RateLimiterSettings(), seed=4)
    rng = np.random.default_rng(5)
    frames = rng.integers(0, 256, (80, 84, 84, 4), dtype=np.uint8)  # rows far above the view threshold
    for first in range(0, 80, 20):  # 80 items through a ring of 50
        rows = slice(first, first + 20)
        table.insert({"observation": frames[rows], "action": np.arange(80)[rows]}, np.ones(20), max_wait_s=0)
    reply = replay_pb2.SampleTransitionsResponse.FromString(table.sample_into(64, 0, serialize_sample))
    columns = tensor_codec.decode_columns(reply.batch)
    actions = dense(columns["action"])
    assert set(actions.tolist()) <= set(range(30, 80))
    np.testing.assert_array_equal(dense(columns["observation"]), frames[actions])
    keys = tensor_codec.decode(reply.keys)
    assert table.update_priorities(keys, np.ones(64)).updated == 64
    assert table.info().samples == 64
