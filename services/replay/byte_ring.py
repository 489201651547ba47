"""Variable-length items of a FIFO ring in one circular byte arena: the storage of an encoded column.

Items are written in insertion order, each right after the previous one, wrapping
to the arena's start when the next item does not fit before its end; so the live
items' bytes always run from the oldest item's start (the tail) round to the
newest item's end (the head), at most one wrap in between. An insert that does
not fit in the free bytes between head and tail grows the arena (the live bytes
move to the front of a larger one, in two slices); inserting never moves or
rewrites a live item otherwise. Every operation works on whole batches with numpy.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from services.common.encoded import EncodedItems, gather_ranges

# Room made when the arena grows, over what the live and new items need.
_GROWTH = 1.25


class ByteRing:
    """Bytes of ``capacity`` slots; a slot's item lies at ``arena[offsets[slot] : + sizes[slot]]``."""

    def __init__(self, capacity: int, like: EncodedItems) -> None:
        self._capacity = capacity
        self._like = EncodedItems(like.codec, like.dtype, like.item_shape, like.sizes[:0], like.data[:0])
        self._offsets = np.zeros(capacity, dtype=np.int64)
        self._sizes = np.zeros(capacity, dtype=np.int64)
        # Sized for a full ring of items like the first batch's; np.empty reserves address
        # space only, so pages become resident as bytes are written.
        mean = max(1.0, float(like.sizes.mean())) if len(like) else 1.0
        self._arena = np.empty(int(capacity * mean * _GROWTH) + 1, dtype=np.uint8)
        self._head = 0

    @property
    def allocated_bytes(self) -> int:
        return int(self._arena.nbytes + self._offsets.nbytes + self._sizes.nbytes)

    def write(self, first_sequence: int, items: EncodedItems) -> None:
        """Stores the items of sequences ``first_sequence ..``; older ones beyond capacity are gone."""
        count = len(items)
        capacity = self._capacity
        oldest = max(0, first_sequence + count - capacity)  # the oldest item live after this write
        kept = first_sequence - oldest  # items already held that stay live
        if kept > 0:
            tail = int(self._offsets[oldest % capacity])
        else:
            tail, self._head = 0, 0  # nothing stays: the whole arena is free
        ends = np.cumsum(items.sizes)
        total = int(ends[-1])
        if kept > 0 and tail >= self._head:  # live bytes wrap: free is [head, tail)
            before_end, after_wrap = tail - self._head, 0
        else:  # free is [head, end of arena) and then [0, tail)
            before_end, after_wrap = self._arena.shape[0] - self._head, tail
        # Items that fit before the end go there; the rest start again at 0.
        split = int(np.searchsorted(ends, before_end, side="right"))
        rest = total - (int(ends[split - 1]) if split else 0)
        if split < count and rest > after_wrap:
            self._grow(oldest, kept, total)
            self.write(first_sequence, items)
            return
        starts = np.empty(count, dtype=np.int64)
        starts[:split] = self._head + ends[:split] - items.sizes[:split]
        head_bytes = int(ends[split - 1]) if split else 0
        self._arena[self._head : self._head + head_bytes] = items.data[:head_bytes]
        if split < count:
            starts[split:] = ends[split:] - items.sizes[split:] - head_bytes
            self._arena[:rest] = items.data[head_bytes:]
            self._head = rest
        else:
            self._head += head_bytes
        slots = (first_sequence + np.arange(count, dtype=np.int64)) % capacity
        self._offsets[slots] = starts
        self._sizes[slots] = items.sizes

    def _grow(self, oldest: int, kept: int, incoming: int) -> None:
        """A larger arena holding the ``kept`` live items from ``oldest`` on at its front."""
        slots = (oldest + np.arange(kept, dtype=np.int64)) % self._capacity
        live = int(self._sizes[slots].sum())
        arena = np.empty(int((live + incoming) * _GROWTH) + 1, dtype=np.uint8)
        starts = self._offsets[slots]
        moved = 0
        if kept:
            # The live bytes are one run, or two when they wrap: [tail, wrap end) then [0, head).
            wrap = np.flatnonzero(np.diff(starts) < 0)
            first_run = int(wrap[0]) + 1 if len(wrap) else kept
            for run in (slots[:first_run], slots[first_run:]):
                if len(run):
                    begin = int(self._offsets[run[0]])
                    length = int(self._offsets[run[-1]] + self._sizes[run[-1]]) - begin
                    arena[moved : moved + length] = self._arena[begin : begin + length]
                    self._offsets[run] += moved - begin
                    moved += length
        self._arena = arena
        self._head = moved

    def gather(self, slots: NDArray[np.int64]) -> EncodedItems:
        """The items in ``slots``, in that order, their bytes copied out."""
        return gather_ranges(self._like, self._arena, self._offsets[slots], self._sizes[slots])
