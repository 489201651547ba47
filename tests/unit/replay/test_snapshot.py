"""Snapshots: streamed in chunks, safe format, atomic replacement, clear errors for what is not one."""

from __future__ import annotations

import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

from services.common.encoded import EncodedItems, compress, decompress
from services.replay.rate_limiter import RateLimiterSettings
from services.replay.snapshot import load_snapshot, save_snapshot
from services.replay.table import PrioritizedTable


def filled_table() -> PrioritizedTable:
    table = PrioritizedTable(8, 0.6, RateLimiterSettings(), seed=0)
    columns: dict[str, np.ndarray] = {
        "observation": np.arange(30, dtype=np.uint8).reshape(10, 3),
        "action": np.arange(10),
    }
    priorities = np.linspace(0.1, 1.0, 10)
    table.insert({name: column[:6] for name, column in columns.items()}, priorities[:6], max_wait_s=0)
    table.insert({name: column[6:] for name, column in columns.items()}, priorities[6:], max_wait_s=0)
    table.sample(5, max_wait_s=0)
    return table


def frames(first: int, count: int) -> np.ndarray:
    """Distinct, compressible image-like items: item i is filled with i (mod 256) and a gradient."""
    values = np.arange(first, first + count, dtype=np.int64)[:, None, None] + np.arange(12)[None, :, None]
    return (values + np.zeros((1, 1, 12), np.int64)).astype(np.uint8)


def test_a_snapshot_round_trips_rows_and_counters(tmp_path: Path) -> None:
    table = filled_table()
    path = tmp_path / "shard.snapshot"
    written = save_snapshot(table, path, chunk_bytes=20)  # a few rows per chunk
    assert written.bytes == path.stat().st_size
    assert written.rows == 8
    loaded = load_snapshot(path)
    counters = loaded.counters
    assert (counters.capacity, counters.inserts, counters.samples) == (8, 10, 5)
    # The table's incarnation, and the key after the last one it issued.
    assert (counters.incarnation, counters.next_key) == (
        table.info().incarnation,
        table.info().incarnation + 10,
    )
    assert counters.priority_exponent == 0.6
    assert loaded.rows == 8
    assert len(list(loaded.chunks())) > 1
    state = table.export_state()
    np.testing.assert_array_equal(loaded.priority_masses, state.priority_masses)
    for name, column in state.columns.items():
        assert isinstance(column, np.ndarray)
        np.testing.assert_array_equal(loaded.columns[name], column)
        assert loaded.columns[name].dtype == column.dtype
    # Oldest first: items 2..9 survived the eviction of 0 and 1.
    np.testing.assert_array_equal(state.columns["action"], np.arange(2, 10))


def test_encoded_columns_restore_byte_identical_across_eviction(tmp_path: Path) -> None:
    table = PrioritizedTable(7, 1.0, RateLimiterSettings(), seed=0)
    inserted: dict[int, bytes] = {}
    for first, count in ((0, 5), (5, 4), (9, 3)):  # wraps the ring twice
        items = compress(frames(first, count))
        table.insert({"observation": items, "action": np.arange(first, first + count)}, np.ones(count), 0)
        for index in range(count):
            inserted[first + index] = items.take(np.array([index])).data.tobytes()
    save_snapshot(table, tmp_path / "shard.snapshot", chunk_bytes=1)
    restored = PrioritizedTable(
        7, 1.0, RateLimiterSettings(), seed=1, state=load_snapshot(tmp_path / "shard.snapshot")
    )
    sample = restored.sample(500, max_wait_s=0)
    observations = sample.columns["observation"]
    assert isinstance(observations, EncodedItems)
    actions = np.asarray(sample.columns["action"])
    assert set(actions.tolist()) == set(range(5, 12))
    for index, action in enumerate(actions[:50]):
        assert observations.take(np.array([index])).data.tobytes() == inserted[int(action)]
    np.testing.assert_array_equal(decompress(observations), frames(0, 12)[actions])


def test_a_snapshot_taken_while_inserts_go_on_is_consistent(tmp_path: Path) -> None:
    table = PrioritizedTable(200, 1.0, RateLimiterSettings(), seed=0)
    table.insert({"observation": compress(frames(0, 200)), "action": np.arange(200)}, np.ones(200), 0)
    stop = threading.Event()

    def insert_more() -> None:
        first = 200
        while not stop.is_set():
            table.insert(
                {"observation": compress(frames(first, 10)), "action": np.arange(first, first + 10)},
                np.ones(10),
                0,
            )
            first += 10

    writer = threading.Thread(target=insert_more)
    writer.start()
    try:
        written = save_snapshot(table, tmp_path / "shard.snapshot", chunk_bytes=64)
    finally:
        stop.set()
        writer.join()
    state = load_snapshot(tmp_path / "shard.snapshot")
    assert state.rows == written.rows
    actions = np.asarray(state.columns["action"])
    observations = state.columns["observation"]
    assert isinstance(observations, EncodedItems)
    # Every row is whole (its observation belongs to its action), and rows keep their order.
    np.testing.assert_array_equal(decompress(observations), frames(0, int(actions.max()) + 1)[actions])
    assert np.all(np.diff(actions) > 0)
    restored = PrioritizedTable(
        200, 1.0, RateLimiterSettings(), state=load_snapshot(tmp_path / "shard.snapshot")
    )
    assert restored.info().size == written.rows


def test_an_empty_table_snapshots_and_restores(tmp_path: Path) -> None:
    save_snapshot(PrioritizedTable(4, 0.6, RateLimiterSettings()), tmp_path / "empty.snapshot")
    restored = PrioritizedTable(
        4, 0.6, RateLimiterSettings(), state=load_snapshot(tmp_path / "empty.snapshot")
    )
    assert restored.info().size == 0


def test_a_crash_mid_write_leaves_the_previous_snapshot_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "shard.snapshot"
    save_snapshot(filled_table(), path)
    before = path.read_bytes()

    def fail(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("services.replay.snapshot._write_chunk", fail)
    with pytest.raises(OSError, match="No space left"):
        save_snapshot(filled_table(), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["shard.snapshot"]


def test_a_file_that_is_not_a_snapshot_is_reported(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.snapshot"
    garbage.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}" + b"junk")
    with pytest.raises(ValueError, match="cannot read replay snapshot"):
        load_snapshot(garbage)
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as archive:
        archive.writestr("manifest.json", '{"format": "something else"}')
    with pytest.raises(ValueError, match="not an apexrl replay snapshot"):
        load_snapshot(other)
    truncated = tmp_path / "truncated.snapshot"
    save_snapshot(filled_table(), truncated)
    truncated.write_bytes(truncated.read_bytes()[:40])
    with pytest.raises(ValueError, match="cannot read replay snapshot"):
        load_snapshot(truncated)
