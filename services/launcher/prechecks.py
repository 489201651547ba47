"""What ``apexrl run`` checks before it starts any process: the learner would stop on each of these.

The config itself is validated when it is loaded; here the experiment meets the machine:
its environment is created once, the algorithm's family checks the action space, the
learner's networks are built once on the CPU for the environment's observations, and a
``cuda`` device must exist. Each failure is one PrecheckError naming the problem.

``apexrl run`` runs it in its zygote, which has torch and gymnasium imported already;
importing this module imports neither.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from services.algorithms.experiment import ExperimentConfig

if TYPE_CHECKING:
    from services.common.environments import EnvironmentSpec


class PrecheckError(ValueError):
    """The experiment cannot run here; the message names the problem."""


def problem_with(config: ExperimentConfig) -> str | None:
    """What :func:`check_experiment` would raise, as its message; None when the experiment can run."""
    try:
        check_experiment(config)
    except PrecheckError as error:
        return str(error)
    return None


def check_experiment(config: ExperimentConfig) -> None:
    """PrecheckError naming the first problem that would stop the run's learner at start."""
    import torch  # noqa: PLC0415

    from services.algorithms.families import family_named  # noqa: PLC0415
    from services.learner.device import resolve_device  # noqa: PLC0415

    described = _describe(config)
    environment_id = config.environment.id
    family = family_named(config.algorithm.name)
    try:
        family.check_environment(described.spec)
    except ValueError as error:
        raise PrecheckError(
            f"algorithm {family.name} cannot train on {environment_id}, whose action space is "
            f"{described.action_space}: {error}"
        ) from None
    try:
        family.make_learner(config.algorithm, described.spec, torch.device("cpu"), config.general.seed)
    except (ValueError, RuntimeError) as error:
        spec = described.spec
        raise PrecheckError(
            f"the {family.name} networks do not fit the observations of {environment_id} "
            f"({spec.observation_dtype} of shape {spec.observation_shape}): {error}"
        ) from None
    if config.general.device == "cuda":  # "auto" falls back to the CPU
        try:
            resolve_device(config.general.device)
        except ValueError as error:
            raise PrecheckError(str(error)) from None


@dataclass(frozen=True)
class _Described:
    """The environment's spec, and its action space as gymnasium names it (``Discrete(2)``)."""

    spec: EnvironmentSpec
    action_space: str


def _describe(config: ExperimentConfig) -> _Described:
    """Creates the experiment's environment once, as the learner will, and describes it."""
    from services.common.environments import environment_spec, make_environment  # noqa: PLC0415

    environment = config.environment
    try:
        made = make_environment(
            environment.id, environment.options, environment.frame_stack, environment.atari_settings()
        )
    except ValueError as error:  # an unknown id, a missing dependency: already worded
        raise PrecheckError(str(error)) from None
    except Exception as error:  # options the environment does not take, or fails on
        raise PrecheckError(
            f"cannot create environment {environment.id!r} with options {environment.options}: "
            f"{type(error).__name__}: {error}"
        ) from None
    try:
        return _Described(environment_spec(made), str(made.action_space))
    except ValueError as error:
        raise PrecheckError(f"environment {environment.id}: {error}") from None
    finally:
        made.close()
