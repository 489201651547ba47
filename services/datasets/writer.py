"""Minari datasets written an episode at a time: one Parquet file per episode, the metadata kept current.

A dataset is the folder Minari itself reads: ``DIR/data/metadata.json`` for the dataset,
and ``DIR/data/<episode id>/`` with the episode's ``part-0.parquet`` and its own
``metadata.json``. Files never grow after they are written, and each holds one episode,
so a file is at most one episode long (the environment's step limit bounds it). After
each episode the dataset's metadata counts it, so a writer stopped at any point leaves a
dataset that loads with every episode written before.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import gymnasium as gym

from services.datasets.episodes import RecordedEpisode

DATA_FOLDER = "data"
# Minari's own rule for dataset ids: (namespace/)name-v(version), namespaces nested with "/".
_DATASET_ID = re.compile(r"^(?:[\w-]+/)*[\w-]+-v\d+$")
_INSTALL_HINT = "pip install 'apexrl[datasets]' (Minari with its Parquet storage)"


class DatasetError(ValueError):
    """A dataset that cannot be written where or as asked; the message says why."""


def require_minari() -> None:
    """DatasetError naming the extra to install where Minari or pyarrow is missing."""
    for module in ("minari", "pyarrow"):
        try:
            __import__(module)
        except ImportError:
            raise DatasetError(f"writing Minari datasets needs {module}: {_INSTALL_HINT}") from None


def minari_root() -> Path:
    """Where ``minari.load_dataset`` looks: ``MINARI_DATASETS_PATH``, else ``~/.minari/datasets``."""
    configured = os.environ.get("MINARI_DATASETS_PATH")
    return Path(configured) if configured else Path.home() / ".minari" / "datasets"


def default_dataset_id(path: Path, environment_id: str) -> str:
    """The id of a dataset written to ``path``.

    Inside Minari's datasets folder, its path there, so that ``minari.load_dataset`` finds
    it by that id; elsewhere ``apexrl/<environment>/<folder name>``; ``-v0`` appended where
    the name has no version.
    """
    try:
        dataset_id = path.resolve().relative_to(minari_root().resolve()).as_posix()
    except ValueError:
        environment = environment_id.rpartition("/")[2].rsplit("-v", 1)[0].lower()
        dataset_id = f"apexrl/{environment}/{path.name}"
    return dataset_id if re.search(r"-v\d+$", dataset_id) else dataset_id + "-v0"


def check_dataset_id(dataset_id: str) -> str:
    if not _DATASET_ID.fullmatch(dataset_id):
        raise DatasetError(
            f"dataset id {dataset_id!r} is not a Minari id: (namespace/)name-v(version), for example "
            "apexrl/cartpole/expert-v0"
        )
    return dataset_id


def installed_versions(*packages: str) -> list[str]:
    """``package==version`` of each installed package, for the dataset's requirements."""
    found = []
    for package in packages:
        try:
            found.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            continue
    return found


class DatasetWriter:
    """A new Minari dataset at ``path``, for episodes of ``environment``; refuses a path that exists.

    ``metadata`` goes into the dataset's metadata as it is: Minari's own keys
    (``algorithm_name``, ``author``, ``description``, ``requirements``, ...) and any other,
    such as the provenance of the policy that played.
    """

    def __init__(
        self, path: Path, dataset_id: str, environment: gym.Env[Any, Any], metadata: Mapping[str, Any]
    ) -> None:
        require_minari()
        from minari.dataset.minari_storage import MinariStorage  # noqa: PLC0415 (optional)

        check_dataset_id(dataset_id)
        if path.exists():
            raise DatasetError(
                f"{path} exists: a dataset is never written over or into another; "
                "name a path that does not exist yet"
            )
        if not path.parent.is_dir():
            raise DatasetError(f"{path.parent} is not a folder: cannot write the dataset {path.name} there")
        self.path = path
        self.dataset_id = dataset_id
        data = path / DATA_FOLDER
        data.mkdir(parents=True)
        spec = environment.spec
        if spec is not None:
            try:
                spec.to_json()
            except (TypeError, ValueError):  # a wrapper gymnasium cannot describe: spaces only
                spec = None
        # Lossless: Minari's default JPEG-encodes image observations.
        self._storage = MinariStorage.new(
            data,
            observation_space=environment.observation_space,
            action_space=environment.action_space,
            env_spec=spec,
            data_format="parquet",
            jpeg_encoding=False,
        )
        from minari import __version__ as minari_version  # noqa: PLC0415 (optional)

        self._storage.update_metadata(
            {"dataset_id": dataset_id, "minari_version": minari_version, **metadata}
        )
        self.episodes = 0
        self.steps = 0

    def write(self, episode: RecordedEpisode, metadata: Mapping[str, Any] | None = None) -> int:
        """Adds ``episode`` (with its own ``metadata``) as the next episode; returns its id."""
        from minari.data_collector.episode_buffer import EpisodeBuffer  # noqa: PLC0415 (optional)

        episode_id = self.episodes
        self._storage.update_episodes(
            [
                EpisodeBuffer(
                    id=episode_id,
                    seed=episode.seed,
                    observations=episode.observations,
                    actions=episode.actions,
                    rewards=list(episode.rewards),
                    terminations=list(episode.terminations),
                    truncations=list(episode.truncations),
                )
            ]
        )
        if metadata:
            self._storage.update_episode_metadata([dict(metadata)], [episode_id])
        self.episodes += 1
        self.steps += episode.steps
        return episode_id
