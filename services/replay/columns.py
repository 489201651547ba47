"""Preallocated column storage for a ring of transitions, allocated from the first batch's signature."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class ColumnSpec:
    """Dtype and per-item shape of one stored column."""

    dtype: np.dtype[np.generic]
    shape: tuple[int, ...]

    def describe(self) -> str:
        return f"{self.dtype.name}{list(self.shape)}"


Columns = Mapping[str, NDArray[np.generic]]


def batch_length(columns: Columns) -> int:
    """The common leading length of a batch's columns; ValueError naming the column otherwise."""
    if not columns:
        raise ValueError("batch has no columns")
    lengths: dict[str, int] = {}
    for name, array in columns.items():
        if array.ndim == 0:
            raise ValueError(f"column {name!r} is a scalar; columns need a leading batch dimension")
        lengths[name] = array.shape[0]
    if len(set(lengths.values())) > 1:
        listed = ", ".join(f"{name!r}: {length}" for name, length in sorted(lengths.items()))
        raise ValueError(f"ragged batch: columns have different lengths ({listed})")
    first_length = next(iter(lengths.values()))
    if first_length == 0:
        raise ValueError("batch is empty: columns have 0 items")
    return first_length


def signature_of(columns: Columns) -> dict[str, ColumnSpec]:
    return {name: ColumnSpec(array.dtype, tuple(array.shape[1:])) for name, array in columns.items()}


class ColumnStore:
    """One array per column with ``capacity`` rows; rows are written and read by slot."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._arrays: dict[str, NDArray[np.generic]] = {}

    @property
    def signature(self) -> dict[str, ColumnSpec]:
        return {name: ColumnSpec(array.dtype, tuple(array.shape[1:])) for name, array in self._arrays.items()}

    @property
    def allocated(self) -> bool:
        return bool(self._arrays)

    def item_bytes(self) -> int:
        """Bytes of one stored transition over all columns."""
        return sum(array[0].nbytes for array in self._arrays.values())

    def check(self, columns: Columns) -> None:
        """Raises ValueError naming the first column that does not match the stored signature."""
        if not self._arrays:
            return
        missing = sorted(set(self._arrays) - set(columns))
        extra = sorted(set(columns) - set(self._arrays))
        if missing:
            raise ValueError(f"batch lacks column(s) {missing} of the table signature")
        if extra:
            raise ValueError(f"batch has column(s) {extra} not in the table signature")
        for name, stored in self._arrays.items():
            array = columns[name]
            if array.dtype != stored.dtype or array.shape[1:] != stored.shape[1:]:
                expected = ColumnSpec(stored.dtype, tuple(stored.shape[1:])).describe()
                got = ColumnSpec(array.dtype, tuple(array.shape[1:])).describe()
                raise ValueError(f"column {name!r} is {got} but the table signature has {expected}")

    def allocate(self, signature: Mapping[str, ColumnSpec]) -> None:
        # np.empty reserves address space only; pages become resident as rows are written.
        self._arrays = {
            name: np.empty((self._capacity, *spec.shape), dtype=spec.dtype)
            for name, spec in signature.items()
        }

    def write(self, start: int, columns: Columns, begin: int, end: int) -> None:
        """Copies rows ``begin:end`` of the batch to slots ``start .. start + end - begin - 1``."""
        for name, array in self._arrays.items():
            array[start : start + end - begin] = columns[name][begin:end]

    def gather(self, slots: NDArray[np.int64]) -> dict[str, NDArray[np.generic]]:
        return {name: np.take(array, slots, axis=0) for name, array in self._arrays.items()}

    def head(self, count: int) -> dict[str, NDArray[np.generic]]:
        """Views of the first ``count`` rows of every column."""
        return {name: array[:count] for name, array in self._arrays.items()}
