"""Batches onto the learner's device, and optimizer state to and from checkpoint tensors, for every family."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray


def to_device(array: NDArray[Any], device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A host array as a tensor on ``device`` (copied asynchronously where the device allows)."""
    return torch.from_numpy(np.asarray(array)).to(device, dtype=dtype, non_blocking=True)


def optimizer_tensors(optimizer: torch.optim.Optimizer, prefix: str) -> dict[str, torch.Tensor]:
    """An optimizer's per-parameter state as named tensors ``<prefix>.<index>.<name>``."""
    tensors = {}
    for index, state in optimizer.state_dict()["state"].items():
        for name, value in state.items():
            tensors[f"{prefix}.{index}.{name}"] = torch.as_tensor(value)
    return tensors


def load_optimizer_tensors(
    optimizer: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor], prefix: str
) -> None:
    """Restores :func:`optimizer_tensors`, keeping the optimizer's own hyperparameters."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith(prefix + "."):
            index, name = key.removeprefix(prefix + ".").split(".", 1)
            state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})


def prefixed(tensors: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors named ``<prefix>.<rest>``, keyed by ``rest``."""
    return {k.removeprefix(prefix + "."): v for k, v in tensors.items() if k.startswith(prefix + ".")}


def training_tensors(
    modules: Mapping[str, torch.nn.Module], optimizers: Mapping[str, torch.optim.Optimizer]
) -> dict[str, torch.Tensor]:
    """What a checkpoint holds of a learner core: each module's state as ``<name>.<key>``,
    each optimizer's as :func:`optimizer_tensors` under its name."""
    tensors: dict[str, torch.Tensor] = {}
    for name, module in modules.items():
        tensors.update({f"{name}.{key}": value for key, value in module.state_dict().items()})
    for name, optimizer in optimizers.items():
        tensors.update(optimizer_tensors(optimizer, name))
    return tensors


def load_training_tensors(
    tensors: Mapping[str, torch.Tensor],
    modules: Mapping[str, torch.nn.Module],
    optimizers: Mapping[str, torch.optim.Optimizer],
) -> dict[str, torch.Tensor]:
    """Restores :func:`training_tensors`; KeyError or RuntimeError if they do not fit.

    Works on copies, so that no restored optimizer state aliases tensors the caller keeps
    using (torch's optimizer restore shares them, Adam's step counter included); returns
    the copies for the caller's other parts.
    """
    owned = {name: value.detach().clone() for name, value in tensors.items()}
    for name, module in modules.items():
        module.load_state_dict(prefixed(owned, name))
    for name, optimizer in optimizers.items():
        load_optimizer_tensors(optimizer, owned, name)
    return owned
