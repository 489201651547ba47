"""Snapshots: safe format, atomic replacement, clear errors for files that are not snapshots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

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


def test_a_snapshot_round_trips_rows_and_counters(tmp_path: Path) -> None:
    state = filled_table().export_state()
    path = tmp_path / "shard.safetensors"
    assert save_snapshot(state, path) == path.stat().st_size
    loaded = load_snapshot(path)
    assert (loaded.capacity, loaded.next_sequence, loaded.incarnation, loaded.samples) == (
        8,
        10,
        1,
        5,
    )
    assert loaded.priority_exponent == 0.6
    np.testing.assert_array_equal(loaded.priority_masses, state.priority_masses)
    for name, column in state.columns.items():
        np.testing.assert_array_equal(loaded.columns[name], column)
        assert loaded.columns[name].dtype == column.dtype


def test_an_empty_table_snapshots_and_restores(tmp_path: Path) -> None:
    state = PrioritizedTable(4, 0.6, RateLimiterSettings()).export_state()
    save_snapshot(state, tmp_path / "empty.safetensors")
    restored = PrioritizedTable(
        4, 0.6, RateLimiterSettings(), state=load_snapshot(tmp_path / "empty.safetensors")
    )
    assert restored.info().size == 0


def test_a_crash_mid_write_leaves_the_previous_snapshot_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "shard.safetensors"
    save_snapshot(filled_table().export_state(), path)
    before = path.read_bytes()

    def write_half_then_fail(tensors: object, filename: str, metadata: object) -> None:
        Path(filename).write_bytes(before[: len(before) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("services.replay.snapshot.save_file", write_half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        save_snapshot(filled_table().export_state(), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["shard.safetensors"]


def test_a_file_that_is_not_a_snapshot_is_reported(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}" + b"junk")
    with pytest.raises(ValueError, match="replay snapshot"):
        load_snapshot(garbage)
    truncated = tmp_path / "truncated.safetensors"
    save_snapshot(filled_table().export_state(), truncated)
    truncated.write_bytes(truncated.read_bytes()[:40])
    with pytest.raises(ValueError, match="cannot read replay snapshot"):
        load_snapshot(truncated)
