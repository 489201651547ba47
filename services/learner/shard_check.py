"""The learner's start-up check that the replay shards are the ones its experiment describes.

Shards are started apart from the learner (by the launcher, compose or an
orchestrator) with flags of their own; a shard whose flags disagree with the
experiment does not fail, it trains something else (another priority exponent)
or stalls. The learner asks each shard's GetInfo before it trains and refuses
to start on a disagreement, naming the fields.
"""

from __future__ import annotations

import logging
import math

import grpc

from apexrl.replay.v1 import replay_pb2, replay_pb2_grpc
from services.common.channels import create_channel
from services.common.experiment import OffPolicyConfig

logger = logging.getLogger(__name__)


class ShardMismatchError(ValueError):
    """Replay shards whose settings disagree with the experiment; the message names each one."""


def shard_infos(addresses: list[str], timeout_s: float) -> dict[str, replay_pb2.GetInfoResponse | None]:
    """Each shard's GetInfo, waiting up to ``timeout_s`` for it to come up; None for one that did not."""
    channels = {address: create_channel(address, default_timeout_s=timeout_s) for address in addresses}
    try:
        calls = {
            address: replay_pb2_grpc.ReplayServiceStub(channel).GetInfo.future(
                replay_pb2.GetInfoRequest(), timeout=timeout_s, wait_for_ready=True
            )
            for address, channel in channels.items()
        }
        infos: dict[str, replay_pb2.GetInfoResponse | None] = {}
        for address, call in calls.items():
            try:
                infos[address] = call.result()
            except grpc.RpcError as error:
                logger.warning("replay shard not checked address=%s code=%s", address, error.code().name)
                infos[address] = None
        return infos
    finally:
        for channel in channels.values():
            channel.close()


def disagreements(
    algorithm: OffPolicyConfig, infos: dict[str, replay_pb2.GetInfoResponse | None]
) -> list[str]:
    """What the shards that answered hold differently from the experiment."""
    problems = []
    for address, info in infos.items():
        if info is None:
            continue
        if not math.isclose(info.priority_exponent, algorithm.priority_exponent, abs_tol=1e-9):
            problems.append(
                f"shard {address} has priority_exponent {info.priority_exponent:g}, "
                f"the experiment's algorithm.priority_exponent is {algorithm.priority_exponent:g}"
            )
        if not math.isclose(info.samples_per_insert, algorithm.samples_per_insert, abs_tol=1e-9):
            problems.append(
                f"shard {address} has samples_per_insert {info.samples_per_insert:g}, "
                f"the experiment's algorithm.samples_per_insert is {algorithm.samples_per_insert:g}"
            )
    answered = [info for info in infos.values() if info is not None]
    if len(answered) < len(infos):
        return problems
    total = sum(info.capacity for info in answered)
    capacities = ", ".join(f"{address}: {info.capacity}" for address, info in infos.items() if info)
    if algorithm.min_replay_size > total:
        problems.append(
            f"the shards hold {total} items together ({capacities}), below the experiment's "
            f"algorithm.min_replay_size {algorithm.min_replay_size}: learning would never start"
        )
    elif not algorithm.replay_capacity <= total < algorithm.replay_capacity + len(infos):
        # Each shard holds replay_capacity / shards, rounded up. Another total trains, on a
        # replay of another size: worth a word, not a refusal.
        logger.warning(
            "the shards hold %d items together (%s), the experiment's algorithm.replay_capacity is %d",
            total,
            capacities,
            algorithm.replay_capacity,
        )
    return problems


def check_shards(addresses: list[str], algorithm: OffPolicyConfig, timeout_s: float) -> None:
    """Raises ShardMismatchError naming every disagreement; shards that do not answer are logged."""
    problems = disagreements(algorithm, shard_infos(addresses, timeout_s))
    if problems:
        raise ShardMismatchError(
            "the replay shards disagree with the experiment: "
            + "; ".join(problems)
            + ". Start the shards with the experiment's settings, or change the experiment"
        )
