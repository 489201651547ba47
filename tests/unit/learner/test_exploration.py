"""The exploration ladder spreads settings for any number of actors, and rungs are reused lowest first."""

from __future__ import annotations

import numpy as np
import pytest

from services.algorithms.apex_dqn.config import EpsilonLadderConfig
from services.algorithms.apex_dqn.family import ladder_epsilon as dqn_ladder_epsilon
from services.algorithms.ladder import log_ladder, van_der_corput
from services.learner.exploration import ExplorationLadder


def ladder_epsilon(rung: int, base_epsilon: float = 0.4, exponent: float = 7.0) -> float:
    return dqn_ladder_epsilon(rung, EpsilonLadderConfig(base_epsilon=base_epsilon, exponent=exponent))


def test_the_van_der_corput_sequence_halves_the_gaps() -> None:
    assert [van_der_corput(i) for i in range(8)] == [0.0, 0.5, 0.25, 0.75, 0.125, 0.625, 0.375, 0.875]


@pytest.mark.parametrize("actors", [1, 2, 3, 5, 8, 13, 64])
def test_any_prefix_of_rungs_covers_the_apex_exponent_range_evenly(actors: int) -> None:
    exponents = np.sort([np.log(ladder_epsilon(rung)) / np.log(0.4) for rung in range(actors)])
    assert exponents[0] == pytest.approx(1.0)  # the most exploratory actor always has 0.4
    assert exponents.max() < 8.0
    # No gap between neighbouring exponents is wider than twice Ape-X's fixed spacing 7/(N-1).
    if actors > 1:
        gaps = np.diff(np.append(exponents, 8.0))
        assert gaps.max() <= 2 * 7.0 / (actors - 1) + 1e-9


def test_the_first_rungs_match_the_formula() -> None:
    assert ladder_epsilon(0) == pytest.approx(0.4)
    assert ladder_epsilon(1) == pytest.approx(0.4**4.5)
    assert ladder_epsilon(2, base_epsilon=0.5, exponent=4.0) == pytest.approx(0.5**2.0)


def test_a_log_ladder_starts_at_its_highest_value_and_stays_within_its_range() -> None:
    values = [log_ladder(rung, highest=0.3, lowest=0.05) for rung in range(16)]
    assert values[0] == pytest.approx(0.3)
    assert values[1] == pytest.approx((0.3 * 0.05) ** 0.5)  # halfway in log scale
    assert all(0.05 < value <= 0.3 for value in values)
    with pytest.raises(ValueError, match="0 < lowest <= highest"):
        log_ladder(0, highest=0.1, lowest=0.2)


def test_freed_rungs_are_reused_lowest_first_so_the_occupied_rungs_stay_a_prefix() -> None:
    ladder = ExplorationLadder()
    assert [ladder.acquire() for _ in range(4)] == [0, 1, 2, 3]
    ladder.release(2)
    ladder.release(0)
    assert ladder.acquire() == 0
    assert ladder.acquire() == 2
    assert ladder.acquire() == 4
    with pytest.raises(ValueError, match="not held"):
        ladder.release(9)
