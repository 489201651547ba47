"""Shard snapshots as safetensors files, written atomically so a crash never spoils the previous one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from services.common.atomic_files import write_atomically
from services.replay.table import TableState

FORMAT = "apexrl.replay.snapshot/1"
_COLUMN_PREFIX = "column."
_MASSES = "priority_mass"
_COUNTERS = ("capacity", "next_sequence", "incarnation", "samples", "priority_updates")


def save_snapshot(state: TableState, path: Path) -> int:
    """Writes ``state`` to ``path`` via a temporary file and an atomic rename; returns bytes written."""
    tensors = {_COLUMN_PREFIX + name: np.ascontiguousarray(array) for name, array in state.columns.items()}
    tensors[_MASSES] = np.ascontiguousarray(state.priority_masses, dtype=np.float64)
    metadata = {"format": FORMAT, "priority_exponent": repr(state.priority_exponent)}
    metadata.update({name: str(getattr(state, name)) for name in _COUNTERS})
    return write_atomically(path, lambda temporary: save_file(tensors, str(temporary), metadata=metadata))


def load_snapshot(path: Path) -> TableState:
    """Reads a snapshot written by :func:`save_snapshot`; ValueError if it is not one."""
    try:
        with safe_open(str(path), framework="np") as reader:
            metadata = reader.metadata() or {}
            if metadata.get("format") != FORMAT:
                raise ValueError(
                    f"{path} is not an apexrl replay snapshot (format {metadata.get('format')!r})"
                )
            tensors = {name: reader.get_tensor(name) for name in reader.keys()}  # noqa: SIM118
    except (OSError, SafetensorError) as error:
        raise ValueError(f"cannot read replay snapshot {path}: {error}") from error
    try:
        counters = {name: int(metadata[name]) for name in _COUNTERS}
        exponent = float(metadata["priority_exponent"])
    except (KeyError, ValueError) as error:
        raise ValueError(f"replay snapshot {path} has bad metadata: {error}") from error
    columns = {
        name.removeprefix(_COLUMN_PREFIX): array
        for name, array in tensors.items()
        if name.startswith(_COLUMN_PREFIX)
    }
    return TableState(
        priority_exponent=exponent,
        columns=columns,
        priority_masses=tensors[_MASSES],
        **counters,
    )
