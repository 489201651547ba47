"""``apexrl collect``: episodes of a saved policy written as a Minari dataset, with its provenance."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from services.algorithms.families import family_named
from services.algorithms.interface import ExplorationSetting
from services.datasets.writer import (
    DatasetError,
    DatasetWriter,
    check_dataset_id,
    default_dataset_id,
    installed_versions,
    require_minari,
)
from services.evaluation.episodes import Episode, play_episodes
from services.evaluation.evaluate import EvaluationRequest, Prepared, make_config_environment, prepare
from services.evaluation.models import ModelChoice

# Episodes played in lockstep at a time: one forward pass serves them all, and their
# steps are held in memory until they end.
LOCKSTEP_EPISODES = 16


@dataclass(frozen=True)
class CollectRequest:
    """What ``apexrl collect`` was asked for."""

    target: Path  # a run folder or a model file
    dataset: Path  # the new dataset's folder; must not exist
    dataset_id: str | None = None  # None: default_dataset_id
    model: ModelChoice | None = None
    checkpoint: Path | None = None
    episodes: int = 10
    seed: int | None = None  # of the first episode; None: the evaluator's
    exploration: float | None = None  # the family's knob (epsilon, noise, temperature); None: deterministic
    max_steps: int | None = None
    author: str | None = None
    description: str | None = None
    code_permalink: str | None = None
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class CollectReport:
    prepared: Prepared
    dataset: Path
    dataset_id: str
    episodes: list[Episode]

    @property
    def steps(self) -> int:
        return sum(episode.length for episode in self.episodes)


def collect(
    request: CollectRequest, on_episodes: Callable[[Sequence[Episode]], None] | None = None
) -> CollectReport:
    """Plays ``request.episodes`` with the saved policy and writes them, one Parquet file each.

    Everything is checked before the first episode: the dataset path, the model, the
    environment and the dataset id. ValueError (DatasetError, ModelError, ConfigError) says
    what does not fit; nothing is written then.
    """
    require_minari()
    if request.dataset.exists():
        raise DatasetError(
            f"{request.dataset} exists: name a path for the new dataset that does not exist yet"
        )
    prepared = prepare(
        EvaluationRequest(
            target=request.target,
            model=request.model,
            checkpoint=request.checkpoint,
            episodes=request.episodes,
            seed=request.seed,
            max_steps=request.max_steps,
            overrides=request.overrides,
        )
    )
    config = prepared.config
    dataset_id = check_dataset_id(
        request.dataset_id or default_dataset_id(request.dataset, config.environment.id)
    )
    family = family_named(config.algorithm.name)
    exploration = None
    if request.exploration is not None:
        exploration = ExplorationSetting(family.exploration_kind, request.exploration)
    torch.set_num_threads(1)
    probe = make_config_environment(config, None)
    try:
        writer = DatasetWriter(request.dataset, dataset_id, probe, _metadata(request, prepared, exploration))
    finally:
        probe.close()
    act = None
    if exploration is not None:
        rng = np.random.default_rng(prepared.seeds[0])
        policy, setting = prepared.policy, exploration

        def act(observations: NDArray[Any]) -> NDArray[Any]:
            return policy.act(observations, setting, rng)

    played: list[Episode] = []
    seeds = prepared.seeds
    for first in range(0, len(seeds), LOCKSTEP_EPISODES):
        group = seeds[first : first + LOCKSTEP_EPISODES]
        environments = [make_config_environment(config, None) for _ in group]
        try:
            episodes = play_episodes(
                prepared.policy, environments, group, request.max_steps, act=act, record=True
            )
        finally:
            for environment in environments:
                environment.close()
        for episode in episodes:
            assert episode.recorded is not None
            writer.write(episode.recorded, {"seed": episode.seed, "return": episode.episode_return})
        played.extend(episodes)
        if on_episodes is not None:
            on_episodes(episodes)
    return CollectReport(prepared, request.dataset, dataset_id, played)


def _metadata(
    request: CollectRequest, prepared: Prepared, exploration: ExplorationSetting | None
) -> dict[str, Any]:
    """Minari's descriptive keys, and ``apexrl``: where the policy came from and how it played."""
    model = prepared.model
    config = prepared.config
    how = "deterministic" if exploration is None else f"{exploration.kind} {exploration.value:g}"
    version = model.parameter_version
    played = f"played by the {model.kind} {model.path.name} (parameter version {version}, {how})"
    metadata: dict[str, Any] = {
        "algorithm_name": f"apexrl {config.algorithm.name}",
        "description": request.description
        or f"{len(prepared.seeds)} episodes of {config.environment.id} {played}, written by apexrl collect",
        "requirements": installed_versions("apexrl", "gymnasium", "ale-py"),
        "apexrl": {
            "source": "policy",
            "model": str(model.path.resolve()),
            "model_sha256": _sha256(model.path),
            "model_kind": model.kind,
            "parameter_version": model.parameter_version,
            "updates": model.updates,
            "training_evaluation_return": model.evaluated_return,
            "algorithm": config.algorithm.name,
            "exploration": None
            if exploration is None
            else {"kind": exploration.kind, "value": exploration.value},
            "seeds": prepared.seeds,
            "max_steps": request.max_steps,
            "config": model.config_yaml,
        },
    }
    if request.author:
        metadata["author"] = {request.author}
    if request.code_permalink:
        metadata["code_permalink"] = request.code_permalink
    return metadata


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
