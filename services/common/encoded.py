"""Columns whose items are compressed one by one: image observations on the wire and in the replay.

An :class:`EncodedItems` holds N items of one column as N zstd frames back to back,
with each frame's size. Actors compress observation columns before inserting them;
a replay shard checks that every frame decompresses to exactly one item and then
stores the bytes as they came; the learner's feed process decompresses sampled
batches. Every operation is one call into zstd or numpy for the whole batch, never
a Python step per item.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import numpy as np
import zstandard
from numpy.typing import NDArray

Codec = Literal["zstd"]
CODECS: tuple[Codec, ...] = ("zstd",)
# zstd's own default: a Pong frame stack (28 KB) becomes about 300 bytes in ~20 us.
_LEVEL = 3


class InvalidInputError(ValueError):
    """Input that its sender got wrong: a malformed tensor or encoded column, a batch or priorities
    that do not fit. Servers answer it as INVALID_ARGUMENT; any other error is their own bug."""


@dataclass(frozen=True, eq=False)
class EncodedItems:
    """N compressed items of dtype ``dtype`` and shape ``item_shape``; ``data`` holds them in order."""

    codec: Codec
    dtype: np.dtype[Any]
    item_shape: tuple[int, ...]
    sizes: NDArray[np.int64]
    data: NDArray[np.uint8]

    def __len__(self) -> int:
        return int(self.sizes.shape[0])

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of the decoded column, [N, *item_shape]."""
        return (len(self), *self.item_shape)

    @property
    def item_nbytes(self) -> int:
        return math.prod(self.item_shape) * self.dtype.itemsize

    @property
    def nbytes(self) -> int:
        """Bytes held: the compressed data and the sizes."""
        return int(self.data.nbytes + self.sizes.nbytes)

    def offsets(self) -> NDArray[np.int64]:
        """Where each item's bytes start in ``data``."""
        ends = np.cumsum(self.sizes)
        return ends - self.sizes

    def take(self, indices: NDArray[np.integer[Any]] | slice) -> EncodedItems:
        """The items at ``indices`` (an index array or a slice), in that order."""
        if isinstance(indices, slice):
            indices = np.arange(len(self))[indices]
        return gather_ranges(self, self.data, self.offsets()[indices], self.sizes[indices])

    @staticmethod
    def concatenate(parts: Sequence[EncodedItems]) -> EncodedItems:
        first = parts[0]
        for part in parts[1:]:
            if (part.codec, part.dtype, part.item_shape) != (first.codec, first.dtype, first.item_shape):
                raise ValueError(f"cannot join encoded columns of {part.describe()} and {first.describe()}")
        return EncodedItems(
            first.codec,
            first.dtype,
            first.item_shape,
            np.concatenate([part.sizes for part in parts]),
            np.concatenate([part.data for part in parts]),
        )

    def describe(self) -> str:
        return f"{self.codec}:{self.dtype.name}{list(self.item_shape)}"


Column = NDArray[Any] | EncodedItems
"""A column of a transition batch: a dense array, or items compressed one by one."""


def dense(column: Column) -> NDArray[Any]:
    """The column as an array; TypeError for an encoded column (decompress it instead)."""
    if isinstance(column, EncodedItems):
        raise TypeError(f"the column is encoded ({column.describe()}); decompress it first")
    return column


def decoded(columns: Mapping[str, Column]) -> dict[str, NDArray[Any]]:
    """Every column as an array, the encoded ones decompressed."""
    return {
        name: decompress(column) if isinstance(column, EncodedItems) else column
        for name, column in columns.items()
    }


def take_rows(column: Column, indices: NDArray[np.integer[Any]]) -> Column:
    """The rows at ``indices`` of either kind of column."""
    return column.take(indices) if isinstance(column, EncodedItems) else column[indices]


def join_rows(parts: Sequence[Column]) -> Column:
    """The rows of columns of one kind, one after the other."""
    encoded = [part for part in parts if isinstance(part, EncodedItems)]
    if not encoded:
        return np.concatenate([dense(part) for part in parts])
    if len(encoded) != len(parts):
        raise ValueError("cannot join an encoded column with a dense one")
    return EncodedItems.concatenate(encoded)


# Up to this many contiguous runs of source bytes are copied run by run (a snapshot reads
# one or two); scattered items go through one fancy-indexing gather.
_MAX_RUNS = 16


def gather_ranges(
    like: EncodedItems, source: NDArray[np.uint8], starts: NDArray[np.int64], sizes: NDArray[np.int64]
) -> EncodedItems:
    """Items of ``like``'s kind whose bytes are ``source[start : start + size]``, joined in order."""
    sizes = np.asarray(sizes, dtype=np.int64)
    starts = np.asarray(starts, dtype=np.int64)
    ends = np.cumsum(sizes)
    total = int(ends[-1]) if len(ends) else 0
    # Where an item does not begin right after the previous one, a new run of source bytes starts.
    breaks = np.flatnonzero(starts[1:] != starts[:-1] + sizes[:-1]) + 1
    if len(breaks) < _MAX_RUNS:
        data = np.empty(total, dtype=np.uint8)
        bounds = [0, *breaks.tolist(), len(sizes)]
        for first, end in itertools.pairwise(bounds):
            if end > first:
                begin, length = int(starts[first]), int(ends[end - 1] - ends[first] + sizes[first])
                out = int(ends[first] - sizes[first])
                data[out : out + length] = source[begin : begin + length]
    else:
        # One index per byte: the item's start plus the byte's place within the item.
        positions = np.repeat(starts - (ends - sizes), sizes)
        positions += _counting(total)
        data = source.take(positions)
    return EncodedItems(like.codec, like.dtype, like.item_shape, sizes, data)


_COUNT = np.arange(0, dtype=np.int64)


def _counting(count: int) -> NDArray[np.int64]:
    """``np.arange(count)``, from a cached array (a sample's gather needs one per call)."""
    global _COUNT  # noqa: PLW0603 (grown once to the largest gather, then only read)
    if _COUNT.shape[0] < count:
        _COUNT = np.arange(max(count, 2 * _COUNT.shape[0]), dtype=np.int64)
    return _COUNT[:count]


def compress(array: NDArray[Any], codec: Codec = "zstd") -> EncodedItems:
    """Each row of ``array`` (items along the first axis) compressed on its own."""
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}; known: {list(CODECS)}")
    array = np.ascontiguousarray(array)
    if array.ndim == 0 or array.shape[0] == 0:
        raise ValueError(f"compress needs a non-empty batch of items, got shape {list(array.shape)}")
    count = array.shape[0]
    item_nbytes = array[0].nbytes
    compressor = zstandard.ZstdCompressor(level=_LEVEL, write_checksum=True)
    frames = compressor.multi_compress_to_buffer(
        _segments(array.reshape(-1).view(np.uint8), count, item_nbytes)
    )
    sizes = np.fromiter(map(len, cast(Iterable[bytes], frames)), dtype=np.int64, count=count)
    data = np.frombuffer(b"".join(cast(Iterable[bytes], frames)), dtype=np.uint8)
    return EncodedItems(codec, array.dtype, tuple(array.shape[1:]), sizes, data)


def decompress(items: EncodedItems) -> NDArray[Any]:
    """The items decoded, [N, *item_shape]; InvalidInputError naming the first item that does not decode."""
    if len(items) == 0:
        return np.empty(items.shape, dtype=items.dtype)
    decoded = b"".join(cast(Iterable[bytes], _decompressed_frames(items)))
    return np.frombuffer(decoded, dtype=items.dtype).reshape(items.shape)


def _decompressed_frames(items: EncodedItems) -> zstandard.BufferWithSegmentsCollection:
    if items.codec not in CODECS:
        raise InvalidInputError(f"unknown codec {items.codec!r}; known: {list(CODECS)}")
    count, item_nbytes = len(items), items.item_nbytes
    if item_nbytes == 0:
        raise InvalidInputError(f"encoded items of {items.describe()} hold no bytes")
    frames = zstandard.BufferWithSegments(
        items.data.data, np.stack([items.offsets(), items.sizes], axis=1).astype(np.uint64).tobytes()
    )
    try:
        return zstandard.ZstdDecompressor().multi_decompress_to_buffer(
            frames, decompressed_sizes=np.full(count, item_nbytes, dtype=np.uint64).tobytes()
        )
    except (zstandard.ZstdError, ValueError) as error:
        raise InvalidInputError(
            f"encoded items ({items.describe()}) do not decompress to {item_nbytes} bytes each: {error}"
        ) from None


def check_encoded(items: EncodedItems) -> None:
    """InvalidInputError unless the sizes fit the data and every item decompresses to exactly one item."""
    if items.sizes.ndim != 1:
        raise InvalidInputError(f"sizes must be int64 [N], got shape {list(items.sizes.shape)}")
    if len(items) and int(items.sizes.min()) < 1:
        index = int(np.flatnonzero(items.sizes < 1)[0])
        raise InvalidInputError(
            f"sizes[{index}] = {int(items.sizes[index])}; every item needs at least 1 byte"
        )
    # No size above the data's length, so the int64 sum below cannot wrap round to it.
    if len(items) and int(items.sizes.max()) > items.data.shape[0]:
        raise InvalidInputError(
            f"an item of {int(items.sizes.max())} bytes, but the data holds {items.data.shape[0]}"
        )
    total = int(items.sizes.sum())
    if total != items.data.shape[0]:
        raise InvalidInputError(f"sizes add up to {total} bytes but the data holds {items.data.shape[0]}")
    if len(items):
        _decompressed_frames(items)


def _segments(data: NDArray[np.uint8], count: int, item_nbytes: int) -> zstandard.BufferWithSegments:
    offsets = np.arange(count, dtype=np.uint64) * np.uint64(item_nbytes)
    sizes = np.full(count, item_nbytes, dtype=np.uint64)
    return zstandard.BufferWithSegments(data.data, np.stack([offsets, sizes], axis=1).tobytes())
