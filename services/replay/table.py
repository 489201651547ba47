"""A prioritized replay table: FIFO ring of transitions, sum-tree sampling, keyed priority updates."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from services.replay.columns import Columns, ColumnSpec, ColumnStore, batch_length, signature_of
from services.replay.rate_limiter import (
    NotEnoughDataError,
    RateLimitedError,
    RateLimiter,
    RateLimiterSettings,
)
from services.replay.sum_tree import SumTree

# A key is (incarnation << SEQUENCE_BITS) | sequence number of the insert. The
# sequence number gives the slot (sequence % capacity) and tells whether the item
# is still live; the incarnation makes keys from before a restart stale.
SEQUENCE_BITS = 40
_SEQUENCE_MASK = (1 << SEQUENCE_BITS) - 1
MAX_INCARNATION = (1 << (63 - SEQUENCE_BITS)) - 1


@dataclass(frozen=True)
class SampledItems:
    keys: NDArray[np.int64]
    priority_masses: NDArray[np.float64]
    columns: dict[str, NDArray[np.generic]]
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


@dataclass
class TableState:
    """Everything a snapshot holds: live rows in slot order and the counters."""

    capacity: int
    priority_exponent: float
    next_sequence: int
    incarnation: int
    samples: int
    priority_updates: int
    columns: dict[str, NDArray[np.generic]] = field(default_factory=dict)
    priority_masses: NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))


def check_priorities(priorities: NDArray[np.generic], count: int) -> NDArray[np.float64]:
    """float64 priorities of shape [count]; ValueError naming the first bad value otherwise."""
    if priorities.shape != (count,):
        raise ValueError(f"priorities have shape {list(priorities.shape)}, expected [{count}]")
    if priorities.dtype.kind != "f":
        raise ValueError(f"priorities must be float32 or float64, got {priorities.dtype.name}")
    values = priorities.astype(np.float64, copy=False)
    bad = ~np.isfinite(values) | (values < 0)
    if bad.any():
        index = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"priorities must be finite and >= 0: priority[{index}] = {float(values[index])!r} "
            f"({int(bad.sum())} bad of {count})"
        )
    return values


class PrioritizedTable:
    """Thread-safe prioritized replay; all state changes happen under one condition variable."""

    def __init__(
        self,
        capacity: int,
        priority_exponent: float,
        limiter: RateLimiterSettings,
        seed: int | None = None,
        state: TableState | None = None,
    ) -> None:
        if capacity < 1 or capacity > _SEQUENCE_MASK:
            raise ValueError(f"capacity must be in 1..{_SEQUENCE_MASK}, got {capacity}")
        if not 0.0 <= priority_exponent <= 10.0:
            raise ValueError(f"priority_exponent must be in [0, 10], got {priority_exponent}")
        self._capacity = capacity
        self._alpha = priority_exponent
        self._store = ColumnStore(capacity)
        self._tree = SumTree(capacity)
        self._rng = np.random.default_rng(seed)
        self._condition = threading.Condition()
        self._next_sequence = 0
        self._incarnation = 1
        self._samples = 0
        self._priority_updates = 0
        self._waits = 0
        self._item_bytes = 0
        if state is not None:
            self._restore(state)
        self._limiter = RateLimiter(limiter, inserts=self._next_sequence, samples=self._samples)

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
            raise ValueError(f"batch of {count} items exceeds the table capacity {self._capacity}")
        values = check_priorities(priorities, count)
        masses = values if self._alpha == 1.0 else np.power(values, self._alpha)
        self._limiter.check_insert_size(count)
        with self._condition:
            self._store.check(columns)
            self._wait(lambda: self._limiter.can_insert(count, self._size()), max_wait_s, "insert")
            if not self._store.allocated:
                self._store.allocate(signature_of(columns))
                self._item_bytes = self._store.item_bytes()
            first_sequence = self._next_sequence
            start = first_sequence % self._capacity
            head = min(count, self._capacity - start)
            self._store.write(start, columns, 0, head)
            self._tree.set_range(start, masses[:head])
            if head < count:
                self._store.write(0, columns, head, count)
                self._tree.set_range(0, masses[head:])
            self._next_sequence += count
            self._limiter.record_insert(count)
            self._condition.notify_all()
            sequences = np.arange(first_sequence, first_sequence + count, dtype=np.int64)
            return (self._incarnation << SEQUENCE_BITS) | sequences

    def sample(self, batch_size: int, max_wait_s: float) -> SampledItems:
        """Draws ``batch_size`` items with replacement, P(item) = mass / total mass."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
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
            keys = (self._incarnation << SEQUENCE_BITS) | sequences
            columns = self._store.gather(slots)
            self._samples += batch_size
            self._limiter.record_sample(batch_size)
            self._condition.notify_all()
            return SampledItems(keys, masses, columns, total, self._size())

    def update_priorities(self, keys: NDArray[Any], priorities: NDArray[np.generic]) -> PriorityUpdateResult:
        """Applies priorities to live items; stale keys are skipped, unknown keys rejected."""
        if keys.dtype != np.int64 or keys.ndim != 1:
            raise ValueError(f"keys must be int64 [M], got {keys.dtype.name}{list(keys.shape)}")
        keys = keys.astype(np.int64, copy=False)
        values = check_priorities(priorities, keys.shape[0])
        masses = values if self._alpha == 1.0 else np.power(values, self._alpha)
        incarnations = keys >> SEQUENCE_BITS
        sequences = keys & _SEQUENCE_MASK
        with self._condition:
            unknown = (keys < 0) | (incarnations > self._incarnation)
            unknown |= (incarnations == self._incarnation) & (sequences >= self._next_sequence)
            if unknown.any():
                index = int(np.flatnonzero(unknown)[0])
                raise ValueError(f"key[{index}] = {int(keys[index])} was never issued by this shard")
            live = (incarnations == self._incarnation) & (sequences >= self._next_sequence - self._size())
            self._tree.set(sequences[live] % self._capacity, masses[live])
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
                inserts=self._next_sequence,
                samples=self._samples,
                priority_updates=self._priority_updates,
                rate_limiter_waits=self._waits,
                incarnation=self._incarnation,
                signature=self._store.signature,
                item_bytes=self._item_bytes,
            )

    def export_state(self) -> TableState:
        """A consistent copy of the live rows and counters, taken under the lock."""
        with self._condition:
            size = self._size()
            return TableState(
                capacity=self._capacity,
                priority_exponent=self._alpha,
                next_sequence=self._next_sequence,
                incarnation=self._incarnation,
                samples=self._samples,
                priority_updates=self._priority_updates,
                columns={name: column.copy() for name, column in self._store.head(size).items()},
                priority_masses=self._tree.leaves()[:size].copy(),
            )

    def _restore(self, state: TableState) -> None:
        if state.capacity != self._capacity:
            raise ValueError(
                f"snapshot was taken with capacity {state.capacity}, this shard has {self._capacity}"
            )
        if state.incarnation >= MAX_INCARNATION:
            raise ValueError(f"snapshot incarnation {state.incarnation} is at its limit")
        size = min(state.next_sequence, state.capacity)
        masses = np.asarray(state.priority_masses, dtype=np.float64)
        if masses.shape != (size,) or any(c.shape[0] != size for c in state.columns.values()):
            raise ValueError(f"snapshot rows do not match its size {size}")
        if state.priority_exponent != self._alpha:
            if state.priority_exponent == 0.0:
                raise ValueError("snapshot used priority_exponent 0; its priorities cannot be re-weighted")
            masses = np.power(masses, self._alpha / state.priority_exponent)
        if state.columns:
            self._store.allocate(signature_of(state.columns))
            self._item_bytes = self._store.item_bytes()
            self._store.write(0, state.columns, 0, size)
        self._tree.set_range(0, masses)
        self._next_sequence = state.next_sequence
        # A new incarnation: keys handed out before the restart are stale from now on.
        self._incarnation = state.incarnation + 1
        self._samples = state.samples
        self._priority_updates = state.priority_updates
