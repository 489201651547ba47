"""The learner refuses to start on replay shards whose flags disagree with its experiment."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.learner.learner import Learner, LearnerSettings
from services.learner.shard_check import ShardMismatchError
from tests.integration.conftest import ShardFactory
from tests.integration.training_fixtures import small_config


def test_a_shard_with_another_priority_exponent_is_named(start_shard: ShardFactory, tmp_path: Path) -> None:
    good, odd = start_shard(capacity=1000), start_shard(capacity=1000, priority_exponent=0.5)
    with pytest.raises(ShardMismatchError) as refused:
        Learner(small_config(), LearnerSettings((good.address, odd.address), tmp_path / "run"))
    message = str(refused.value)
    assert f"shard {odd.address} has priority_exponent 0.5" in message
    assert "algorithm.priority_exponent is 0.6" in message
    assert good.address not in message


def test_shards_too_small_to_start_learning_are_refused(start_shard: ShardFactory, tmp_path: Path) -> None:
    shard = start_shard(capacity=100)
    with pytest.raises(ShardMismatchError, match=r"hold 100 items together .*min_replay_size 200"):
        Learner(small_config(), LearnerSettings((shard.address,), tmp_path / "run"))
