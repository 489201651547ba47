"""Finding a run's model, telling models from other files, and whether a model fits an environment."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from services.common.environments import BoxActions, DiscreteActions, EnvironmentSpec
from services.evaluation import models
from services.evaluation.episodes import Statistics
from services.evaluation.models import ModelError, find_model, read_model
from services.learner import checkpoint, learner


def run_folder(tmp_path: Path, best: bool, checkpoint_updates: tuple[int, ...]) -> Path:
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    if best:
        (run_dir / models.BEST_MODEL).write_bytes(b"")
    for updates in checkpoint_updates:
        (run_dir / "checkpoints" / f"checkpoint-{updates:012d}.safetensors").write_bytes(b"")
    return run_dir


def test_the_names_are_the_learners() -> None:
    assert models.BEST_MODEL == learner.BEST_MODEL
    assert checkpoint.FORMAT.startswith(models._CHECKPOINT_FORMATS)


def test_a_run_folder_names_its_best_model_else_its_newest_checkpoint(tmp_path: Path) -> None:
    run_dir = run_folder(tmp_path, best=True, checkpoint_updates=(20, 100))
    newest = run_dir / "checkpoints" / "checkpoint-000000000100.safetensors"
    assert find_model(run_dir) == run_dir / models.BEST_MODEL
    assert find_model(run_dir, "best") == run_dir / models.BEST_MODEL
    assert find_model(run_dir, "latest") == newest
    (run_dir / models.BEST_MODEL).unlink()
    assert find_model(run_dir) == newest


def test_a_checkpoint_is_named_by_path_or_by_its_name_in_the_run(tmp_path: Path) -> None:
    run_dir = run_folder(tmp_path, best=True, checkpoint_updates=(20, 100))
    older = run_dir / "checkpoints" / "checkpoint-000000000020.safetensors"
    assert find_model(run_dir, checkpoint=Path(older.name)) == older
    assert find_model(run_dir, checkpoint=older) == older
    with pytest.raises(ModelError, match=r"no checkpoint checkpoint-9\.safetensors, nor "):
        find_model(run_dir, checkpoint=Path("checkpoint-9.safetensors"))


@pytest.mark.parametrize(
    ("best", "updates", "choice", "message"),
    [
        (False, (), None, "holds no model: no checkpoints/checkpoint-\\*.safetensors and no best_model"),
        (True, (), "latest", "holds no model: no checkpoints/checkpoint-\\*.safetensors$"),
        (False, (5,), "best", "has no best_model.safetensors \\(no evaluation finished\\); --model latest"),
    ],
)
def test_a_model_the_run_folder_lacks_is_an_error(
    tmp_path: Path, best: bool, updates: tuple[int, ...], choice: models.ModelChoice | None, message: str
) -> None:
    with pytest.raises(ModelError, match=message):
        find_model(run_folder(tmp_path, best, updates), choice)


def test_a_model_file_takes_no_choice_and_a_missing_path_is_named(tmp_path: Path) -> None:
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"")
    assert find_model(model) == model
    with pytest.raises(ModelError, match="is a model file; --model and --checkpoint choose among"):
        find_model(model, "latest")
    with pytest.raises(ModelError, match=f"^{re.escape(str(tmp_path / 'gone'))} does not exist"):
        find_model(tmp_path / "gone")


def test_files_that_are_no_apexrl_model_are_named(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello, this is no model\n")
    with pytest.raises(ModelError, match=f"^{re.escape(str(text))} is not an apexrl model: not a readable"):
        read_model(text)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": np.zeros(2, np.float32)}, str(foreign))
    with pytest.raises(ModelError, match=f"^{re.escape(str(foreign))} is not an apexrl model: a safetensors"):
        read_model(foreign)


def test_a_best_model_is_read_with_its_version_and_training_evaluation(tmp_path: Path) -> None:
    path = tmp_path / models.BEST_MODEL
    metadata = {"parameter_version": "12", "mean_return": "nan", "config": "general: {}\n"}
    save_file({"w": np.arange(3, dtype=np.float32)}, str(path), metadata=metadata)
    model = read_model(path)
    assert (model.kind, model.parameter_version, model.updates, model.evaluated_return) == (
        "best model",
        12,
        None,
        None,  # no evaluation: nan
    )
    assert model.tensors["w"].tolist() == [0.0, 1.0, 2.0]
    assert models.model_config(model).environment.id == "CartPole-v1"


CARTPOLE = EnvironmentSpec((4,), np.dtype(np.float32), DiscreteActions(2))
TWO = np.full(1, 2, np.float32)
PENDULUM = EnvironmentSpec((3,), np.dtype(np.float32), BoxActions(-TWO, TWO))
PONG = EnvironmentSpec((84, 84, 4), np.dtype(np.uint8), DiscreteActions(6))


def test_a_model_fits_the_same_observations_and_actions_whatever_the_bounds() -> None:
    wider = EnvironmentSpec(
        PENDULUM.observation_shape,
        PENDULUM.observation_dtype,
        BoxActions(np.full(1, -5, np.float32), np.full(1, 5, np.float32)),
    )
    assert models._fits(PENDULUM, wider)
    assert models._fits(CARTPOLE, EnvironmentSpec((4,), np.dtype(np.float32), DiscreteActions(2)))
    assert not models._fits(CARTPOLE, EnvironmentSpec((4,), np.dtype(np.float32), DiscreteActions(3)))
    assert not models._fits(CARTPOLE, EnvironmentSpec((4,), np.dtype(np.float64), DiscreteActions(2)))
    assert not models._fits(PENDULUM, EnvironmentSpec((3,), np.dtype(np.float32), DiscreteActions(1)))


def test_environments_are_described_by_their_observations_and_actions() -> None:
    assert models._describe("CartPole-v1", CARTPOLE) == "CartPole-v1 (observation (4,), 2 actions)"
    assert models._describe("Pendulum-v1", PENDULUM) == (
        "Pendulum-v1 (observation (3,), continuous actions (1,))"
    )
    assert models._describe("ALE/Pong-v5", PONG) == "ALE/Pong-v5 (observation (84, 84, 4) uint8, 6 actions)"


def test_statistics_are_of_the_values_themselves() -> None:
    assert Statistics.of([1.0, 3.0]) == Statistics(mean=2.0, std=1.0, min=1.0, max=3.0)
    assert Statistics.of([-5.0]) == Statistics(-5.0, 0.0, -5.0, -5.0)
