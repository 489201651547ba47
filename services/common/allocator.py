"""glibc allocator tuning for services that move multi-megabyte buffers on every call."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MIB = 1 << 20


def keep_large_buffers(mmap_threshold_bytes: int = 32 * MIB, trim_threshold_bytes: int = 256 * MIB) -> bool:
    """Serve blocks up to ``mmap_threshold_bytes`` from the heap and keep freed memory for reuse.

    By default glibc maps big blocks (a sampled batch of image transitions, a
    request being parsed) straight from the OS and unmaps them when freed, so
    each call page-faults its buffers in again. Returns False where there is no
    glibc (the defaults then stay).
    """
    library = ctypes.util.find_library("c")
    if library is None:
        return False
    try:
        mallopt = ctypes.CDLL(library).mallopt
    except (OSError, AttributeError):
        return False
    ok = bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold_bytes)) and bool(
        mallopt(_M_TRIM_THRESHOLD, trim_threshold_bytes)
    )
    logger.info(
        "allocator tuned mmap_threshold=%d trim_threshold=%d ok=%s",
        mmap_threshold_bytes,
        trim_threshold_bytes,
        ok,
    )
    return ok
