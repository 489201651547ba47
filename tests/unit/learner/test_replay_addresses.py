"""--replay: a list of shard addresses, or a pattern expanded by --replay-shards (a StatefulSet's names)."""

from __future__ import annotations

import pytest

from services.common.config import ConfigError
from services.learner.command import replay_addresses


def test_a_list_is_taken_as_it_is() -> None:
    assert replay_addresses(" a:1, b:2 ,") == ("a:1", "b:2")


def test_a_pattern_runs_over_every_shard_index() -> None:
    assert replay_addresses("replay-{index}.replay:50051", 3) == (
        "replay-0.replay:50051",
        "replay-1.replay:50051",
        "replay-2.replay:50051",
    )


@pytest.mark.parametrize(
    ("addresses", "shards", "refusal"),
    [
        ("replay-{index}:50051", None, "is a pattern: give --replay-shards N"),
        ("a:1,b:2", 2, "must be one address holding {index}"),
        ("a:1", 2, "must be one address holding {index}"),
        ("r-{index}:1,r-{index}:2", 2, "must be one address holding {index}"),
    ],
)
def test_a_pattern_without_a_count_or_a_count_without_a_pattern_is_refused(
    addresses: str, shards: int | None, refusal: str
) -> None:
    with pytest.raises(ConfigError, match=refusal.replace("{", r"\{").replace("}", r"\}")):
        replay_addresses(addresses, shards)
