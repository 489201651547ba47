"""Sum tree over replay slots: batched priority updates and proportional sampling in O(log n)."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray


class SumTree:
    """Complete binary tree in one array; node 1 is the root, leaf ``leaf_base + i`` is slot ``i``.

    Every internal node holds the sum of its two children, so the root is the
    total mass and a uniform draw in ``[0, total)`` descends to a slot with
    probability ``mass[slot] / total``. Parents are always recomputed from their
    children (never adjusted by deltas), so rounding error does not accumulate.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self._capacity = capacity
        self._depth = max(1, int(np.ceil(np.log2(capacity))))
        self._leaf_base = 1 << self._depth
        # np.zeros maps untouched pages lazily, so memory grows as the table fills.
        self._nodes = np.zeros(2 * self._leaf_base, dtype=np.float64)

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def total(self) -> float:
        return float(self._nodes[1])

    def get(self, slots: NDArray[np.int64]) -> NDArray[np.float64]:
        """Masses of the given slots."""
        return self._nodes[slots + self._leaf_base]

    def leaves(self) -> NDArray[np.float64]:
        """A read-only view of every slot's mass, in slot order."""
        view = self._nodes[self._leaf_base : self._leaf_base + self._capacity]
        view.flags.writeable = False
        return view

    def set(self, slots: NDArray[np.int64], masses: NDArray[np.float64]) -> None:
        """Set leaf masses (the last one wins for repeated slots), then fix their ancestors."""
        if slots.size == 0:
            return
        order = np.argsort(slots, kind="stable")
        nodes = slots[order] + self._leaf_base
        self._nodes[nodes] = masses[order]
        for _ in range(self._depth):
            nodes = nodes // 2
            # Sorted input stays sorted; dropping repeats keeps each level's work small.
            keep = np.empty(nodes.size, dtype=bool)
            keep[0] = True
            np.not_equal(nodes[1:], nodes[:-1], out=keep[1:])
            nodes = nodes[keep]
            self._nodes[nodes] = self._nodes[2 * nodes] + self._nodes[2 * nodes + 1]

    def set_range(self, start: int, masses: NDArray[np.float64]) -> None:
        """Set the masses of the contiguous slots ``start .. start + len(masses) - 1``.

        Inserts into a ring buffer write contiguous runs; their ancestors are
        contiguous runs too, so each level is one slice operation.
        """
        if masses.size == 0:
            return
        if start < 0 or start + masses.size > self._capacity:
            raise IndexError(f"slots {start}..{start + masses.size - 1} outside 0..{self._capacity - 1}")
        low = start + self._leaf_base
        high = low + masses.size - 1
        self._nodes[low : high + 1] = masses
        for _ in range(self._depth):
            low, high = low // 2, high // 2
            children = self._nodes[2 * low : 2 * high + 2]
            self._nodes[low : high + 1] = children[0::2] + children[1::2]

    def sample(self, uniforms: NDArray[np.float64]) -> NDArray[np.int64]:
        """Slots for draws ``uniforms`` in [0, 1), each with probability mass / total.

        The descent never enters a subtree of zero mass, so rounding at a
        boundary cannot return an empty or zero-priority slot.
        """
        total = self._nodes[1]
        if not total > 0.0:
            raise ValueError("cannot sample from a sum tree whose total mass is 0")
        targets = uniforms * total
        nodes = np.ones(uniforms.shape, dtype=np.int64)
        for _ in range(self._depth):
            left = 2 * nodes
            left_mass = self._nodes[left]
            right_mass = self._nodes[left + 1]
            go_right = ((targets >= left_mass) & (right_mass > 0.0)) | (left_mass <= 0.0)
            targets = np.where(go_right, targets - left_mass, np.minimum(targets, left_mass))
            nodes = left + go_right
        return nodes - self._leaf_base
