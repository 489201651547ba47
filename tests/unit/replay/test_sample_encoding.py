"""Spliced SampleTransitions replies are byte-for-byte replies a client parses like any other."""

from __future__ import annotations

import numpy as np
import pytest

from apexrl.replay.v1 import replay_pb2
from services.common import tensor_codec
from services.replay.sample_encoding import serialize_sample
from services.replay.table import SampledItems


def items(observation_shape: tuple[int, ...], dtype: type) -> SampledItems:
    rng = np.random.default_rng(1)
    count = 64
    columns: dict[str, np.ndarray] = {
        "observation": rng.integers(0, 255, (count, *observation_shape)).astype(dtype),
        "action": rng.integers(0, 6, count),
        "reward": rng.random(count, dtype=np.float32),
        "done": rng.random(count) < 0.5,
        "empty": np.zeros((count, 0), dtype=np.float32),
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
        np.testing.assert_array_equal(decoded[name], column)
