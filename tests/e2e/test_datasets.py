"""Datasets of a real run: the actors' episodes as they train, then ``apexrl collect`` of its best model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import minari
import numpy as np
import pytest
from safetensors import safe_open
from typer.testing import CliRunner

from services.cli import app
from services.learner.learner import BEST_MODEL
from tests.e2e.test_resume import apexrl_run


def episode_metadata(path: Path) -> list[dict[str, Any]]:
    total = json.loads((path / "data" / "metadata.json").read_text())["total_episodes"]
    return [json.loads((path / "data" / str(i) / "metadata.json").read_text()) for i in range(total)]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_actors_record_their_episodes_and_the_best_model_is_collected(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    budget = ["--set", "general.max_wall_time_s=12", "--set", "general.seed=5"]
    result = apexrl_run("cartpole", "--run-dir", str(run_dir), "--record-actors", "--shards", "1", *budget)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "datasets/" in result.stdout

    folders = sorted((run_dir / "datasets").iterdir())
    assert len(folders) == 2, folders
    explorations = set()
    for folder in folders:
        dataset = minari.MinariDataset(folder / "data")
        assert dataset.total_episodes > 0
        provenance = dataset.storage.metadata["apexrl"]
        assert provenance["source"] == "actor"
        assert folder.name == f"actor-{provenance['actor_id']}"
        assert dataset.spec.dataset_id == f"apexrl/cartpole/{folder.name}-v0"
        episodes = episode_metadata(folder)
        assert {episode["actor_id"] for episode in episodes} == {provenance["actor_id"]}
        versions = [episode["parameter_version"] for episode in episodes]
        assert versions == sorted(versions)
        assert versions[-1] > versions[0]  # the actor took new parameters as it played
        explorations |= {episode["exploration"] for episode in episodes}
        # The first episode was reset with its seed: its actions play it again, step for step.
        first = next(dataset.iterate_episodes([0]))
        environment = dataset.recover_environment()
        observation, _ = environment.reset(seed=episodes[0]["seed"])
        np.testing.assert_array_equal(observation, first.observations[0])
        for step, action in enumerate(first.actions):
            observation, *_ = environment.step(action)
            np.testing.assert_array_equal(observation, first.observations[step + 1])
        assert sum(first.rewards) == episodes[0]["return"]
    assert len(explorations) == 2  # one epsilon per actor

    # The trained policy, played with the evaluator's seeds: the return that made it the best.
    expert = tmp_path / "expert"
    collected = CliRunner().invoke(app, ["collect", str(run_dir), str(expert)])
    assert collected.exit_code == 0, collected.output
    with safe_open(str(run_dir / BEST_MODEL), framework="pt") as reader:
        best_return = float(reader.metadata()["mean_return"])
    dataset = minari.MinariDataset(expert / "data")
    returns = [float(episode.rewards.sum()) for episode in dataset.iterate_episodes()]
    assert len(returns) == 10  # the config's evaluation_episodes
    assert np.mean(returns) == pytest.approx(best_return, abs=1e-9)
