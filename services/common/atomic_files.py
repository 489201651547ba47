"""Atomic file replacement: write a temporary sibling, fsync it, rename it over the target."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def write_atomically(path: Path, write: Callable[[Path], None]) -> int:
    """Calls ``write(temporary_path)`` and moves the result onto ``path``; returns its size in bytes.

    A crash at any point leaves either the old file or the new one at ``path``,
    never a mixture; a failed ``write`` leaves the old file and no temporary.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(temporary)
        with open(temporary, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return path.stat().st_size
