"""Shard snapshots streamed a chunk at a time, written atomically so a crash never spoils the previous one.

A snapshot is a zip archive (stored, not deflated) of ``.npy`` arrays, the
container numpy's ``savez`` writes, read with ``allow_pickle=False``: per chunk of
rows, one array per dense column, two per encoded column (sizes and data) and the
priority masses; then ``manifest.json`` with the counters, the column signature and
the number of rows and chunks. Saving holds the table's lock only while it copies
one chunk (about ``chunk_bytes``), so inserts and samples go on between chunks and
the copy in memory is one chunk, never the table; items evicted before their chunk
is copied are left out. Loading reads one chunk at a time too.
"""

from __future__ import annotations

import json
import time
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
from numpy.typing import NDArray

from services.common.atomic_files import write_atomically
from services.common.encoded import CODECS, Column, EncodedItems
from services.replay.columns import ColumnSpec, spec_of
from services.replay.table import PrioritizedTable, RowChunk, TableCounters, TableState

FORMAT = "apexrl.replay.snapshot/2"
_MANIFEST = "manifest.json"
# Snapshots without ``next_key`` in their counters hold keys of this layout (see load_snapshot).
_LEGACY_SEQUENCE_BITS = 40
# About 10 ms of copying under the lock per chunk.
DEFAULT_CHUNK_BYTES = 16 << 20
# What reading a damaged archive raises: zipfile's errors, and what a flipped header bit
# makes of an entry: an unsupported method or version (NotImplementedError, a RuntimeError),
# encryption (RuntimeError), deflated data (zlib.error), an early end (EOFError). Each
# becomes a ValueError naming the file, so a shard refuses it in one line.
_READ_ERRORS = (OSError, EOFError, KeyError, ValueError, RuntimeError, zipfile.BadZipFile, zlib.error)


@dataclass(frozen=True)
class SnapshotWritten:
    rows: int
    bytes: int
    longest_pause_s: float


def save_snapshot(
    table: PrioritizedTable, path: Path, chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> SnapshotWritten:
    """Streams the table to ``path`` (via a temporary file and an atomic rename)."""
    counters, first, end = table.counters()
    rows_per_chunk = max(1, chunk_bytes // max(1, table.item_bytes))
    rows, pause = 0, 0.0

    def write(temporary: Path) -> None:
        nonlocal rows, pause
        signature: dict[str, ColumnSpec] = {}
        chunks = 0
        with zipfile.ZipFile(temporary, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
            for begin in range(first, end, rows_per_chunk):
                started = time.perf_counter()
                chunk = table.read_rows(begin, min(begin + rows_per_chunk, end))
                pause = max(pause, time.perf_counter() - started)
                if not len(chunk):
                    continue
                signature = signature or {name: spec_of(column) for name, column in chunk.columns.items()}
                _write_chunk(archive, chunks, list(signature), chunk)
                rows += len(chunk)
                chunks += 1
            manifest = {
                "format": FORMAT,
                "counters": counters.__dict__,
                "rows": rows,
                "chunks": chunks,
                "columns": [_describe(name, spec) for name, spec in signature.items()],
            }
            archive.writestr(_MANIFEST, json.dumps(manifest))

    size = write_atomically(path, write)
    return SnapshotWritten(rows, size, pause)


def _describe(name: str, spec: ColumnSpec) -> dict[str, Any]:
    return {"name": name, "dtype": spec.dtype.str, "shape": list(spec.shape), "codec": spec.codec}


def _entry(chunk: int, part: str) -> str:
    return f"chunk-{chunk:06d}/{part}.npy"


def _write_array(archive: zipfile.ZipFile, name: str, array: NDArray[Any]) -> None:
    with archive.open(name, "w", force_zip64=True) as stream:
        np.lib.format.write_array(stream, np.ascontiguousarray(array), allow_pickle=False)


def _write_chunk(archive: zipfile.ZipFile, index: int, names: list[str], chunk: RowChunk) -> None:
    _write_array(archive, _entry(index, "priority_mass"), chunk.priority_masses)
    for number, name in enumerate(names):
        column = chunk.columns[name]
        if isinstance(column, EncodedItems):
            _write_array(archive, _entry(index, f"{number}.sizes"), column.sizes)
            _write_array(archive, _entry(index, f"{number}.data"), column.data)
        else:
            _write_array(archive, _entry(index, str(number)), column)


def load_snapshot(path: Path) -> TableState:
    """Opens a snapshot written by :func:`save_snapshot`; ValueError if it is not one.

    The rows are read when the state's ``chunks()`` is iterated, a chunk at a time.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            manifest = json.loads(archive.read(_MANIFEST))
    except _READ_ERRORS as error:
        raise ValueError(f"cannot read replay snapshot {path}: {error}") from error
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise ValueError(f"{path} is not an apexrl replay snapshot (format {found!r})")
    try:
        fields = dict(manifest["counters"])
        if "next_key" not in fields:
            # Written before keys were clock-based: they were (incarnation << 40) | sequence.
            fields["next_key"] = (int(fields["incarnation"]) + 1) << _LEGACY_SEQUENCE_BITS
        counters = TableCounters(**fields)
        rows, chunk_count = int(manifest["rows"]), int(manifest["chunks"])
        columns = [
            (str(c["name"]), ColumnSpec(np.dtype(c["dtype"]), tuple(int(d) for d in c["shape"]), c["codec"]))
            for c in manifest["columns"]
        ]
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"replay snapshot {path} has a bad manifest: {error!r}") from error
    for name, spec in columns:
        if spec.codec is not None and spec.codec not in CODECS:
            raise ValueError(f"replay snapshot {path}: column {name!r} has unknown codec {spec.codec!r}")

    def chunks() -> Iterator[RowChunk]:
        try:
            with zipfile.ZipFile(path) as archive:
                for index in range(chunk_count):
                    yield _read_chunk(archive, index, columns)
        except _READ_ERRORS as error:
            raise ValueError(f"cannot read replay snapshot {path}: {error}") from error

    return TableState(counters, rows, chunks)


def _read_array(archive: zipfile.ZipFile, name: str) -> NDArray[Any]:
    stream: IO[bytes]
    with archive.open(name) as stream:
        array: NDArray[Any] = np.lib.format.read_array(stream, allow_pickle=False)
        return array


def _read_chunk(archive: zipfile.ZipFile, index: int, columns: list[tuple[str, ColumnSpec]]) -> RowChunk:
    masses = _read_array(archive, _entry(index, "priority_mass")).astype(np.float64, copy=False)
    read: dict[str, Column] = {}
    for number, (name, spec) in enumerate(columns):
        if spec.codec is None:
            read[name] = _read_array(archive, _entry(index, str(number)))
            continue
        sizes = _read_array(archive, _entry(index, f"{number}.sizes")).astype(np.int64, copy=False)
        data = _read_array(archive, _entry(index, f"{number}.data")).astype(np.uint8, copy=False)
        if sizes.ndim != 1 or int(sizes.sum()) != data.shape[0]:
            raise ValueError(f"chunk {index}: column {name!r} has sizes that do not fit its data")
        read[name] = EncodedItems(spec.codec, spec.dtype, spec.shape, sizes, data)
    return RowChunk(read, masses)
