"""Sum tree over replay slots: batched priority updates and proportional sampling in O(log n)."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

# Level whose prefix sums a sample searches (2^12 nodes: cheap to sum, deep enough
# to skip most of the per-level descent).
_SEARCH_LEVEL = 12
# A run of ancestors this narrow is summed node by node (set_range).
_SCALAR_NODES = 2


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
        self._prefix: NDArray[np.float64] | None = None

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
        """Set leaf masses (the last one wins for repeated slots), then fix their ancestors.

        Below the search level each ancestor is recomputed per item (a repeated
        ancestor is written twice with the same sum: cheaper than deduplicating);
        the small top of the tree is recomputed whole, one slice per level.
        """
        if slots.size == 0:
            return
        self._prefix = None
        nodes = slots + self._leaf_base
        self._nodes[nodes] = masses
        left = np.empty_like(nodes)
        top = min(self._depth, _SEARCH_LEVEL)
        for _ in range(self._depth - top):
            np.floor_divide(nodes, 2, out=nodes)
            np.multiply(nodes, 2, out=left)
            self._nodes[nodes] = np.take(self._nodes, left) + np.take(self._nodes, left + 1)
        self._recompute_top(top)

    def _recompute_top(self, level: int) -> None:
        """Recomputes every node above ``level`` from its children, bottom-up."""
        for depth in range(level - 1, -1, -1):
            first = 1 << depth
            children = self._nodes[2 * first : 4 * first]
            np.add(children[0::2], children[1::2], out=self._nodes[first : 2 * first])

    def set_range(self, start: int, masses: NDArray[np.float64]) -> None:
        """Set the masses of the contiguous slots ``start .. start + len(masses) - 1``.

        Inserts into a ring buffer write contiguous runs; their ancestors are
        contiguous runs too, so each level is one slice operation.
        """
        if masses.size == 0:
            return
        if start < 0 or start + masses.size > self._capacity:
            raise IndexError(f"slots {start}..{start + masses.size - 1} outside 0..{self._capacity - 1}")
        self._prefix = None
        nodes = self._nodes
        low = start + self._leaf_base
        high = low + masses.size - 1
        nodes[low : high + 1] = masses
        # Each level's sums are written in place: one ufunc call, no temporary, while the run
        # is wide; once it is a node or two, plain float sums cost less than a ufunc call.
        for level in range(self._depth):
            low, high = low >> 1, high >> 1
            if high - low < _SCALAR_NODES:
                self._sum_up(low, high, self._depth - level - 1)
                return
            left, right = nodes[2 * low : 2 * high + 2 : 2], nodes[2 * low + 1 : 2 * high + 2 : 2]
            np.add(left, right, out=nodes[low : high + 1])

    def _sum_up(self, low: int, high: int, levels: int) -> None:
        """Recomputes nodes ``low..high`` and ``levels`` levels of their ancestors, one at a time."""
        nodes = self._nodes
        for _ in range(levels + 1):
            for node in range(low, high + 1):
                nodes[node] = nodes[2 * node] + nodes[2 * node + 1]
            low, high = low >> 1, high >> 1

    def sample(self, uniforms: NDArray[np.float64]) -> NDArray[np.int64]:
        """Slots for draws ``uniforms`` in [0, 1), each with probability mass / total.

        The top levels are one binary search in a level's prefix sums; each level
        below is a handful of in-place ufunc calls over the whole batch (the
        per-call overhead, not the arithmetic, dominates at replay batch sizes).
        Rounding can, rarely, carry a draw onto a slot of zero mass at an interval
        boundary; those draws alone are redone with a guarded descent.
        """
        total = self._nodes[1]
        if not total > 0.0:
            raise ValueError("cannot sample from a sum tree whose total mass is 0")
        targets = uniforms * total
        # The top of the tree in one step: a binary search in the prefix sums of
        # one level replaces that many levels of per-level numpy calls.
        level = min(self._depth, _SEARCH_LEVEL)
        first = 1 << level
        prefix = self._search_prefix(first)
        index = np.minimum(np.searchsorted(prefix, targets, side="right"), first - 1)
        targets -= np.where(index > 0, prefix[index - 1], 0.0)
        nodes: NDArray[np.int64] = index + first
        left_mass = np.empty(uniforms.shape, dtype=np.float64)
        go_right = np.empty(uniforms.shape, dtype=bool)
        for _ in range(self._depth - level):
            np.multiply(nodes, 2, out=nodes)
            np.take(self._nodes, nodes, out=left_mass)
            np.greater_equal(targets, left_mass, out=go_right)
            np.subtract(targets, left_mass, out=targets, where=go_right)
            np.add(nodes, go_right, out=nodes)
        empty = self._nodes[nodes] <= 0.0
        if empty.any():
            nodes[empty] = self._guarded_descent(uniforms[empty] * total)
        return nodes - self._leaf_base

    def _search_prefix(self, first: int) -> NDArray[np.float64]:
        """Prefix sums of the search level, kept until the next write (samplers often outpace writers)."""
        if self._prefix is None:
            self._prefix = np.cumsum(self._nodes[first : 2 * first])
        return self._prefix

    def _guarded_descent(self, targets: NDArray[np.float64]) -> NDArray[np.int64]:
        """The descent that never enters a subtree of zero mass."""
        nodes = np.ones(targets.shape, dtype=np.int64)
        for _ in range(self._depth):
            left = 2 * nodes
            left_mass = self._nodes[left]
            right_mass = self._nodes[left + 1]
            go_right = ((targets >= left_mass) & (right_mass > 0.0)) | (left_mass <= 0.0)
            targets = np.where(go_right, targets - left_mass, np.minimum(targets, left_mass))
            nodes = left + go_right
        return nodes
