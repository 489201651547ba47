"""The exploration ladder's spacing: rungs that spread well for any number of actors joining and leaving.

Ape-X gives actor i of a fixed N the epsilon 0.4^(1 + 7 i / (N - 1)): exponents
evenly spaced over [1, 8], that is settings spaced evenly in log scale between a
highest and a lowest value. With elastic scaling N is unknown, so rung r takes the
fraction f(r) of the way, where f is the base-2 van der Corput sequence 0, 1/2, 1/4,
3/4, 1/8, 5/8, ...: every prefix of rungs covers [0, 1) about evenly, so the first N
actors are spread almost as well as a fixed ladder of N for any N. The learner hands
out the lowest free rung, which keeps the occupied rungs a prefix.
"""

from __future__ import annotations


def van_der_corput(index: int) -> float:
    """The ``index``-th point of the base-2 van der Corput sequence, in [0, 1)."""
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    fraction, scale = 0.0, 0.5
    while index:
        fraction += scale * (index & 1)
        index >>= 1
        scale /= 2
    return fraction


def log_ladder(rung: int, highest: float, lowest: float) -> float:
    """highest * (lowest / highest) ** f(rung): rung 0 is ``highest``, later ones fill in to ``lowest``."""
    if not 0 < lowest <= highest:
        raise ValueError(f"a ladder needs 0 < lowest <= highest, got lowest={lowest} highest={highest}")
    return float(highest * (lowest / highest) ** van_der_corput(rung))
