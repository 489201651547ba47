"""Episodes recorded as the actor's rollout plays them, and the Minari datasets they are written to."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import minari
import numpy as np
import pytest

from services.actor.metrics import DATASET_DROPPED, DATASET_WRITTEN, ActorMetrics
from services.actor.n_step import NStepBuilder
from services.actor.rollout import Rollout
from services.datasets import actor_stream
from services.datasets.actor_stream import EpisodeStream, new_dataset_folder
from services.datasets.episodes import EpisodeTrace
from services.datasets.writer import DatasetError, DatasetWriter, check_dataset_id, default_dataset_id
from tests.unit.actor.test_rollout import Corridor

LENGTHS = (3, 5)  # of the two corridors' episodes


def counted(metrics: ActorMetrics, outcome: str) -> float:
    value = metrics.registry.get_sample_value("apexrl_actor_dataset_episodes_total", {"outcome": outcome})
    assert value is not None
    return value


def stream_for(path: Path, metrics: ActorMetrics, max_episodes: int = 100) -> EpisodeStream:
    context = {"actor_id": 7, "parameter_version": 3}
    return EpisodeStream(
        path, Corridor(0, 1, False), "Corridor-v0", {}, metrics, lambda: context, max_episodes
    )


def play(tmp_path: Path, steps: int, max_episodes: int = 100) -> tuple[Path, ActorMetrics]:
    """Two corridors (3 steps ending terminated, 5 truncated) played ``steps`` times, recorded."""
    path = tmp_path / "actor-7"
    metrics = ActorMetrics()
    environments: list[Any] = [Corridor(0, LENGTHS[0], False), Corridor(1, LENGTHS[1], True)]
    rollout = Rollout(
        environments,
        NStepBuilder(2, 3, 0.9),
        seed=11,
        clip_rewards=True,  # the builder sees sign(r); the dataset the rewards themselves
        episodes=stream_for(path, metrics, max_episodes),
    )
    for _ in range(steps):
        rollout.step(lambda observations: np.zeros(len(observations), dtype=np.int64))
    rollout.close()
    return path, metrics


def test_the_rollouts_episodes_are_written_whole_with_their_own_rewards(tmp_path: Path) -> None:
    path, metrics = play(tmp_path, steps=15)  # corridor 0 ends 5 episodes, corridor 1 three
    dataset = minari.MinariDataset(path / "data")
    assert dataset.total_episodes == 8
    assert counted(metrics, DATASET_WRITTEN) == 8
    by_corridor: dict[int, list[Any]] = {0: [], 1: []}
    for episode in dataset.iterate_episodes():
        by_corridor[int(episode.observations[0][0])].append(episode)
    for corridor, length in enumerate(LENGTHS):
        for number, episode in enumerate(by_corridor[corridor]):
            # [corridor, episode, step] for every step from the reset to the last.
            expected = [[corridor, number, step] for step in range(length + 1)]
            np.testing.assert_array_equal(episode.observations, expected)
            np.testing.assert_array_equal(episode.rewards, np.arange(1, length + 1))  # never clipped
            assert list(episode.terminations) == [False] * (length - 1) + [corridor == 0]
            assert list(episode.truncations) == [False] * (length - 1) + [corridor == 1]
    metadata = json.loads((path / "data" / "0" / "metadata.json").read_text())
    assert (metadata["actor_id"], metadata["parameter_version"], metadata["return"]) == (7, 3, 6.0)
    assert metadata["seed"] == 11  # the first episode of the first environment: reset with the rollout's seed


def test_recording_stops_at_its_limit_and_the_episodes_under_way_are_not_written(tmp_path: Path) -> None:
    path, metrics = play(tmp_path, steps=15, max_episodes=3)
    assert minari.MinariDataset(path / "data").total_episodes == 3
    assert (counted(metrics, DATASET_WRITTEN), counted(metrics, DATASET_DROPPED)) == (3, 0)


def test_episodes_beyond_the_pending_bound_are_dropped_and_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(actor_stream, "MAX_PENDING_EPISODES", 0)  # the writer never keeps up
    path, metrics = play(tmp_path, steps=15)
    assert minari.MinariDataset(path / "data").total_episodes == 0
    assert counted(metrics, DATASET_DROPPED) == 8


def test_a_failed_write_stops_recording_and_training_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full_disk(self: DatasetWriter, *_: Any) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(DatasetWriter, "write", full_disk)
    _, metrics = play(tmp_path, steps=15)  # the rollout ran every step
    assert counted(metrics, DATASET_WRITTEN) == 0
    assert 1 <= counted(metrics, DATASET_DROPPED) <= 8


def test_a_dataset_is_never_written_over(tmp_path: Path) -> None:
    path, _ = play(tmp_path, steps=4)
    before = sorted(p.relative_to(path) for p in path.rglob("*"))
    with pytest.raises(DatasetError, match="exists"):
        stream_for(path, ActorMetrics())
    assert sorted(p.relative_to(path) for p in path.rglob("*")) == before
    assert new_dataset_folder(tmp_path, 7) == tmp_path / "actor-7-2"
    assert new_dataset_folder(tmp_path, 8) == tmp_path / "actor-8"


def test_a_trace_ended_from_outside_is_truncated_and_an_empty_one_is_refused() -> None:
    trace = EpisodeTrace(np.zeros(2), seed=4)
    trace.add(1, 0.5, False, False, np.ones(2))
    trace.add(0, 1.5, False, False, np.ones(2) * 2)
    episode = trace.finish(truncated=True)
    assert (episode.steps, episode.seed, episode.episode_return) == (2, 4, 2.0)
    assert list(episode.truncations) == [False, True]
    assert episode.observations.shape == (3, 2)
    terminated = EpisodeTrace(0)
    terminated.add(0, 1.0, True, False, 1)
    assert list(terminated.finish(truncated=True).truncations) == [False]  # it ended by itself
    with pytest.raises(ValueError, match="no steps"):
        EpisodeTrace(0).finish()


def test_dataset_ids_follow_minaris_rule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    assert default_dataset_id(tmp_path / "expert", "CartPole-v1") == "apexrl/cartpole/expert-v0"
    assert default_dataset_id(tmp_path / "games-v2", "ALE/Pong-v5") == "apexrl/pong/games-v2"
    inside = tmp_path / "minari" / "mine" / "pole" / "greedy-v1"
    assert default_dataset_id(inside, "CartPole-v1") == "mine/pole/greedy-v1"
    for malformed in ("no-version", "a b-v0", "/abs-v0", "x/-v1"):
        with pytest.raises(DatasetError, match="not a Minari id"):
            check_dataset_id(malformed)
    minari_rule = minari.dataset.minari_dataset.DATASET_ID_RE
    for good in ("apexrl/cartpole/expert-v0", "mine/pole/greedy-v1", "solo-v3"):
        assert check_dataset_id(good) == good
        assert minari_rule.fullmatch(good)
