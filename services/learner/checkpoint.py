"""Learner checkpoints: networks, optimizer moments, counters and the config in one safetensors file."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from services.common.atomic_files import write_atomically

logger = logging.getLogger(__name__)

FORMAT = "apexrl.learner.checkpoint/1"
_PREFIX = "checkpoint-"


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
    metadata = {"format": FORMAT, "counters": json.dumps(asdict(counters)), "config": config_yaml}
    write_atomically(path, lambda temporary: save_file(host, str(temporary), metadata=metadata))
    for old in checkpoints(directory)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def checkpoints(directory: Path) -> list[Path]:
    """Checkpoint files in ``directory``, oldest first."""
    return sorted(directory.glob(f"{_PREFIX}*.safetensors"))


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], TrainingCounters, str]:
    """Tensors, counters and config YAML of a checkpoint; ValueError when it is not one."""
    try:
        with safe_open(str(path), framework="pt") as reader:
            metadata = reader.metadata() or {}
            if metadata.get("format") != FORMAT:
                raise ValueError(f"{path} is not an apexrl learner checkpoint")
            tensors = {name: reader.get_tensor(name) for name in reader.keys()}  # noqa: SIM118
        counters = TrainingCounters(**json.loads(metadata["counters"]))
    except (OSError, SafetensorError, KeyError, TypeError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read learner checkpoint {path}: {error}") from error
    return tensors, counters, metadata.get("config", "")


def latest_checkpoint(directory: Path) -> tuple[dict[str, torch.Tensor], TrainingCounters, str] | None:
    """The newest readable checkpoint; a damaged newest file falls back to the one before it."""
    for path in reversed(checkpoints(directory)):
        try:
            return load_checkpoint(path)
        except ValueError as error:
            logger.error("skipping unreadable checkpoint path=%s error=%s", path, error)
    return None
