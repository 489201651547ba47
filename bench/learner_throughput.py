"""Learner updates per second sampling from 2 remote shards, against the same learner on an in-process buffer.

Usage: ``.venv/bin/python bench/learner_throughput.py [--seconds 20] [--runs 3] [--device cpu]``. Both sides
run the CartPole preset's learner (network, batch size, optimizer) on the same
stored transitions; the remote side samples and sends priorities back through the
replay feed process, exactly as ``apexrl learner`` does.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from services.algorithms.experiment import ExperimentConfig, load_experiment
from services.algorithms.families import family_named
from services.algorithms.interface import LearnerCore
from services.common.encoded import Column, decoded
from services.common.environments import describe_environment
from services.common.local_process import LocalProcess
from services.common.sharded_replay import ShardedReplayClient
from services.learner.device import resolve_device
from services.learner.feed_process import ReplayFeed
from services.replay.demo import cartpole_like_transitions
from services.replay.rate_limiter import RateLimiterSettings
from services.replay.table import PrioritizedTable

ITEMS_PER_SHARD = 50_000
INSERT_BATCH = 1_000


def learner(config: ExperimentConfig) -> LearnerCore:
    torch.set_num_threads(config.general.learner_threads)
    environment = describe_environment(
        config.environment.id,
        config.environment.options,
        config.environment.frame_stack,
        config.environment.atari_settings(),
    )
    family = family_named(config.algorithm.name)
    return family.make_learner(config.algorithm, environment, resolve_device(config.general.device), seed=0)


def steps_per_s(step: Callable[[], None], seconds: float, warm_up: int = 20) -> float:
    """Calls of ``step`` per second over ``seconds``, after ``warm_up`` untimed calls."""
    for _ in range(warm_up):
        step()
    calls, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        step()
        calls += 1
    return calls / elapsed


def remote_updates_per_s(config: ExperimentConfig, addresses: list[str], seconds: float) -> float:
    model = learner(config)
    feed = ReplayFeed(
        addresses,
        config.algorithm.batch_size,
        model.importance_exponent(),
        1,
        seed=0,
        batches_per_request=config.algorithm.batches_per_sample_request,
    ).start()

    def step() -> None:
        batch = feed.get(timeout_s=30.0)
        assert batch is not None, "no batch from the shards"
        result = model.update(batch.columns, batch.importance_weights)
        feed.release(batch, result.priorities, model.importance_exponent())

    try:
        return steps_per_s(step, seconds)
    finally:
        feed.stop()


def local_updates_per_s(config: ExperimentConfig, table: PrioritizedTable, seconds: float) -> float:
    model = learner(config)
    batch_size = config.algorithm.batch_size

    def step() -> None:
        items = table.sample(batch_size, max_wait_s=0)
        size = table.size
        probability = items.priority_masses / items.total_priority_mass
        weights = (size * probability) ** -model.importance_exponent()
        result = model.update(decoded(items.columns), (weights / weights.max()).astype(np.float32))
        table.update_priorities(items.keys, result.priorities)

    return steps_per_s(step, seconds)


@dataclass(frozen=True)
class Stored:
    """What both sides hold: the same transitions, raw in process, as actors send them remotely."""

    raw: list[dict[str, NDArray[Any]]]
    sent: list[Mapping[str, Column]]
    priorities: list[NDArray[np.float64]]
    items_per_shard: int


def cartpole_data(rng: np.random.Generator) -> Stored:
    raw = [cartpole_like_transitions(rng, INSERT_BATCH) for _ in range(2 * ITEMS_PER_SHARD // INSERT_BATCH)]
    priorities = [rng.uniform(0.01, 1.0, INSERT_BATCH) for _ in raw]
    return Stored(raw, list(raw), priorities, ITEMS_PER_SHARD)


@contextmanager
def filled_shards(data: Stored, logs: Path) -> Iterator[list[str]]:
    """Two replay shard processes holding ``data`` as actors send it; their addresses, while they run."""
    capacity = str(data.items_per_shard)
    shards = [
        LocalProcess(["replay", "--port", "0", "--capacity", capacity], logs / f"replay-{k}.log")
        for k in range(2)
    ]
    try:
        addresses = [shard.wait_for_address() for shard in shards]
        client = ShardedReplayClient(addresses)
        for sent, values in zip(data.sent, data.priorities, strict=True):
            client.insert(sent, values)
        client.close()
        yield addresses
    finally:
        for shard in shards:
            shard.stop()


def measure(preset: str, device: str, runs: int, seconds: float, data: Stored) -> tuple[float, float]:
    """Median updates/s of the preset's learner over remote shards and over an in-process table."""
    config = load_experiment(preset, [f"general.device={device}"])
    table = PrioritizedTable(
        2 * data.items_per_shard, config.algorithm.priority_exponent, RateLimiterSettings(), seed=0
    )
    for columns, values in zip(data.raw, data.priorities, strict=True):
        table.insert(columns, values, max_wait_s=0)
    with filled_shards(data, Path(tempfile.mkdtemp(prefix="bench-learner-"))) as addresses:
        remote, local = [], []
        for _ in range(runs):
            remote.append(remote_updates_per_s(config, addresses, seconds))
            local.append(local_updates_per_s(config, table, seconds))
    print(f"preset={preset} runs remote={remote} local={local}", file=sys.stderr)
    return statistics.median(remote), statistics.median(local)


def report(workload: str, device: str, value: float, reference: float) -> None:
    print(
        json.dumps(
            {
                "bench": "learner_throughput",
                "workload": workload,
                "measure": "updates_per_s_2_remote_shards",
                "device": device,
                "value": value,
                "unit": "updates/s",
                "reference": "in_process_buffer",
                "reference_value": reference,
                "ratio": value / reference,
                "better": "higher",
            }
        ),
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="the learner's device: cpu, cuda or auto")
    arguments = parser.parse_args()
    data = cartpole_data(np.random.default_rng(0))
    value, reference = measure("cartpole", arguments.device, arguments.runs, arguments.seconds, data)
    report("cartpole", arguments.device, value, reference)


if __name__ == "__main__":
    main()
