"""Preallocated column storage for a ring of transitions, allocated from the first batch's signature.

A dense column is one array of ``capacity`` rows. An encoded column (items
compressed one by one) keeps its items' bytes as they came, in a :class:`ByteRing`.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Collection, Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from services.common.encoded import Codec, Column, EncodedItems, InvalidInputError
from services.replay.byte_ring import ByteRing


@dataclass(frozen=True)
class ColumnSpec:
    """Dtype and per-item shape of one stored column; ``codec`` for one stored encoded."""

    dtype: np.dtype[np.generic]
    shape: tuple[int, ...]
    codec: Codec | None = None

    def describe(self) -> str:
        dense = f"{self.dtype.name}{list(self.shape)}"
        return dense if self.codec is None else f"{dense} encoded with {self.codec}"


Columns = Mapping[str, Column]

# Dense columns with rows at least this large (image frames) keep a memoryview per slot, so
# a sampled reply is joined straight from the stored rows: one copy instead of a gather and a copy.
ROW_VIEW_MIN_BYTES = 4096


@dataclass(frozen=True, eq=False)
class StoredRows:
    """Sampled rows of a dense column as views of the table's own storage.

    Valid only while the table's lock is held: an insert may overwrite the rows.
    """

    dtype: np.dtype[np.generic]
    item_shape: tuple[int, ...]
    rows: tuple[memoryview, ...]

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def nbytes(self) -> int:
        return len(self.rows) * math.prod(self.item_shape) * self.dtype.itemsize


def batch_length(columns: Columns) -> int:
    """The common leading length of a batch's columns; InvalidInputError naming the column otherwise."""
    if not columns:
        raise InvalidInputError("batch has no columns")
    lengths: dict[str, int] = {}
    for name, column in columns.items():
        if not isinstance(column, EncodedItems) and column.ndim == 0:
            raise InvalidInputError(f"column {name!r} is a scalar; columns need a leading batch dimension")
        lengths[name] = len(column)
    if len(set(lengths.values())) > 1:
        listed = ", ".join(f"{name!r}: {length}" for name, length in sorted(lengths.items()))
        raise InvalidInputError(f"ragged batch: columns have different lengths ({listed})")
    first_length = next(iter(lengths.values()))
    if first_length == 0:
        raise InvalidInputError("batch is empty: columns have 0 items")
    return first_length


def spec_of(column: Column) -> ColumnSpec:
    if isinstance(column, EncodedItems):
        return ColumnSpec(column.dtype, column.item_shape, column.codec)
    return ColumnSpec(column.dtype, tuple(column.shape[1:]))


def _matches(column: Column, spec: ColumnSpec) -> bool:
    """``spec_of(column) == spec``, without building the spec."""
    if isinstance(column, EncodedItems):
        return column.codec == spec.codec and column.dtype == spec.dtype and column.item_shape == spec.shape
    return spec.codec is None and column.dtype == spec.dtype and column.shape[1:] == spec.shape


def signature_of(columns: Columns) -> dict[str, ColumnSpec]:
    return {name: spec_of(column) for name, column in columns.items()}


class ColumnStore:
    """The columns of ``capacity`` slots; item ``sequence`` lives in slot ``sequence % capacity``."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._signature: dict[str, ColumnSpec] = {}
        self._arrays: dict[str, NDArray[np.generic]] = {}
        self._rings: dict[str, ByteRing] = {}
        self._row_views: dict[str, list[memoryview]] = {}
        self._largest_encoded: dict[str, int] = {}

    @property
    def signature(self) -> dict[str, ColumnSpec]:
        return dict(self._signature)

    @property
    def allocated(self) -> bool:
        return bool(self._signature)

    def item_bytes(self) -> int:
        """Bytes one transition takes in a reply at most: its dense rows, its largest encoded items."""
        dense = sum(int(array[0].nbytes) for array in self._arrays.values())
        return dense + sum(self._largest_encoded.values())

    def storage_bytes(self) -> int:
        """Bytes allocated for items: the dense arrays and the encoded columns' arenas."""
        dense = sum(int(array.nbytes) for array in self._arrays.values())
        return dense + sum(ring.allocated_bytes for ring in self._rings.values())

    def check(self, columns: Columns) -> None:
        """Raises InvalidInputError naming the first column that does not match the stored signature."""
        if not self._signature:
            return
        if columns.keys() != self._signature.keys():
            missing = sorted(set(self._signature) - set(columns))
            if missing:
                raise InvalidInputError(f"batch lacks column(s) {missing} of the table signature")
            extra = sorted(set(columns) - set(self._signature))
            raise InvalidInputError(f"batch has column(s) {extra} not in the table signature")
        for name, stored in self._signature.items():
            column = columns[name]
            if not _matches(column, stored):  # every insert: compared without building its spec
                got = spec_of(column).describe()
                raise InvalidInputError(
                    f"column {name!r} is {got} but the table signature has {stored.describe()}"
                )

    def allocate(self, columns: Columns) -> None:
        """Storage for the signature of ``columns`` (the first batch, or a snapshot's rows)."""
        self._signature = signature_of(columns)
        for name, column in columns.items():
            if isinstance(column, EncodedItems):
                self._rings[name] = ByteRing(self._capacity, column)
                self._largest_encoded[name] = 0
            else:
                # np.empty reserves address space only; pages become resident as rows are written.
                array = np.empty((self._capacity, *column.shape[1:]), dtype=column.dtype)
                self._arrays[name] = array
                row_bytes = array[0].nbytes if self._capacity else 0
                if row_bytes >= ROW_VIEW_MIN_BYTES:
                    # One view per slot, made once: sampling then picks views, never copies rows.
                    flat = array.reshape(-1).view(np.uint8).data
                    starts = range(0, flat.nbytes, row_bytes)
                    self._row_views[name] = [flat[start : start + row_bytes] for start in starts]

    def write(self, first_sequence: int, columns: Columns) -> None:
        """Stores the batch as items ``first_sequence ..``, wrapping round the ring."""
        count = len(next(iter(columns.values())))
        start = first_sequence % self._capacity
        head = min(count, self._capacity - start)
        for name, array in self._arrays.items():
            rows = columns[name]
            assert not isinstance(rows, EncodedItems)
            array[start : start + head] = rows[:head]
            if head < count:
                array[: count - head] = rows[head:]
        for name, ring in self._rings.items():
            items = columns[name]
            assert isinstance(items, EncodedItems)
            ring.write(first_sequence, items)
            self._largest_encoded[name] = max(self._largest_encoded[name], int(items.sizes.max()))

    def gather_in_place(self, slots: NDArray[np.int64]) -> dict[str, Column | StoredRows]:
        """As :meth:`gather` (of at least one slot), but large dense rows come as views of the
        storage, valid under the table's lock."""
        gathered: dict[str, Column | StoredRows] = dict(self.gather(slots, skip=self._row_views.keys()))
        pick = operator.itemgetter(*slots.tolist())
        for name, views in self._row_views.items():
            picked = pick(views)  # one view, or a tuple of them for two slots or more
            array = self._arrays[name]
            rows = picked if isinstance(picked, tuple) else (picked,)
            gathered[name] = StoredRows(array.dtype, tuple(array.shape[1:]), rows)
        return {name: gathered[name] for name in self._signature}

    def gather(self, slots: NDArray[np.int64], skip: Collection[str] = ()) -> dict[str, Column]:
        gathered: dict[str, Column] = {
            name: np.take(array, slots, axis=0) for name, array in self._arrays.items() if name not in skip
        }
        for name, ring in self._rings.items():
            gathered[name] = ring.gather(slots)
        return {name: gathered[name] for name in self._signature if name in gathered}
