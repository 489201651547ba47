"""Encoded columns' storage: what is read back is byte-identical to what went in, across wraps and growth."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest

from services.common.encoded import EncodedItems
from services.replay.byte_ring import ByteRing


def items_of(blobs: list[bytes]) -> EncodedItems:
    sizes = np.array([len(blob) for blob in blobs], dtype=np.int64)
    data = np.frombuffer(b"".join(blobs), dtype=np.uint8)
    return EncodedItems("zstd", np.dtype(np.uint8), (4,), sizes, data)


@pytest.mark.parametrize("seed", range(6))
def test_live_items_read_back_as_written_through_wraps_and_growth(seed: int) -> None:
    rng = np.random.default_rng(seed)
    capacity = int(rng.integers(1, 40))
    small = [bytes([1])]
    ring = ByteRing(capacity, items_of(small))  # sized for 1-byte items: later batches force growth
    live: deque[bytes] = deque(maxlen=capacity)
    sequence = 0
    for _ in range(120):
        count = int(rng.integers(1, capacity + 1))
        # Sizes vary by two orders of magnitude, so the arena's free run is sometimes too short.
        blobs = [rng.bytes(int(rng.integers(1, 200))) for _ in range(count)]
        ring.write(sequence, items_of(blobs))
        sequence += count
        live.extend(blobs)
        held = min(sequence, capacity)
        slots = (np.arange(sequence - held, sequence) % capacity).astype(np.int64)
        read = ring.gather(slots)
        assert read.sizes.tolist() == [len(blob) for blob in live]
        assert read.data.tobytes() == b"".join(live)
        # Any order, with repeats, as sampling asks.
        picks = rng.integers(0, held, size=7)
        sampled = ring.gather(slots[picks])
        assert sampled.data.tobytes() == b"".join(live[int(pick)] for pick in picks)
    # The arena stays near what the live items need, not what was ever written.
    live_bytes = sum(len(blob) for blob in live)
    assert ring.allocated_bytes <= 2 * 1.25 * (live_bytes + 200 * capacity) + 16 * capacity + 64
