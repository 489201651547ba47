"""``apexrl collect`` on models the learner writes: datasets Minari loads, with the policy's provenance."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import gymnasium as gym
import minari
import numpy as np
import pytest
from typer.testing import CliRunner, Result

from services.cli import app
from services.learner.learner import BEST_MODEL, Learner, LearnerSettings
from tests.integration.conftest import ShardFactory
from tests.integration.training_fixtures import pong_checkpoint, small_config


def learner_run(start_shard: ShardFactory, run_dir: Path, preset: str) -> Path:
    """A run folder with a best model and a checkpoint of the same (untrained) parameters."""
    shard = start_shard(capacity=1000)
    learner = Learner(
        small_config("general.seed=3", preset=preset), LearnerSettings((shard.address,), run_dir)
    )
    learner.save_best(learner.store.version)
    learner.stop()
    return run_dir


@pytest.fixture
def cartpole_run(start_shard: ShardFactory, tmp_path: Path) -> Path:
    return learner_run(start_shard, tmp_path / "run", "cartpole")


def apexrl(*arguments: str | Path) -> Result:
    return CliRunner().invoke(app, list(map(str, arguments)))


def collected(*arguments: str | Path) -> Result:
    result = apexrl("collect", *arguments)
    assert result.exit_code == 0, result.output
    return result


def refusal(*arguments: str | Path) -> str:
    result = apexrl("collect", *arguments)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("apexrl collect: "), result.stderr
    return lines[0]


def replays_exactly(dataset: Any, episode: Any, seed: int) -> bool:
    """Whether the recorded actions, from a reset with ``seed``, give back every recorded observation."""
    environment = dataset.recover_environment()
    observation, _ = environment.reset(seed=seed)
    same = np.array_equal(observation, episode.observations[0])
    for step, action in enumerate(episode.actions):
        observation, reward, terminated, _truncated, _ = environment.step(action)
        same &= np.array_equal(observation, episode.observations[step + 1])
        same &= reward == episode.rewards[step] and terminated == episode.terminations[step]
    environment.close()
    return bool(same)


def test_a_dataset_of_the_best_model_loads_in_minari_with_its_provenance(
    cartpole_run: Path, tmp_path: Path
) -> None:
    path = tmp_path / "expert"
    output = collected(cartpole_run, path, "--episodes", "3", "--author", "a tester").output
    assert "apexrl/cartpole/expert-v0" in output
    assert "minari.MinariDataset" in output
    dataset = minari.MinariDataset(path / "data")
    assert (dataset.total_episodes, dataset.spec.dataset_id) == (3, "apexrl/cartpole/expert-v0")
    assert dataset.spec.env_spec is not None
    assert dataset.spec.env_spec.id == "CartPole-v1"
    metadata = dataset.storage.metadata
    provenance = metadata["apexrl"]
    best = cartpole_run / BEST_MODEL
    assert provenance["model_sha256"] == hashlib.sha256(best.read_bytes()).hexdigest()
    assert (provenance["source"], provenance["model_kind"], provenance["algorithm"]) == (
        "policy",
        "best model",
        "apex_dqn",
    )
    assert provenance["exploration"] is None
    assert "CartPole-v1" in provenance["config"]
    assert metadata["author"] == {"a tester"}
    assert any(requirement.startswith("gymnasium==") for requirement in metadata["requirements"])
    # The same seeds as apexrl test plays by default: the same episodes.
    tested = json.loads(apexrl("test", cartpole_run, "--episodes", "3", "--json").stdout)
    episodes = list(dataset.iterate_episodes())
    assert [float(episode.rewards.sum()) for episode in episodes] == tested["returns"]
    assert provenance["seeds"] == tested["seeds"]
    for episode, seed in zip(episodes, tested["seeds"], strict=True):
        assert replays_exactly(dataset, episode, seed)
        # Deterministic: the greedy actions of the policy that was saved.
        assert episode.actions.dtype == np.int64


def test_inside_minaris_folder_the_dataset_loads_by_its_id(
    cartpole_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "minari"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    root.mkdir()
    collected(cartpole_run, root / "cartpole-greedy-v1", "--episodes", "2", "--max-steps", "20")
    dataset = minari.load_dataset("cartpole-greedy-v1")
    lengths = [len(episode.rewards) for episode in dataset.iterate_episodes()]
    assert len(lengths) == 2
    assert max(lengths) <= 20
    assert dataset.total_steps == sum(lengths)
    assert "cartpole-greedy-v1" in minari.list_local_datasets()


def test_exploration_is_the_algorithms_knob_and_a_seed_repeats_it(cartpole_run: Path, tmp_path: Path) -> None:
    def actions(name: str, *options: str) -> list[int]:
        collected(cartpole_run, tmp_path / name, "--episodes", "2", "--seed", "9", *options)
        dataset = minari.MinariDataset(tmp_path / name / "data")
        return [int(a) for episode in dataset.iterate_episodes() for a in episode.actions]

    greedy = actions("greedy")
    random_once, random_again = (
        actions("random", "--exploration", "1"),
        actions("again", "--exploration", "1"),
    )
    assert random_once == random_again
    assert random_once != greedy
    provenance = minari.MinariDataset(tmp_path / "random" / "data").storage.metadata["apexrl"]
    assert provenance["exploration"] == {"kind": "epsilon", "value": 1.0}


def test_continuous_actions_stay_in_their_bounds_and_a_step_limit_truncates(
    start_shard: ShardFactory, tmp_path: Path
) -> None:
    run = learner_run(start_shard, tmp_path / "run", "pendulum-sac")
    path = tmp_path / "sac"
    collected(run, path, "--model", "latest", "--episodes", "2", "--max-steps", "30", "--exploration", "1")
    dataset = minari.MinariDataset(path / "data")
    assert dataset.spec.dataset_id == "apexrl/pendulum/sac-v0"
    for episode in dataset.iterate_episodes():
        assert episode.actions.shape == (30, 1)
        assert episode.actions.dtype == np.float32
        assert np.all(np.abs(episode.actions) <= 2.0)
        assert list(episode.truncations) == [False] * 29 + [True]
    assert dataset.storage.metadata["apexrl"]["model_kind"] == "checkpoint"


def test_atari_frames_are_stored_as_they_were_seen(tmp_path: Path) -> None:
    pytest.importorskip("ale_py")
    model = pong_checkpoint(tmp_path)
    path = tmp_path / "pong"
    collected(model, path, "--episodes", "1", "--max-steps", "12", "--seed", "4")
    dataset = minari.MinariDataset(path / "data")
    (episode,) = dataset.iterate_episodes()
    assert episode.observations.shape == (13, 84, 84, 4)
    assert episode.observations.dtype == np.uint8
    # Lossless, where Minari's default would JPEG-encode the frames: the emulator gives them again.
    assert dataset.storage.metadata["jpeg_encoding"] is False
    assert replays_exactly(dataset, episode, 4)


def test_bad_input_is_refused_in_one_line_and_writes_nothing(cartpole_run: Path, tmp_path: Path) -> None:
    path = tmp_path / "dataset"
    assert "does not exist" in refusal(tmp_path / "no-such-run", path)
    assert "cannot act in Acrobot-v1" in refusal(cartpole_run, path, "--set", "environment.id=Acrobot-v1")
    assert "not a Minari id" in refusal(cartpole_run, path, "--dataset-id", "no version")
    assert "changes environment.* and general.* settings only" in refusal(
        cartpole_run, path, "--set", "algorithm.batch_size=3"
    )
    assert not path.exists()
    collected(cartpole_run, path, "--episodes", "1")
    before = {p: p.stat().st_mtime_ns for p in path.rglob("*")}
    assert "exists" in refusal(cartpole_run, path)
    assert "exists" in refusal(cartpole_run, tmp_path)  # any existing folder, empty or not
    assert {p: p.stat().st_mtime_ns for p in path.rglob("*")} == before
    assert minari.MinariDataset(path / "data").total_episodes == 1


def test_a_model_that_is_no_apexrl_model_is_refused(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.safetensors"
    foreign.write_bytes(b"not a safetensors file")
    assert "not an apexrl model" in refusal(foreign, tmp_path / "dataset")
    assert not (tmp_path / "dataset").exists()


@pytest.fixture(autouse=True)
def _quiet_gymnasium(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gym.logger, "min_level", 40)
