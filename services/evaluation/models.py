"""A run's saved models: finding one, reading it back, and the acting policy it makes for an environment."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import yaml
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from services.algorithms.experiment import ExperimentConfig
from services.algorithms.families import family_named
from services.algorithms.interface import ActingPolicy
from services.common.config import apply_overrides, validate
from services.common.environments import BoxActions, EnvironmentSpec, describe_environment
from services.learner.checkpoint import checkpoints, load_checkpoint, tensor_differences

# The learner's names (services/learner/learner.py BEST_MODEL, checkpoint.py FORMAT), kept
# here so that reading a model does not import the learner's server and logging stack.
BEST_MODEL = "best_model.safetensors"
_CHECKPOINT_FORMATS = "apexrl.learner.checkpoint/"

ModelKind = Literal["best model", "checkpoint"]
ModelChoice = Literal["best", "latest"]


class ModelError(ValueError):
    """A path that holds no usable model, or a model that cannot act where asked; the message says why."""


@dataclass(frozen=True)
class SavedModel:
    """A best model or a learner checkpoint, read back."""

    path: Path
    kind: ModelKind
    config_yaml: str
    # A best model's: the actors' parameter set. A checkpoint's: the learner core's state.
    tensors: dict[str, torch.Tensor]
    parameter_version: int
    updates: int | None  # a checkpoint's; a best model does not record them
    evaluated_return: float | None  # a best model's: the evaluation in training that made it the best


def find_model(target: Path, choice: ModelChoice | None = None, checkpoint: Path | None = None) -> Path:
    """The model file ``target`` names: itself, or a run folder's best model, else its newest checkpoint.

    ``choice`` or ``checkpoint`` (a path, or a name in the run's checkpoints/) picks one of a
    run folder's models instead. ModelError when there is none to pick.
    """
    if not target.exists():
        raise ModelError(f"{target} does not exist: name a run folder or a model file (.safetensors)")
    if target.is_file():
        if choice is not None or checkpoint is not None:
            raise ModelError(
                f"{target} is a model file; --model and --checkpoint choose among a run folder's models"
            )
        return target
    if checkpoint is not None:
        if choice is not None:
            raise ModelError("--model and --checkpoint both choose the model: give one of them")
        return _named_checkpoint(target, checkpoint)
    best = target / BEST_MODEL
    if choice == "best" or (choice is None and best.is_file()):
        if not best.is_file():
            raise ModelError(
                f"{target} has no {BEST_MODEL} (no evaluation finished); --model latest tests its newest "
                "checkpoint"
            )
        return best
    found = checkpoints(target / "checkpoints")
    if found:
        return found[-1]
    raise ModelError(
        f"{target} holds no model: no checkpoints/checkpoint-*.safetensors"
        + ("" if choice == "latest" else f" and no {BEST_MODEL}")
    )


def _named_checkpoint(run_dir: Path, checkpoint: Path) -> Path:
    for candidate in (checkpoint, run_dir / "checkpoints" / checkpoint):
        if candidate.is_file():
            return candidate
    raise ModelError(f"no checkpoint {checkpoint}, nor {run_dir / 'checkpoints' / checkpoint}")


def read_model(path: Path) -> SavedModel:
    """The model in ``path``; ModelError naming it when it is no apexrl model, or is damaged."""
    try:
        with safe_open(str(path), framework="pt") as reader:
            metadata = reader.metadata() or {}
    except (OSError, SafetensorError) as error:
        raise ModelError(
            f"{path} is not an apexrl model: not a readable safetensors file ({error})"
        ) from None
    if metadata.get("format", "").startswith(_CHECKPOINT_FORMATS):
        try:
            tensors, counters, config = load_checkpoint(path)
        except ValueError as error:
            raise ModelError(str(error)) from None
        return SavedModel(
            path, "checkpoint", config, tensors, counters.parameter_version, counters.updates, None
        )
    if "parameter_version" in metadata and "config" in metadata:
        try:
            tensors = load_file(str(path))
            version = int(metadata["parameter_version"])
            evaluated = float(metadata.get("mean_return", "nan"))
        except (OSError, SafetensorError, ValueError) as error:
            raise ModelError(f"cannot read the best model {path}: {error}") from None
        return SavedModel(
            path,
            "best model",
            metadata["config"],
            tensors,
            version,
            None,
            evaluated if math.isfinite(evaluated) else None,
        )
    raise ModelError(
        f"{path} is not an apexrl model: a safetensors file, but neither a run's {BEST_MODEL} nor a "
        "learner checkpoint (its metadata holds no apexrl config)"
    )


def model_config(model: SavedModel, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """The experiment the model was trained in, with ``overrides`` applied; ConfigError if invalid."""
    try:
        data = yaml.safe_load(model.config_yaml) if model.config_yaml else None
    except yaml.YAMLError as error:
        raise ModelError(f"the config in {model.path} is not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise ModelError(f"{model.path} holds no experiment config")
    source = f"the config in {model.path}" + (" with overrides" if overrides else "")
    return validate(ExperimentConfig, apply_overrides(data, overrides), source)


def environment_of(config: ExperimentConfig) -> EnvironmentSpec:
    """The observations and actions of the config's environment (created once to read them)."""
    environment = config.environment
    return describe_environment(
        environment.id, environment.options, environment.frame_stack, environment.atari_settings()
    )


def acting_policy(
    model: SavedModel, trained: ExperimentConfig, target: ExperimentConfig, environment: EnvironmentSpec
) -> ActingPolicy:
    """The model's policy, acting in the environment of ``target`` (whose spec is ``environment``).

    ``trained`` is the model's own config; ``target`` the same with other environment or
    general settings. ModelError when the model's observations or actions are not the
    environment's (naming both), or its tensors do not fit the networks its config describes.
    """
    same = trained.environment == target.environment
    trained_environment = environment if same else environment_of(trained)
    if not _fits(trained_environment, environment):
        raise ModelError(
            f"{model.path}: the model for {_describe(trained.environment.id, trained_environment)} "
            f"cannot act in {_describe(target.environment.id, environment)}"
        )
    family = family_named(trained.algorithm.name)
    family.check_environment(environment)
    policy = family.make_policy(trained.algorithm.network.to_wire(), environment)
    if model.kind == "checkpoint":
        parameters = _checkpoint_policy(model, trained, trained_environment)
    else:
        parameters = model.tensors
    try:
        policy.load_parameters(parameters)
    except (KeyError, RuntimeError) as error:
        raise _unfit(model, [str(error)]) from None
    return policy


def _checkpoint_policy(
    model: SavedModel, trained: ExperimentConfig, environment: EnvironmentSpec
) -> dict[str, torch.Tensor]:
    """The policy parameters of a checkpoint: its learner core rebuilt on the CPU and restored."""
    family = family_named(trained.algorithm.name)
    core = family.make_learner(trained.algorithm, environment, torch.device("cpu"), trained.general.seed)
    problems = tensor_differences(model.tensors, core.state_tensors())
    if problems:
        raise _unfit(model, problems)
    try:
        core.load_state_tensors(model.tensors, model.updates or 0)
    except (KeyError, RuntimeError) as error:  # what the check above cannot see (extra tensors)
        raise _unfit(model, [str(error)]) from None
    return core.policy_parameters()


def _unfit(model: SavedModel, problems: list[str], shown: int = 4) -> ModelError:
    lines = [" ".join(problem.split()) for problem in problems[:shown]]
    more = f"; and {len(problems) - shown} more" if len(problems) > shown else ""
    return ModelError(
        f"{model.kind} {model.path} does not fit the networks its config describes: {'; '.join(lines)}{more}"
    )


def _fits(trained: EnvironmentSpec, environment: EnvironmentSpec) -> bool:
    if (trained.observation_shape, trained.observation_dtype) != (
        environment.observation_shape,
        environment.observation_dtype,
    ):
        return False
    if isinstance(trained.actions, BoxActions) and isinstance(environment.actions, BoxActions):
        return trained.actions.shape == environment.actions.shape  # acting rescales to the bounds
    return trained.actions == environment.actions


def _describe(environment_id: str, spec: EnvironmentSpec) -> str:
    """``CartPole-v1 (observation (4,), 2 actions)``; the dtype only where it is not float32."""
    dtype = "" if spec.observation_dtype == "float32" else f" {spec.observation_dtype}"
    if isinstance(spec.actions, BoxActions):
        actions = f"continuous actions {spec.actions.shape}"
    else:
        actions = f"{spec.actions.count} actions"
    return f"{environment_id} (observation {spec.observation_shape}{dtype}, {actions})"
