"""Data-parallel learners: what a learner core does differently in a group of N (torch.distributed).

Each of the N learners takes 1/N of the global batch. After every backward pass a core
averages its gradients over the group, so every learner takes the same optimizer step:
the one a single learner would take on the whole batch, because every loss is a mean
over the batch and the shares are equal. Noise a loss draws per item (TD3's target
smoothing, SAC's sampled actions) is drawn for the whole batch and each learner takes
its own rows, so the group consumes each generator exactly as a single learner does.

Outside a group (no process group initialised, or one of size 1) both are the plain
single-learner operations.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist


class GroupError(RuntimeError):
    """The learner group cannot go on: a rank died or stopped answering (a collective failed)."""


def group_size_and_rank() -> tuple[int, int]:
    """(N, this learner's rank) of the learner group; (1, 0) outside one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def average_gradients(parameters: Iterable[torch.Tensor]) -> None:
    """Replaces each gradient with its mean over the group: one all-reduce of them all, flattened."""
    size, _ = group_size_and_rank()
    if size == 1:
        return
    gradients = [parameter.grad for parameter in parameters if parameter.grad is not None]
    if not gradients:
        return
    flat = torch.cat([gradient.reshape(-1) for gradient in gradients])
    try:
        dist.all_reduce(flat)
    except RuntimeError as error:  # gloo and NCCL raise it for a peer gone or a timeout
        raise GroupError(f"the learner group failed averaging gradients: {error}") from error
    flat.div_(size)
    offset = 0
    for gradient in gradients:
        count = gradient.numel()
        gradient.copy_(flat[offset : offset + count].view_as(gradient))
        offset += count


def batch_noise(
    shape: torch.Size, generator: torch.Generator, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """Standard normal noise for this learner's rows of the group's batch (``shape[0]`` of them).

    The generator draws the noise of all N shares, in rank order, and this learner keeps its
    own: the same numbers a single learner would draw for the whole batch.
    """
    size, rank = group_size_and_rank()
    rows = shape[0]
    noise = torch.randn((size * rows, *shape[1:]), generator=generator, dtype=dtype, device=device)
    return noise[rank * rows : (rank + 1) * rows]
