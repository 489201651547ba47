"""A learner resumed with settings its checkpoint does not fit stops, naming each difference."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.learner.checkpoint import CheckpointMismatchError
from services.learner.learner import Learner, LearnerSettings
from tests.integration.conftest import ShardFactory
from tests.integration.training_fixtures import small_config


@pytest.mark.parametrize(
    ("override", "named"),
    [
        (
            "algorithm.network.hidden_sizes=[32]",
            "algorithm.network.hidden_sizes is [64, 64] in the checkpoint",
        ),
        ("environment.id=Acrobot-v1", "environment.id is 'CartPole-v1' in the checkpoint, 'Acrobot-v1' now"),
    ],
)
def test_a_checkpoint_of_other_networks_stops_the_learner_naming_the_difference(
    start_shard: ShardFactory, tmp_path: Path, override: str, named: str
) -> None:
    shard = start_shard(capacity=1000)
    settings = LearnerSettings((shard.address,), tmp_path / "run")
    first = Learner(small_config(), settings)
    first.stop()  # writes a checkpoint
    with pytest.raises(CheckpointMismatchError) as refused:
        Learner(small_config(override), settings)
    message = str(refused.value)
    assert named in message
    assert "checkpoint-" in message
    assert "start a new run folder" in message


def test_settings_a_resumed_run_may_change_do_not_stop_it(start_shard: ShardFactory, tmp_path: Path) -> None:
    shard = start_shard(capacity=1000)
    settings = LearnerSettings((shard.address,), tmp_path / "run")
    Learner(small_config(), settings).stop()
    resumed = Learner(small_config("algorithm.learning_rate=0.0001"), settings)
    resumed.stop()
