"""Learner checkpoints resume training exactly: networks, Adam moments, counters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from services.algorithms.apex_dqn.config import ApexDqnConfig
from services.algorithms.apex_dqn.learning import DqnLearner
from services.algorithms.experiment import load_experiment
from services.algorithms.families import family_named
from services.algorithms.interface import LearnerCore
from services.common.environments import describe_environment
from services.learner.checkpoint import (
    TrainingCounters,
    checkpoints,
    latest_checkpoint,
    save_checkpoint,
    setting_differences,
    tensor_differences,
)


def batch(seed: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    size = 16
    columns: dict[str, np.ndarray] = {
        "observation": rng.standard_normal((size, 4)).astype(np.float32),
        "action": rng.integers(0, 2, size),
        "reward": rng.standard_normal(size).astype(np.float32),
        "discount": np.full(size, 0.97, np.float32),
        "next_observation": rng.standard_normal((size, 4)).astype(np.float32),
    }
    return columns, np.ones(size, np.float32)


def learner() -> DqnLearner:
    config = load_experiment(
        "cartpole", ["algorithm.network.hidden_sizes=[16]", "algorithm.target_update_interval=3"]
    )
    assert isinstance(config.algorithm, ApexDqnConfig)
    return DqnLearner(config.algorithm, (4,), 2, torch.device("cpu"), seed=0)


def test_a_resumed_learner_takes_exactly_the_steps_the_original_would_have(tmp_path: Path) -> None:
    original = learner()
    for seed in range(5):
        original.update(*batch(seed))
    counters = TrainingCounters(updates=original.updates, parameter_version=9, environment_steps=1234)
    save_checkpoint(tmp_path, original.state_tensors(), counters, "general: {}\n")
    restored = latest_checkpoint(tmp_path)
    assert restored is not None
    tensors, loaded_counters, config_text = restored.tensors, restored.counters, restored.config_yaml
    assert loaded_counters == counters
    assert config_text == "general: {}\n"
    resumed = learner()
    resumed.load_state_tensors(tensors, loaded_counters.updates)
    for seed in range(5, 9):
        expected = original.update(*batch(seed))
        got = resumed.update(*batch(seed))
        assert got.loss == pytest.approx(expected.loss, rel=1e-6)
        np.testing.assert_allclose(got.priorities, expected.priorities, rtol=1e-5)
    for name, value in original.online.state_dict().items():
        torch.testing.assert_close(resumed.online.state_dict()[name], value)


def test_only_the_newest_checkpoints_are_kept_and_a_damaged_newest_falls_back(tmp_path: Path) -> None:
    model = learner()
    for updates in (10, 20, 30, 40):
        save_checkpoint(tmp_path, model.state_tensors(), TrainingCounters(updates=updates), "", keep=3)
    files = checkpoints(tmp_path)
    assert [path.name for path in files] == [f"checkpoint-{n:012d}.safetensors" for n in (20, 30, 40)]
    files[-1].write_bytes(b"damaged")
    restored = latest_checkpoint(tmp_path)
    assert restored is not None
    assert restored.counters.updates == 30


def test_importance_exponent_anneals_to_one() -> None:
    model = learner()
    assert model.importance_exponent() == pytest.approx(0.4)
    model.updates = 5_000
    assert model.importance_exponent() == pytest.approx(0.7)
    model.updates = 50_000
    assert model.importance_exponent() == 1.0


def pendulum_batch(seed: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Pendulum-shaped transitions: 3-D observations, 1-D torques in [-2, 2]."""
    rng = np.random.default_rng(seed)
    size = 16
    columns: dict[str, np.ndarray] = {
        "observation": rng.standard_normal((size, 3)).astype(np.float32),
        "action": rng.uniform(-2.0, 2.0, (size, 1)).astype(np.float32),
        "reward": rng.standard_normal(size).astype(np.float32),
        "discount": np.full(size, 0.97, np.float32),
        "next_observation": rng.standard_normal((size, 3)).astype(np.float32),
    }
    return columns, rng.uniform(0.5, 1.0, size).astype(np.float32)


@pytest.mark.parametrize("preset", ["pendulum", "pendulum-sac"])
def test_a_resumed_continuous_learner_takes_exactly_the_steps_the_original_would_have(
    tmp_path: Path, preset: str
) -> None:
    config = load_experiment(
        preset, ["algorithm.network.hidden_sizes=[16]", "algorithm.network.critic_hidden_sizes=[16]"]
    )
    family = family_named(config.algorithm.name)
    environment = describe_environment(config.environment.id, {})

    def core(seed: int) -> LearnerCore:
        return family.make_learner(config.algorithm, environment, torch.device("cpu"), seed)

    original = core(seed=0)
    for seed in range(5):  # an odd count: TD3's next policy step is one update away
        original.update(*pendulum_batch(seed))
    save_checkpoint(tmp_path, original.state_tensors(), TrainingCounters(updates=original.updates), "")
    restored = latest_checkpoint(tmp_path)
    assert restored is not None
    resumed = core(seed=1)  # other initial weights: everything must come from the file
    resumed.load_state_tensors(restored.tensors, restored.counters.updates)
    for seed in range(5, 9):
        expected, got = original.update(*pendulum_batch(seed)), resumed.update(*pendulum_batch(seed))
        assert got.loss == expected.loss
        np.testing.assert_array_equal(got.priorities, expected.priorities)
    final, resumed_final = original.state_tensors(), resumed.state_tensors()
    assert final.keys() == resumed_final.keys()
    for name, value in final.items():
        torch.testing.assert_close(resumed_final[name], value, rtol=0, atol=0, msg=name)


def test_settings_the_model_depends_on_are_told_apart_from_those_a_resumed_run_may_change() -> None:
    stored = "algorithm:\n  name: apex_dqn\n  learning_rate: 0.001\n  network:\n    hidden_sizes: [64, 64]\n"
    current = {"algorithm": {"name": "apex_dqn", "learning_rate": 0.0005, "network": {"hidden_sizes": [32]}}}
    matter, other = setting_differences(stored, current)
    assert matter == ["algorithm.network.hidden_sizes is [64, 64] in the checkpoint, [32] now"]
    assert other == ["algorithm.learning_rate is 0.001 in the checkpoint, 0.0005 now"]
    assert setting_differences("", current) == ([], [])  # an old checkpoint without its config


def test_tensors_missing_or_of_another_shape_are_named() -> None:
    expected = {"a": torch.zeros(2, 3), "b": torch.zeros(4), "c": torch.zeros(1)}
    stored = {"a": torch.zeros(2, 3), "b": torch.zeros(5), "extra": torch.zeros(1)}
    assert tensor_differences(stored, expected) == [
        "tensor b is (5,) torch.float32 in the checkpoint, (4,) torch.float32 now",
        "tensor c is missing",
    ]
