"""A data-parallel learner group: N learner processes on torch.distributed (gloo on CPU, NCCL on GPU).

Rank 0 is the learner the system knows: it serves actors and the evaluator, publishes
parameters, checkpoints and logs. Every rank samples its own 1/N of the global batch
from the shards (with a seed of its own), sends the priorities of its items back to
their shards, and takes the same optimizer step: the cores average their gradients over
the group (services/algorithms/data_parallel.py).

Before every update the ranks agree whether to go on: one all-reduce of a flag, so that
a rank told to stop (SIGTERM, a spent budget) stops them all at the same update. A rank
that dies makes the others' next collective fail within ``timeout_s``: they stop (rank 0
checkpoints) and exit with an error naming it, never hang.
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass

import torch
import torch.distributed as dist
from safetensors.torch import load, save

from services.algorithms.data_parallel import GroupError
from services.algorithms.interface import LearnerCore

logger = logging.getLogger(__name__)

__all__ = ["GroupError", "GroupSettings", "LearnerGroup", "feed_seed", "group_device"]


@dataclass(frozen=True)
class GroupSettings:
    """This learner's place in a group of ``size`` learners that meet at ``address`` (rank 0's)."""

    size: int
    rank: int
    address: str  # host:port where rank 0 listens for the others
    timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if self.size < 1 or not 0 <= self.rank < self.size:
            raise ValueError(f"learner rank {self.rank} is not in a group of {self.size}")
        if self.size > 1 and not self.address:
            raise ValueError(f"a group of {self.size} learners needs --group-address HOST:PORT (rank 0's)")


def group_device(device: torch.device, group: GroupSettings | None) -> torch.device:
    """This rank's device: on CUDA, GPU ``rank mod count``, so ranks on one machine share them out."""
    if group is None or device.type != "cuda":
        return device
    return torch.device("cuda", group.rank % max(1, torch.cuda.device_count()))


def feed_seed(seed: int, group: GroupSettings | None) -> int:
    """Each rank samples with a seed of its own, so the shares are independent draws."""
    return seed if group is None else seed + 7_919 * group.rank


class LearnerGroup:
    """This process's membership: joined on construction, left by :meth:`leave`."""

    def __init__(self, settings: GroupSettings, device: torch.device) -> None:
        self.settings = settings
        # NCCL wants a GPU of its own per rank; ranks sharing a GPU fall back to gloo.
        own_gpus = device.type == "cuda" and torch.cuda.device_count() >= settings.size
        backend = "nccl" if own_gpus else "gloo"
        logger.info(
            "joining the learner group rank=%d size=%d address=%s backend=%s",
            settings.rank,
            settings.size,
            settings.address,
            backend,
        )
        try:
            dist.init_process_group(
                backend,
                init_method=f"tcp://{settings.address}",
                rank=settings.rank,
                world_size=settings.size,
                timeout=datetime.timedelta(seconds=settings.timeout_s),
            )
        except (RuntimeError, ValueError) as error:
            raise GroupError(f"cannot join the learner group at {settings.address}: {error}") from error
        self._device = device
        self.stopped = False
        logger.info("joined the learner group rank=%d size=%d", settings.rank, settings.size)

    @property
    def rank(self) -> int:
        return self.settings.rank

    def share_state(self, core: LearnerCore) -> None:
        """Every rank takes rank 0's networks, optimizer state, generators and update count.

        Rank 0's state (a checkpoint it resumed from has Adam moments a new core lacks) goes
        to the others as one safetensors file's bytes: its size first, then the bytes.
        """
        header = torch.zeros(2, dtype=torch.int64, device=self._device)
        data = torch.empty(0, dtype=torch.uint8, device=self._device)
        if self.rank == 0:
            tensors = {
                name: tensor.detach().cpu().contiguous() for name, tensor in core.state_tensors().items()
            }
            blob = save(tensors)
            data = torch.frombuffer(bytearray(blob), dtype=torch.uint8).to(self._device)
            header = torch.tensor([len(blob), core.updates], dtype=torch.int64, device=self._device)
        try:
            dist.broadcast(header, src=0)
            if self.rank != 0:
                data = torch.empty(int(header[0].item()), dtype=torch.uint8, device=self._device)
            dist.broadcast(data, src=0)
        except (RuntimeError, ValueError) as error:
            raise GroupError(f"the learner group failed sharing rank 0's state: {error}") from error
        if self.rank != 0:
            received = load(data.cpu().numpy().tobytes())
            core.load_state_tensors(received, int(header[1].item()))

    def agree_to_stop(self, stop: bool) -> bool:
        """True when any rank asks to stop; every rank calls it once per update."""
        flag = torch.tensor([1.0 if stop else 0.0], device=self._device)
        try:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        except (RuntimeError, ValueError) as error:
            raise GroupError(f"the learner group failed: {error}") from error
        self.stopped = bool(flag.item() > 0)
        return self.stopped

    def leave(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()
