"""The seam between the services and an algorithm family: the few types the machinery knows.

Learner, trainer, feed, actor, evaluator and registry speak only these Protocols; each
family under ``services/algorithms/<name>/`` implements them, and ``families.py`` maps
names to families. A new algorithm is a new folder and a line there.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeAlias

import numpy as np
from numpy.typing import NDArray

from apexrl.learner.v1 import learner_pb2

if TYPE_CHECKING:  # torch and gymnasium stay out of light importers (the launcher, the configs)
    import torch

    from services.common.environments import EnvironmentSpec

Columns: TypeAlias = Mapping[str, NDArray[Any]]
Parameters: TypeAlias = "Mapping[str, torch.Tensor]"
ExplorationKind = Literal["epsilon", "action_noise_scale", "policy_temperature"]

# What an actor's policy computed while acting, carried with each transition for its
# initial priority (never sent): ``acted.NAME`` as recorded at its observation,
# ``bootstrap.NAME`` at its next observation.
ACTED = "acted."
BOOTSTRAP = "bootstrap."


def recorded(columns: Columns, prefix: str) -> dict[str, NDArray[Any]]:
    """The recorded columns under ``prefix`` (``ACTED`` or ``BOOTSTRAP``), by their own names."""
    return {name.removeprefix(prefix): values for name, values in columns.items() if name.startswith(prefix)}


def wire_columns(columns: Columns) -> dict[str, NDArray[Any]]:
    """The transition's own columns, as the replay stores them: the recorded ones left out."""
    return {name: values for name, values in columns.items() if not name.startswith((ACTED, BOOTSTRAP))}


@dataclass(frozen=True)
class ExplorationSetting:
    """How one actor explores: its family's knob (epsilon, noise scale, temperature) and its value."""

    kind: ExplorationKind
    value: float


@dataclass(frozen=True)
class UpdateResult:
    """One update's outcome: the loss the priorities come from, and the batch's new priorities.

    ``diagnostics`` are the family's other training signals (TD3's and SAC's policy loss,
    SAC's temperature ...) as detached 0-dim tensors: the learner reads them only when it
    logs a row, so an update never waits on the device for them.
    """

    loss: float
    priorities: NDArray[np.float64]
    diagnostics: Mapping[str, torch.Tensor] = field(default_factory=dict)


class LearnerCore(Protocol):
    """The trainable side of an algorithm: networks, optimizers and one prioritized update."""

    updates: int

    def update(self, columns: Columns, importance_weights: NDArray[np.float32]) -> UpdateResult:
        """One gradient step on a sampled batch, weighted per item; the items' new priorities."""
        ...

    def importance_exponent(self) -> float:
        """beta of the importance weights at the current update."""
        ...

    def actor_parameters(self) -> dict[str, torch.Tensor]:
        """What actors need to act and compute initial priorities (published each version)."""
        ...

    def policy_parameters(self) -> dict[str, torch.Tensor]:
        """What acting alone needs (for parameter-pull clients that only serve actions)."""
        ...

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Everything a checkpoint needs to resume training exactly."""
        ...

    def load_state_tensors(self, tensors: Parameters, updates: int) -> None:
        """Restores :meth:`state_tensors`; KeyError or RuntimeError if they do not fit."""
        ...


class ActingPolicy(Protocol):
    """The actor's side: acts with its local copy of the parameters, and scores its experience."""

    def load_parameters(self, parameters: Parameters) -> None:
        """Adopts a pulled parameter version (actor parameters or policy alone)."""
        ...

    def act(
        self, observations: NDArray[Any], exploration: ExplorationSetting, rng: np.random.Generator
    ) -> NDArray[Any]:
        """Exploring actions for a batch of observations."""
        ...

    def act_deterministic(self, observations: NDArray[Any]) -> NDArray[Any]:
        """The evaluation actions: greedy, noise-free or the mean, by family."""
        ...

    def act_recorded(
        self, observations: NDArray[Any], exploration: ExplorationSetting, rng: np.random.Generator
    ) -> tuple[NDArray[Any], dict[str, NDArray[Any]]]:
        """:meth:`act`, and what acting computed that the initial priorities reuse, one row per
        observation (Ape-X DQN: the chosen action's Q-value and the state's value)."""
        ...

    def record(self, observations: NDArray[Any]) -> dict[str, NDArray[Any]]:
        """What :meth:`act_recorded` records, for observations never acted on: a truncated
        episode's last, or the newest ones when an actor stops."""
        ...

    def initial_priorities(self, columns: Columns) -> NDArray[np.float64]:
        """|TD error| of n-step transitions under the actor's own copy, as Ape-X actors compute them.

        Where ``columns`` hold what acting recorded (``ACTED`` and ``BOOTSTRAP`` columns),
        the family uses it instead of computing it again: Ape-X DQN needs no forward pass
        then, TD3 and SAC no policy pass.
        """
        ...


class AlgorithmFamily(Protocol):
    """An algorithm as the services see it: its config model's name, wire code, and factories.

    ``config`` arguments are the family's own config model (the ``algorithm`` section,
    which also holds the wire codec of its network settings); ``network`` is that wire
    network spec, as actors receive it.
    """

    @property
    def name(self) -> str: ...

    @property
    def wire_algorithm(self) -> learner_pb2.Algorithm.ValueType: ...

    @property
    def exploration_kind(self) -> ExplorationKind: ...

    def check_environment(self, environment: EnvironmentSpec) -> None:
        """ValueError naming the problem when the family cannot train on this environment."""
        ...

    def exploration(self, config: Any, rung: int) -> ExplorationSetting:
        """The setting of ladder rung ``rung`` (0, 1, 2, ... spread well for any count)."""
        ...

    def make_learner(
        self, config: Any, environment: EnvironmentSpec, device: torch.device, seed: int
    ) -> LearnerCore:
        """A fresh learner core whose initial parameters depend on ``seed`` alone."""
        ...

    def make_policy(self, network: learner_pb2.NetworkSpec, environment: EnvironmentSpec) -> ActingPolicy:
        """An actor's policy for the wire network spec; ValueError if the spec is not valid."""
        ...
