"""A prioritized replay table: FIFO ring of transitions, sum-tree sampling, keyed priority updates."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np
from numpy.typing import NDArray

from services.common.encoded import Column, EncodedItems, InvalidInputError, check_encoded, join_rows
from services.replay.columns import Columns, ColumnSpec, ColumnStore, StoredRows, batch_length
from services.replay.rate_limiter import (
    NotEnoughDataError,
    RateLimitedError,
    RateLimiter,
    RateLimiterSettings,
)
from services.replay.sum_tree import SumTree

# A key is incarnation + the item's sequence number within its incarnation (one start of the
# table). The sequence number gives the slot (sequence % capacity) and tells whether the item is
# still live. The incarnation is the wall clock at the start, in nanoseconds since the Unix
# epoch, or the restored snapshot's next key where that is later. A start numbers far fewer
# than one item a nanosecond (an insert of 65,536 items takes well over 65 us, and so does
# restoring 65,536 rows), so every key it issues is below the clock, hence below the incarnation
# of every later start: with or without a snapshot, however often one file is restored, kill -9
# included, and with no coordination, keys never repeat, and every key of an earlier start is
# below the oldest live key, so stale. The one assumption is a wall clock that does not step
# back across a restart (a restore still starts above every key its snapshot had issued). Keys
# are non-negative int64 until the clock nears 2**63 ns, in 2262.
MAX_CAPACITY = (1 << 40) - 1
_KEY_LIMIT = (1 << 63) - 1
# At most this, an incarnation leaves its start 2**48 keys (2.8e14) below the int64 limit.
MAX_INCARNATION = _KEY_LIMIT - (1 << 48)

T = TypeVar("T")
C = TypeVar("C", Column, Column | StoredRows)
InPlace = Column | StoredRows


@dataclass(frozen=True)
class SampledItems(Generic[C]):
    keys: NDArray[np.int64]
    priority_masses: NDArray[np.float64]
    # Copies (Column), or in :meth:`PrioritizedTable.sample_into`'s ``finish`` StoredRows too.
    columns: Mapping[str, C]
    total_priority_mass: float
    size: int


@dataclass(frozen=True)
class PriorityUpdateResult:
    updated: int
    stale: int


@dataclass(frozen=True)
class TableInfo:
    size: int
    capacity: int
    total_priority_mass: float
    priority_exponent: float
    limiter: RateLimiterSettings
    inserts: int
    samples: int
    priority_updates: int
    rate_limiter_waits: int
    incarnation: int
    signature: dict[str, ColumnSpec]
    item_bytes: int
    storage_bytes: int


@dataclass(frozen=True)
class TableCounters:
    """The counters and settings a snapshot carries besides the rows."""

    capacity: int
    priority_exponent: float
    inserts: int
    incarnation: int
    samples: int
    priority_updates: int
    # Above every key issued until then: a restored table's incarnation is at least this.
    next_key: int


@dataclass(frozen=True)
class RowChunk:
    """Consecutive live items, oldest first, with their priority masses."""

    columns: dict[str, Column]
    priority_masses: NDArray[np.float64]

    def __len__(self) -> int:
        return int(self.priority_masses.shape[0])


@dataclass(frozen=True)
class TableState:
    """What a snapshot holds: the counters, and the live rows oldest first in ``rows`` items.

    ``chunks()`` yields the rows a chunk at a time, so a table is saved and restored
    without a second copy of it in memory.
    """

    counters: TableCounters
    rows: int
    chunks: Callable[[], Iterator[RowChunk]]

    @property
    def columns(self) -> dict[str, Column]:
        """All rows at once (for small tables and tests)."""
        parts = [chunk for chunk in self.chunks() if len(chunk)]
        if not parts:
            return {}
        return {name: join_rows([part.columns[name] for part in parts]) for name in parts[0].columns}

    @property
    def priority_masses(self) -> NDArray[np.float64]:
        parts = [chunk.priority_masses for chunk in self.chunks()]
        return np.concatenate(parts) if parts else np.zeros(0)


def check_priorities(priorities: NDArray[np.generic], count: int) -> NDArray[np.float64]:
    """float64 priorities of shape [count]; InvalidInputError naming the first bad value otherwise."""
    if priorities.shape != (count,):
        raise InvalidInputError(f"priorities have shape {list(priorities.shape)}, expected [{count}]")
    if priorities.dtype.kind != "f":
        raise InvalidInputError(f"priorities must be float32 or float64, got {priorities.dtype.name}")
    values = priorities.astype(np.float64, copy=False)
    if count and values.min() >= 0 and values.max() < np.inf:  # two reductions; a NaN fails both
        return values
    bad = ~np.isfinite(values) | (values < 0)
    if bad.any():
        index = int(np.flatnonzero(bad)[0])
        raise InvalidInputError(
            f"priorities must be finite and >= 0: priority[{index}] = {float(values[index])!r} "
            f"({int(bad.sum())} bad of {count})"
        )
    return values


class PrioritizedTable:
    """Thread-safe prioritized replay; all state changes happen under one condition variable.

    ``clock_ns`` (wall-clock nanoseconds since the Unix epoch) dates the incarnation; tests
    pass their own.
    """

    def __init__(
        self,
        capacity: int,
        priority_exponent: float,
        limiter: RateLimiterSettings,
        seed: int | None = None,
        state: TableState | None = None,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        if capacity < 1 or capacity > MAX_CAPACITY:
            raise ValueError(f"capacity must be in 1..{MAX_CAPACITY}, got {capacity}")
        if not 0.0 <= priority_exponent <= 10.0:
            raise ValueError(f"priority_exponent must be in [0, 10], got {priority_exponent}")
        self._capacity = capacity
        self._alpha = priority_exponent
        self._store = ColumnStore(capacity)
        self._tree = SumTree(capacity)
        self._rng = np.random.default_rng(seed)
        self._condition = threading.Condition()
        self._next_sequence = 0  # items inserted in this incarnation
        self._inserts = 0  # items inserted since the table was created
        self._incarnation = 0  # the first key of this start, set below
        self._samples = 0
        self._priority_updates = 0
        self._waits = 0
        self._item_bytes = 0
        if state is not None:
            self._check_restorable(state)
        self._incarnation = self._new_incarnation(clock_ns(), state)
        if state is not None:
            self._restore(state)
        self._limiter = RateLimiter(limiter, inserts=self._inserts, samples=self._samples)

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def size(self) -> int:
        """Items held now (a read of one counter; no lock needed under the GIL)."""
        return self._size()

    @property
    def item_bytes(self) -> int:
        """Bytes of one stored transition; 0 before the first insert."""
        return self._item_bytes

    def _size(self) -> int:
        # Items are only ever removed by eviction, so the ring is full once it wrapped.
        return min(self._next_sequence, self._capacity)

    def _wait(self, admitted: Callable[[], bool], max_wait_s: float, what: str) -> None:
        if admitted():
            return
        self._waits += 1
        if max_wait_s <= 0 or not self._condition.wait_for(admitted, timeout=max_wait_s):
            raise RateLimitedError(
                f"{what} held back by the samples-per-insert rate limiter for {max(max_wait_s, 0):.3g} s"
            )

    def insert(
        self, columns: Columns, priorities: NDArray[np.generic], max_wait_s: float
    ) -> NDArray[np.int64]:
        """Appends a batch, evicting the oldest items when full; returns the new keys."""
        count = batch_length(columns)
        if count > self._capacity:
            raise InvalidInputError(f"batch of {count} items exceeds the table capacity {self._capacity}")
        values = check_priorities(priorities, count)
        masses = values if self._alpha == 1.0 else np.power(values, self._alpha)
        self._limiter.check_insert_size(count)
        for name, column in columns.items():
            if isinstance(column, EncodedItems):  # decompressing every item is the check: outside the lock
                try:
                    check_encoded(column)
                except InvalidInputError as error:
                    raise InvalidInputError(f"column {name!r}: {error}") from None
        with self._condition:
            self._store.check(columns)
            self._wait(lambda: self._limiter.can_insert(count, self._size()), max_wait_s, "insert")
            first_sequence = self._next_sequence
            if self._incarnation + first_sequence + count > _KEY_LIMIT:
                raise OverflowError(f"int64 keys used up: incarnation {self._incarnation} + {first_sequence}")
            self._write(first_sequence, columns, masses)
            self._inserts += count
            self._limiter.record_insert(count)
            self._condition.notify_all()
            return np.arange(first_sequence, first_sequence + count, dtype=np.int64) + self._incarnation

    def _write(self, first_sequence: int, columns: Columns, masses: NDArray[np.float64]) -> None:
        if not self._store.allocated:
            self._store.allocate(columns)
        self._store.write(first_sequence, columns)
        # The ring's slots run on from first_sequence, wrapping at most once: two ranges.
        start = first_sequence % self._capacity
        head = min(len(masses), self._capacity - start)
        self._tree.set_range(start, masses[:head])
        if head < len(masses):
            self._tree.set_range(0, masses[head:])
        self._next_sequence = first_sequence + len(masses)
        self._item_bytes = self._store.item_bytes()

    def sample(self, batch_size: int, max_wait_s: float) -> SampledItems[Column]:
        """Draws ``batch_size`` items with replacement, P(item) = mass / total mass; columns copied out."""

        def copied(items: SampledItems[Column]) -> SampledItems[Column]:
            return items

        return self._sample(batch_size, max_wait_s, self._store.gather, copied)

    def sample_into(
        self, batch_size: int, max_wait_s: float, finish: Callable[[SampledItems[InPlace]], T]
    ) -> T:
        """As :meth:`sample`, but ``finish(items)`` runs under the lock with large dense rows as
        views of the storage (:class:`StoredRows`), and its result is returned: a reply is
        serialized straight from the stored rows."""
        return self._sample(batch_size, max_wait_s, self._store.gather_in_place, finish)

    def _sample(
        self,
        batch_size: int,
        max_wait_s: float,
        gather: Callable[[NDArray[np.int64]], Mapping[str, C]],
        finish: Callable[[SampledItems[C]], T],
    ) -> T:
        if batch_size < 1:
            raise InvalidInputError(f"batch_size must be >= 1, got {batch_size}")
        self._limiter.check_sample_size(batch_size)
        with self._condition:
            size = self._size()
            minimum = self._limiter.settings.min_size_to_sample
            if size < minimum:
                raise NotEnoughDataError(f"shard holds {size} items, needs {minimum} before sampling")
            self._wait(lambda: self._limiter.can_sample(batch_size, self._size()), max_wait_s, "sample")
            total = self._tree.total
            if not total > 0.0:
                raise NotEnoughDataError(f"all {self._size()} items have priority 0")
            slots = self._tree.sample(self._rng.random(batch_size))
            masses = self._tree.get(slots)
            last = self._next_sequence - 1
            sequences = last - (last - slots) % self._capacity
            keys = sequences + self._incarnation
            result = finish(SampledItems(keys, masses, gather(slots), total, self._size()))
            self._samples += batch_size
            self._limiter.record_sample(batch_size)
            self._condition.notify_all()
            return result

    def update_priorities(self, keys: NDArray[Any], priorities: NDArray[np.generic]) -> PriorityUpdateResult:
        """Applies priorities to live items; stale keys are skipped, unknown keys rejected.

        A key is stale when its item was evicted or issued by an earlier incarnation (every
        such key is below the oldest live item's key), unknown when negative or not issued yet.
        """
        if keys.dtype != np.int64 or keys.ndim != 1:
            raise InvalidInputError(f"keys must be int64 [M], got {keys.dtype.name}{list(keys.shape)}")
        keys = keys.astype(np.int64, copy=False)
        values = check_priorities(priorities, keys.shape[0])
        masses = values if self._alpha == 1.0 else np.power(values, self._alpha)
        with self._condition:
            end = self._incarnation + self._next_sequence
            unknown = (keys < 0) | (keys >= end)
            if unknown.any():
                index = int(np.flatnonzero(unknown)[0])
                raise InvalidInputError(f"key[{index}] = {int(keys[index])} was never issued by this shard")
            live = keys >= end - self._size()
            self._tree.set((keys[live] - self._incarnation) % self._capacity, masses[live])
            updated = int(live.sum())
            self._priority_updates += updated
            return PriorityUpdateResult(updated=updated, stale=int(keys.shape[0]) - updated)

    def info(self) -> TableInfo:
        with self._condition:
            return TableInfo(
                size=self._size(),
                capacity=self._capacity,
                total_priority_mass=self._tree.total,
                priority_exponent=self._alpha,
                limiter=self._limiter.settings,
                inserts=self._inserts,
                samples=self._samples,
                priority_updates=self._priority_updates,
                rate_limiter_waits=self._waits,
                incarnation=self._incarnation,
                signature=self._store.signature,
                item_bytes=self._item_bytes,
                storage_bytes=self._store.storage_bytes(),
            )

    def counters(self) -> tuple[TableCounters, int, int]:
        """The counters now and the sequence range ``[first, end)`` of the items held now."""
        with self._condition:
            counters = TableCounters(
                capacity=self._capacity,
                priority_exponent=self._alpha,
                inserts=self._inserts,
                incarnation=self._incarnation,
                samples=self._samples,
                priority_updates=self._priority_updates,
                next_key=self._incarnation + self._next_sequence,
            )
            return counters, self._next_sequence - self._size(), self._next_sequence

    def read_rows(self, first: int, end: int) -> RowChunk:
        """Copies of the items of sequences ``[first, end)`` still held (evicted ones are left out)."""
        with self._condition:
            first = max(first, self._next_sequence - self._size())
            slots = np.arange(first, max(first, end), dtype=np.int64) % self._capacity
            return RowChunk(self._store.gather(slots), self._tree.get(slots))

    def export_state(self, chunk_rows: int = 1 << 30) -> TableState:
        """A consistent copy of the whole table (tests and small tables; snapshots stream instead)."""
        with self._condition:
            counters, first, end = self.counters()
            chunks = [
                self.read_rows(begin, min(begin + chunk_rows, end)) for begin in range(first, end, chunk_rows)
            ]
        return TableState(counters, end - first, lambda: iter(chunks))

    def _check_restorable(self, state: TableState) -> None:
        counters = state.counters
        if counters.capacity != self._capacity:
            raise ValueError(
                f"snapshot was taken with capacity {counters.capacity}, this shard has {self._capacity}"
            )
        if not 0 <= counters.incarnation <= counters.next_key <= MAX_INCARNATION:
            raise ValueError(
                f"snapshot has incarnation {counters.incarnation} and next key {counters.next_key}; "
                f"expected 0 <= incarnation <= next key <= {MAX_INCARNATION}"
            )
        if not 0 <= state.rows <= self._capacity:
            raise ValueError(f"snapshot holds {state.rows} rows, more than its capacity {self._capacity}")
        if counters.priority_exponent != self._alpha and counters.priority_exponent == 0.0:
            raise ValueError("snapshot used priority_exponent 0; its priorities cannot be re-weighted")

    @staticmethod
    def _new_incarnation(now_ns: int, state: TableState | None) -> int:
        """The clock, or above every key of the restored snapshot where the clock is behind it."""
        incarnation = now_ns
        if state is not None:
            counters = state.counters
            incarnation = max(incarnation, counters.next_key, counters.incarnation + 1)
        if not 0 <= incarnation <= MAX_INCARNATION:
            raise ValueError(f"incarnation {incarnation} is outside 0..{MAX_INCARNATION}: is the clock set?")
        return incarnation

    def _restore(self, state: TableState) -> None:
        counters = state.counters
        exponent = counters.priority_exponent
        # The restored items are numbered 0 .. rows - 1 in the new incarnation, oldest first.
        for chunk in state.chunks():
            if not len(chunk):
                continue
            masses = np.asarray(chunk.priority_masses, dtype=np.float64)
            if any(len(column) != len(masses) for column in chunk.columns.values()):
                raise ValueError("snapshot chunk has columns of another length than its priorities")
            if self._next_sequence + len(masses) > state.rows:
                raise ValueError(f"snapshot holds more rows than the {state.rows} it declares")
            if exponent != self._alpha:
                masses = np.power(masses, self._alpha / exponent)
            self._store.check(chunk.columns)
            self._write(self._next_sequence, chunk.columns, masses)
        if self._next_sequence != state.rows:
            raise ValueError(f"snapshot declares {state.rows} rows but holds {self._next_sequence}")
        self._inserts = counters.inserts
        self._samples = counters.samples
        self._priority_updates = counters.priority_updates
