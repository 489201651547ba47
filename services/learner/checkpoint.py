"""Learner checkpoints: networks, optimizer moments, counters and the config in one safetensors file."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from services.common.atomic_files import write_atomically

logger = logging.getLogger(__name__)

FORMAT = "apexrl.learner.checkpoint/2"
# Written before checkpoints carried a digest: read as they are, unchecked.
_UNCHECKED_FORMAT = "apexrl.learner.checkpoint/1"
_PREFIX = "checkpoint-"
# The settings a checkpoint's tensors depend on: with any of them changed, they are another
# model's (other shapes, or the same shapes meaning something else).
MODEL_SETTINGS = (
    "algorithm.name",
    "algorithm.network",
    "environment.id",
    "environment.frame_stack",
    "environment.atari",
)


class CheckpointMismatchError(ValueError):
    """A checkpoint that does not fit the configured experiment; the message names each difference."""


class NoReadableCheckpointError(ValueError):
    """Checkpoints are there but none can be read; the message names each file and what is wrong."""


@dataclass(frozen=True)
class TrainingCounters:
    """What a resumed learner continues from."""

    updates: int = 0
    parameter_version: int = 0
    environment_steps: int = 0
    elapsed_s: float = 0.0
    next_actor_id: int = 1
    best_mean_return: float | None = None


def save_checkpoint(
    directory: Path,
    tensors: dict[str, torch.Tensor],
    counters: TrainingCounters,
    config_yaml: str,
    keep: int = 3,
) -> Path:
    """Writes ``checkpoint-<updates>.safetensors`` atomically and keeps the newest ``keep`` files."""
    path = directory / f"{_PREFIX}{counters.updates:012d}.safetensors"
    host = {name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()}
    counters_json = json.dumps(asdict(counters))
    metadata = {
        "format": FORMAT,
        "counters": counters_json,
        "config": config_yaml,
        "sha256": _digest(host, counters_json, config_yaml),
    }
    write_atomically(path, lambda temporary: save_file(host, str(temporary), metadata=metadata))
    for old in checkpoints(directory)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def checkpoints(directory: Path) -> list[Path]:
    """Checkpoint files in ``directory``, oldest first."""
    return sorted(directory.glob(f"{_PREFIX}*.safetensors"))


def _digest(tensors: Mapping[str, torch.Tensor], counters_json: str, config_yaml: str) -> str:
    """SHA-256 of everything a checkpoint restores: each tensor's name, dtype, shape and bytes,
    the counters and the config. safetensors checks a file's layout but not its contents."""
    digest = hashlib.sha256()

    def add(part: bytes) -> None:
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)

    add(counters_json.encode())
    add(config_yaml.encode())
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        add(f"{name}:{tensor.dtype}:{list(tensor.shape)}".encode())
        add(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], TrainingCounters, str]:
    """Tensors, counters and config YAML of a checkpoint; ValueError when it is not one, or is damaged.

    Nothing is returned from a file whose contents do not match the digest it was written with.
    """
    try:
        with safe_open(str(path), framework="pt") as reader:
            metadata = reader.metadata() or {}
            if metadata.get("format") not in (FORMAT, _UNCHECKED_FORMAT):
                raise ValueError(f"{path} is not an apexrl learner checkpoint")
            tensors = {name: reader.get_tensor(name) for name in reader.keys()}  # noqa: SIM118
        config = metadata.get("config", "")
        if metadata["format"] == FORMAT and metadata["sha256"] != _digest(
            tensors, metadata["counters"], config
        ):
            raise ValueError(f"learner checkpoint {path} is damaged: its contents do not match its digest")
        counters = TrainingCounters(**json.loads(metadata["counters"]))
    except (OSError, SafetensorError, KeyError, TypeError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read learner checkpoint {path}: {error}") from error
    return tensors, counters, config


@dataclass(frozen=True)
class Restored:
    """A checkpoint read back: where it was, its tensors, counters and config YAML."""

    path: Path
    tensors: dict[str, torch.Tensor]
    counters: TrainingCounters
    config_yaml: str


def latest_checkpoint(directory: Path) -> Restored | None:
    """The newest readable checkpoint; a damaged newest file falls back to the one before it.

    None when there is no checkpoint. When there are some but none is readable,
    NoReadableCheckpointError naming each: starting afresh would silently lose the run,
    and its new checkpoints, named by smaller update counts, would be pruned before the
    damaged ones, each as soon as it was written.
    """
    found = checkpoints(directory)
    problems = []
    for path in reversed(found):
        try:
            return Restored(path, *load_checkpoint(path))
        except ValueError as error:
            logger.error("skipping unreadable checkpoint path=%s error=%s", path, error)
            problems.append(str(error))
    if found:
        raise NoReadableCheckpointError(
            f"none of the {len(found)} checkpoints in {directory} is readable: {'; '.join(problems)}. "
            "Move them away to start this run folder afresh"
        )
    return None


def _leaves(value: Any, prefix: str) -> dict[str, Any]:
    if isinstance(value, dict):
        leaves: dict[str, Any] = {}
        for key, item in value.items():
            leaves.update(_leaves(item, f"{prefix}.{key}"))
        return leaves or {prefix: {}}
    return {prefix: value}


def _setting(config: Mapping[str, Any], dotted: str) -> Any:
    value: Any = config
    for key in dotted.split("."):
        value = value.get(key) if isinstance(value, Mapping) else None
    return value


def setting_differences(stored_yaml: str, current: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """The differences between a checkpoint's config and ``current`` (a config dumped as JSON data):
    those in :data:`MODEL_SETTINGS`, then the others (which a resumed run may change)."""
    stored = yaml.safe_load(stored_yaml) if stored_yaml else None
    if not isinstance(stored, dict):
        return [], []
    before, now = _leaves(stored, ""), _leaves(dict(current), "")
    matter: list[str] = []
    other: list[str] = []
    for key in sorted(before.keys() | now.keys()):
        if before.get(key) == now.get(key):
            continue
        name = key.removeprefix(".")
        was, wanted = before.get(key, "(absent)"), now.get(key, "(absent)")
        line = f"{name} is {was!r} in the checkpoint, {wanted!r} now"
        model = any(name == setting or name.startswith(setting + ".") for setting in MODEL_SETTINGS)
        (matter if model else other).append(line)
    return matter, other


def tensor_differences(stored: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> list[str]:
    """Tensors ``expected`` names that ``stored`` lacks or holds in another shape or dtype."""
    problems = []
    for name, tensor in expected.items():
        held = stored.get(name)
        if held is None:
            problems.append(f"tensor {name} is missing")
        elif held.shape != tensor.shape or held.dtype != tensor.dtype:
            problems.append(
                f"tensor {name} is {tuple(held.shape)} {held.dtype} in the checkpoint, "
                f"{tuple(tensor.shape)} {tensor.dtype} now"
            )
    return problems


def mismatch(path: Path, problems: list[str], shown: int = 6) -> CheckpointMismatchError:
    listed = "; ".join(problems[:shown])
    if len(problems) > shown:
        listed += f"; and {len(problems) - shown} more"
    return CheckpointMismatchError(
        f"checkpoint {path} does not fit this experiment: {listed}. Resume with the settings it was "
        f"trained with, or start a new run folder"
    )
