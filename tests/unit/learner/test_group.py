"""A learner group's settings: ranks, shares of the batch and sampling seeds."""

from __future__ import annotations

import pytest

from services.algorithms.experiment import batch_share
from services.common.config import ConfigError
from services.learner.group import GroupSettings, feed_seed


def test_each_learner_takes_an_equal_share_of_the_global_batch() -> None:
    assert batch_share(128, 1) == 128
    assert batch_share(128, 4) == 32
    with pytest.raises(ConfigError, match="batch_size 100 does not split over 3 learners"):
        batch_share(100, 3)


def test_each_rank_samples_with_a_seed_of_its_own() -> None:
    seeds = {feed_seed(5, GroupSettings(4, rank, "h:1")) for rank in range(4)}
    assert len(seeds) == 4
    assert feed_seed(5, None) == feed_seed(5, GroupSettings(4, 0, "h:1")) == 5


@pytest.mark.parametrize(("size", "rank", "address", "refusal"), [
    (2, 2, "h:1", "rank 2 is not in a group of 2"),
    (2, -1, "h:1", "rank -1 is not in a group of 2"),
    (2, 1, "", "needs --group-address"),
])  # fmt: skip
def test_settings_that_name_no_group_are_refused(size: int, rank: int, address: str, refusal: str) -> None:
    with pytest.raises(ValueError, match=refusal):
        GroupSettings(size, rank, address)
