"""``apexrl run`` refuses an experiment the learner could not start, before it starts anything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from services.algorithms.experiment import load_experiment
from services.launcher.prechecks import PrecheckError, check_experiment

ROOT = Path(__file__).resolve().parents[2]


def refused_run(tmp_path: Path, *arguments: str) -> str:
    """``apexrl run ARGUMENTS`` must exit 2 without starting anything; its one-line message."""
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "services", "run", *arguments, "--run-dir", str(run_dir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    # LocalRun makes the run folder (config.yaml, logs/) before it starts any process.
    assert not run_dir.exists()
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    assert lines[0].startswith("apexrl run: ")
    return lines[0]


def test_an_environment_that_does_not_exist_is_refused_naming_it(tmp_path: Path) -> None:
    message = refused_run(tmp_path, "--set", "environment.id=NoSuchEnv-v0")
    assert message == (
        "apexrl run: cannot create environment 'NoSuchEnv-v0': Environment `NoSuchEnv` doesn't exist."
    )


def test_dqn_on_continuous_actions_is_refused_naming_the_action_space(tmp_path: Path) -> None:
    message = refused_run(tmp_path, "cartpole", "--set", "environment.id=Pendulum-v1")
    assert message.startswith(
        "apexrl run: algorithm apex_dqn cannot train on Pendulum-v1, whose action space is "
        "Box(-2.0, 2.0, (1,), float32): Ape-X DQN needs a discrete action space"
    )


def test_td3_on_discrete_actions_is_refused_naming_the_action_space(tmp_path: Path) -> None:
    message = refused_run(tmp_path, "pendulum", "--set", "environment.id=CartPole-v1")
    assert message.startswith(
        "apexrl run: algorithm td3 cannot train on CartPole-v1, whose action space is Discrete(2): "
        "TD3 needs a continuous (Box) action space"
    )


@pytest.mark.parametrize("preset", ["cartpole", "acrobot", "pendulum", "pendulum-sac"])
def test_the_shipped_presets_pass(preset: str) -> None:
    check_experiment(load_experiment(preset))


def test_networks_that_do_not_fit_the_observations_are_refused() -> None:
    config = load_experiment("cartpole", ["algorithm.network.kind=nature_cnn"])
    with pytest.raises(PrecheckError) as refused:
        check_experiment(config)
    assert str(refused.value) == (
        "the apex_dqn networks do not fit the observations of CartPole-v1 (float32 of shape (4,)): "
        "nature_cnn needs a 3-D observation_shape (height, width, channels), got (4,)"
    )


def test_options_the_environment_does_not_take_are_refused() -> None:
    config = load_experiment("cartpole", ["environment.options.gravity=9.8"])
    with pytest.raises(PrecheckError) as refused:
        check_experiment(config)
    assert str(refused.value).startswith(
        "cannot create environment 'CartPole-v1' with options {'gravity': 9.8}: TypeError: "
    )
    assert "gravity" in str(refused.value).split("TypeError: ", 1)[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_cuda_learner_without_a_gpu_is_refused() -> None:
    with pytest.raises(PrecheckError, match=r"general\.device is 'cuda' but torch sees no CUDA device"):
        check_experiment(load_experiment("cartpole", ["general.device=cuda"]))
