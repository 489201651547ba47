"""Damaged snapshots and checkpoints are refused with an error naming the file, never half-loaded.

Every file here is a real one: a table's rows streamed by ``save_snapshot`` (three chunks, one
column stored zstd-encoded), the tensors of a real Ape-X DQN learner written by
``save_checkpoint``. Each is then truncated or has one bit flipped, at chosen places (each
part of the container, each chunk) and at seeded random ones.
"""

from __future__ import annotations

import logging
import random
import struct
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from numpy.typing import NDArray

from services.algorithms.experiment import load_experiment
from services.algorithms.families import family_named
from services.common.encoded import Column, compress, decoded
from services.common.environments import describe_environment
from services.learner.checkpoint import (
    NoReadableCheckpointError,
    Restored,
    TrainingCounters,
    checkpoints,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from services.learner.learner import config_yaml
from services.replay.rate_limiter import RateLimiterSettings
from services.replay.snapshot import load_snapshot, save_snapshot
from services.replay.table import PrioritizedTable, TableState
from tests.integration.conftest import ShardFactory, transitions
from tests.integration.training_fixtures import SMALL

ROOT = Path(__file__).resolve().parents[2]
CAPACITY = 100
ROWS = 30
ROWS_PER_CHUNK = 10
RANDOM_FLIPS = 400


def flipped(raw: bytes, position: int, bit: int) -> bytes:
    damaged = bytearray(raw)
    damaged[position] ^= 1 << bit
    return bytes(damaged)


# ---- replay snapshots ------------------------------------------------------------------------


def new_table(state: TableState | None = None) -> PrioritizedTable:
    return PrioritizedTable(CAPACITY, 0.6, RateLimiterSettings(), seed=5, state=state)


def write_snapshot(path: Path) -> PrioritizedTable:
    """A table of 30 items, the observations zstd-encoded, saved in three chunks of ten rows."""
    table = new_table()
    columns = transitions(0, ROWS)
    encoded: dict[str, Column] = {**columns, "observation": compress(columns["observation"])}
    table.insert(encoded, np.linspace(1.0, 3.0, ROWS), max_wait_s=0)
    written = save_snapshot(table, path, chunk_bytes=ROWS_PER_CHUNK * table.item_bytes)
    assert written.rows == ROWS
    with zipfile.ZipFile(path) as archive:
        assert {name.split("/")[0] for name in archive.namelist()} == {
            "chunk-000000",
            "chunk-000001",
            "chunk-000002",
            "manifest.json",
        }
    return table


def restore(path: Path) -> PrioritizedTable:
    """What a shard does on start: opens the snapshot, and builds its table from every chunk."""
    return new_table(load_snapshot(path))


def assert_same_table(restored: PrioritizedTable, original: PrioritizedTable) -> None:
    got, expected = restored.export_state(), original.export_state()
    assert got.rows == expected.rows
    got_columns, expected_columns = decoded(got.columns), decoded(expected.columns)
    assert got_columns.keys() == expected_columns.keys()
    for name, column in expected_columns.items():
        np.testing.assert_array_equal(got_columns[name], column, err_msg=name)
    np.testing.assert_array_equal(got.priority_masses, expected.priority_masses)
    for counter in ("inserts", "samples", "priority_updates", "capacity", "priority_exponent"):
        assert getattr(got.counters, counter) == getattr(expected.counters, counter), counter


def refused_or_identical(path: Path, original: PrioritizedTable, what: str) -> bool:
    """True if the damaged snapshot is refused naming the file; else it must restore exactly the original.

    (A flip in a field zipfile does not read, a timestamp say, changes nothing.)
    """
    refusal = snapshot_refusal(path, original, what)
    if refusal is None:
        return False
    assert str(path) in refusal, f"{what}: the error does not name the file: {refusal}"
    assert "replay snapshot" in refusal, f"{what}: {refusal}"
    return True


def snapshot_refusal(path: Path, original: PrioritizedTable, what: str) -> str | None:
    """The error restoring ``path`` raised; None when it restored, exactly as ``original``."""
    try:
        restored = restore(path)
    except ValueError as error:
        return str(error)
    except Exception as error:  # the defect this guards against: a crash that names nothing
        pytest.fail(f"{what}: {type(error).__name__} instead of a ValueError naming the file: {error}")
    assert_same_table(restored, original)
    return None


def central_directory_entry(raw: bytes, name: str) -> int:
    """Offset of ``name``'s record in the archive's central directory."""
    end = raw.rindex(b"PK\x05\x06")
    offset: int = struct.unpack_from("<I", raw, end + 16)[0]
    while raw[offset : offset + 4] == b"PK\x01\x02":
        name_length, extra_length, comment_length = struct.unpack_from("<HHH", raw, offset + 28)
        if raw[offset + 46 : offset + 46 + name_length].decode() == name:
            return offset
        offset += 46 + name_length + extra_length + comment_length
    raise AssertionError(f"{name} is not in the central directory")


def entry_data(path: Path, name: str) -> int:
    """Offset of the first byte of ``name``'s stored data (past its local header)."""
    raw = path.read_bytes()
    with zipfile.ZipFile(path) as archive:
        header = archive.getinfo(name).header_offset
    name_length, extra_length = struct.unpack_from("<HH", raw, header + 26)
    start: int = header + 30 + name_length + extra_length
    return start


def targeted_snapshot_damage(path: Path) -> dict[str, bytes]:
    """One damaged copy per part of the snapshot, by what was damaged."""
    raw = path.read_bytes()
    with zipfile.ZipFile(path) as archive:
        second_chunk_header = archive.getinfo("chunk-000001/4.npy").header_offset
    second_chunk_rows = entry_data(path, "chunk-000001/4.npy") + 130  # past the .npy header
    manifest = central_directory_entry(raw, "manifest.json")
    first_priorities = entry_data(path, "chunk-000000/priority_mass.npy") + 130
    last_encoded_rows = entry_data(path, "chunk-000002/0.data.npy") + 140
    return {
        "truncated to nothing": b"",
        "truncated to half": raw[: len(raw) // 2],
        "truncated by one byte": raw[:-1],
        "truncated before the manifest": raw[: entry_data(path, "manifest.json")],
        "a bit of the first chunk's priorities": flipped(raw, first_priorities, 0),
        "a bit of the second chunk's rows": flipped(raw, second_chunk_rows, 3),
        "a bit of the last chunk's encoded rows": flipped(raw, last_encoded_rows, 6),
        "the second chunk's local header": flipped(raw, second_chunk_header + 1, 0),
        "the manifest's data": flipped(raw, entry_data(path, "manifest.json") + 20, 1),
        # zipfile reads the compression method from here: method 1 (shrunk) is unsupported
        "the manifest's compression method": flipped(raw, manifest + 10, 0),
        # bit 0 of the flags: encrypted
        "the manifest's flags": flipped(raw, manifest + 8, 0),
        "the end of the central directory": flipped(raw, raw.rindex(b"PK\x05\x06") + 17, 2),
    }


def test_a_snapshot_damaged_in_any_part_is_refused_naming_the_file(tmp_path: Path) -> None:
    original_path = tmp_path / "original.snapshot"
    original = write_snapshot(original_path)
    assert_same_table(restore(original_path), original)  # the undamaged file restores exactly
    damaged = tmp_path / "replay-0.snapshot"
    for what, content in targeted_snapshot_damage(original_path).items():
        damaged.write_bytes(content)
        assert refused_or_identical(damaged, original, what), f"{what}: loaded as if undamaged"


def test_truncations_and_random_bit_flips_of_a_snapshot_never_load_other_rows(tmp_path: Path) -> None:
    original_path = tmp_path / "original.snapshot"
    original = write_snapshot(original_path)
    raw = original_path.read_bytes()
    damaged = tmp_path / "replay-0.snapshot"
    for length in range(0, len(raw), 97):
        damaged.write_bytes(raw[:length])
        assert refused_or_identical(damaged, original, f"truncated to {length} bytes")
    rng = random.Random(20240611)
    refused = 0
    for _ in range(RANDOM_FLIPS):
        position, bit = rng.randrange(len(raw)), rng.randrange(8)
        damaged.write_bytes(flipped(raw, position, bit))
        refused += refused_or_identical(damaged, original, f"bit {bit} of byte {position} flipped")
    # Every entry's bytes are covered by a CRC-32 and the directory is read as structure; the
    # flips that load (the same table, as checked) hit fields zipfile does not read: times,
    # attributes, the local headers' copies of sizes and CRCs (331 of these 400 are refused).
    assert refused >= RANDOM_FLIPS // 2


def run_shard(snapshot: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "services",
            "replay",
            "--capacity",
            str(CAPACITY),
            "--snapshot-path",
            str(snapshot),
            "--snapshot-interval-s",
            "0.1",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    "what",
    ["truncated to half", "a bit of the second chunk's rows", "the manifest's compression method"],
)
def test_a_shard_started_on_a_damaged_snapshot_refuses_naming_it_and_leaves_it_as_it_was(
    tmp_path: Path, what: str
) -> None:
    """The second chunk's damage is met after the first chunk's rows were read: still no table."""
    original_path = tmp_path / "original.snapshot"
    write_snapshot(original_path)
    snapshot = tmp_path / "replay-0.snapshot"
    content = targeted_snapshot_damage(original_path)[what]
    snapshot.write_bytes(content)
    result = run_shard(snapshot)
    assert result.returncode == 2, result.stderr[-3000:]
    refusal = [line for line in result.stderr.splitlines() if line.startswith("apexrl replay: ")]
    assert len(refusal) == 1, result.stderr[-3000:]
    assert f"cannot read replay snapshot {snapshot}: " in refusal[0]
    assert "Traceback" not in result.stderr
    assert "serving address" not in result.stderr  # it never served a table, whole or partial
    assert "snapshot saved" not in result.stderr
    # Not replaced by an empty table's snapshot: the file is there to be looked at or repaired.
    assert snapshot.read_bytes() == content


# ---- learner checkpoints ---------------------------------------------------------------------

# The learner subprocess below is started with the same settings.
CONFIG_OVERRIDES = (*SMALL, "algorithm.network.hidden_sizes=[16]")
CONFIG = load_experiment("cartpole", list(CONFIG_OVERRIDES))


def real_tensors(seed: int) -> dict[str, torch.Tensor]:
    """A real Ape-X DQN learner's checkpoint tensors (networks and Adam moments) after a few updates."""
    family = family_named(CONFIG.algorithm.name)
    environment = describe_environment(CONFIG.environment.id, {})
    core = family.make_learner(CONFIG.algorithm, environment, torch.device("cpu"), seed)
    rng = np.random.default_rng(seed)
    for _ in range(3):
        size = 32
        columns: dict[str, NDArray[Any]] = {
            "observation": rng.standard_normal((size, 4)).astype(np.float32),
            "action": rng.integers(0, 2, size),
            "reward": rng.standard_normal(size).astype(np.float32),
            "discount": np.full(size, 0.97, np.float32),
            "next_observation": rng.standard_normal((size, 4)).astype(np.float32),
        }
        core.update(columns, np.ones(size, np.float32))
    return core.state_tensors()


def counters_of(updates: int) -> TrainingCounters:
    return TrainingCounters(
        updates=updates,
        parameter_version=updates // 5,
        environment_steps=40 * updates,
        elapsed_s=updates / 10,
        next_actor_id=4,
        best_mean_return=123.5,
    )


def write_checkpoint(directory: Path, updates: int) -> tuple[Path, dict[str, torch.Tensor]]:
    tensors = real_tensors(seed=updates)
    path = save_checkpoint(directory, tensors, counters_of(updates), config_yaml(CONFIG))
    return path, tensors


def assert_same_checkpoint(
    loaded: tuple[dict[str, torch.Tensor], TrainingCounters, str],
    tensors: dict[str, torch.Tensor],
    updates: int,
) -> None:
    got, counters, config = loaded
    assert got.keys() == tensors.keys()
    for name, tensor in tensors.items():
        torch.testing.assert_close(got[name], tensor, rtol=0, atol=0, msg=name)
    assert counters == counters_of(updates)
    assert config == config_yaml(CONFIG)


def checkpoint_refused_or_identical(
    path: Path, tensors: dict[str, torch.Tensor], updates: int, what: str
) -> bool:
    try:
        loaded = load_checkpoint(path)
    except ValueError as error:
        refusal = str(error)
    except Exception as error:
        pytest.fail(f"{what}: {type(error).__name__} instead of a ValueError naming the file: {error}")
    else:
        assert_same_checkpoint(loaded, tensors, updates)
        return False
    assert str(path) in refusal, f"{what}: the error does not name the file: {refusal}"
    return True


def damage_checkpoint(raw: bytes) -> dict[str, bytes]:
    header_length = struct.unpack_from("<Q", raw)[0]
    header = raw[8 : 8 + header_length]
    data = 8 + header_length
    return {
        "truncated to nothing": b"",
        "truncated in the header": raw[: 8 + header_length // 2],
        "truncated in the tensors": raw[: data + (len(raw) - data) // 2],
        "truncated by one byte": raw[:-1],
        "a bit of the header length": flipped(raw, 3, 0),
        "a bit of the first tensor's bytes": flipped(raw, data + 1, 4),
        "a bit of the last tensor's bytes": flipped(raw, len(raw) - 2, 2),
        # the counters and the config sit in the header's metadata, as text
        "a digit of the counters": flipped(raw, 8 + header.index(b"updates") + 12, 0),
        "a letter of the config": flipped(raw, 8 + header.index(b"CartPole") + 4, 1),
    }


def test_a_checkpoint_damaged_anywhere_is_refused_naming_the_file(tmp_path: Path) -> None:
    """safetensors checks a file's layout, not its contents: a flipped bit in a tensor, a counter or
    the config used to load as if nothing had happened. Every one is refused now."""
    original, tensors = write_checkpoint(tmp_path / "written", updates=300)
    assert_same_checkpoint(load_checkpoint(original), tensors, 300)
    raw = original.read_bytes()
    damaged = tmp_path / original.name
    for what, content in damage_checkpoint(raw).items():
        damaged.write_bytes(content)
        assert checkpoint_refused_or_identical(damaged, tensors, 300, what), f"{what}: loaded"
    rng = random.Random(20240612)
    for length in sorted(rng.sample(range(len(raw)), 40)):
        damaged.write_bytes(raw[:length])
        assert checkpoint_refused_or_identical(damaged, tensors, 300, f"truncated to {length}")
    refused = 0
    for _ in range(RANDOM_FLIPS):
        position, bit = rng.randrange(len(raw)), rng.randrange(8)
        damaged.write_bytes(flipped(raw, position, bit))
        refused += checkpoint_refused_or_identical(damaged, tensors, 300, f"bit {bit} of {position}")
    assert refused == RANDOM_FLIPS  # every byte is either structure or digested content


def three_checkpoints(directory: Path) -> dict[int, tuple[Path, dict[str, torch.Tensor]]]:
    written = {updates: write_checkpoint(directory, updates) for updates in (100, 200, 300)}
    assert checkpoints(directory) == [path for path, _ in written.values()]
    return written


def damage(path: Path, how: Callable[[bytes], bytes]) -> None:
    path.write_bytes(how(path.read_bytes()))


def in_a_tensor(raw: bytes) -> bytes:
    return damage_checkpoint(raw)["a bit of the last tensor's bytes"]


def test_a_damaged_newest_checkpoint_falls_back_to_the_newest_readable_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    written = three_checkpoints(tmp_path)
    damage(written[300][0], in_a_tensor)  # the damage that used to load silently
    with caplog.at_level(logging.ERROR, logger="services.learner.checkpoint"):
        restored = latest_checkpoint(tmp_path)
    assert isinstance(restored, Restored)
    assert restored.path == written[200][0]
    assert_same_checkpoint((restored.tensors, restored.counters, restored.config_yaml), written[200][1], 200)
    assert [record.getMessage() for record in caplog.records] == [
        f"skipping unreadable checkpoint path={written[300][0]} error=learner checkpoint "
        f"{written[300][0]} is damaged: its contents do not match its digest"
    ]

    damage(written[200][0], lambda raw: raw[: len(raw) // 2])
    restored = latest_checkpoint(tmp_path)
    assert restored is not None
    assert restored.path == written[100][0]
    assert restored.counters == counters_of(100)


def test_with_no_readable_checkpoint_nothing_is_resumed_and_each_file_is_named(tmp_path: Path) -> None:
    written = three_checkpoints(tmp_path)
    damage(written[300][0], in_a_tensor)
    damage(written[200][0], lambda raw: raw[:-1])
    damage(written[100][0], lambda raw: damage_checkpoint(raw)["a digit of the counters"])
    with pytest.raises(NoReadableCheckpointError) as refused:
        latest_checkpoint(tmp_path)
    message = str(refused.value)
    assert f"none of the 3 checkpoints in {tmp_path} is readable" in message
    for path, _ in written.values():
        assert str(path) in message
    assert "Move them away to start this run folder afresh" in message
    assert latest_checkpoint(tmp_path / "empty") is None  # no checkpoint at all: a fresh start


def test_a_learner_started_on_unreadable_checkpoints_refuses_and_keeps_them(
    start_shard: ShardFactory, tmp_path: Path
) -> None:
    """Before, it started afresh at update 0; with the usual three damaged files, each new checkpoint
    (named by a smaller update count) was pruned as soon as it was written."""
    shard = start_shard(capacity=1000)
    run_dir = tmp_path / "run"
    written = three_checkpoints(run_dir / "checkpoints")
    for path, _ in written.values():
        damage(path, in_a_tensor)
    contents = {path: path.read_bytes() for path, _ in written.values()}
    overrides = [item for override in CONFIG_OVERRIDES for item in ("--set", override)]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "services",
            "learner",
            "cartpole",
            *overrides,
            "--replay",
            shard.address,
            "--run-dir",
            str(run_dir),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    refusal = [line for line in result.stderr.splitlines() if line.startswith("apexrl learner: ")]
    assert len(refusal) == 1, result.stderr[-3000:]
    assert f"none of the 3 checkpoints in {run_dir / 'checkpoints'} is readable" in refusal[0]
    assert "starting fresh" not in result.stderr
    assert "Traceback" not in result.stderr
    assert {path: path.read_bytes() for path in checkpoints(run_dir / "checkpoints")} == contents
