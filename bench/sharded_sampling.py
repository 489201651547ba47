"""Batches/s of the learner's replay client over two shards: sampling over streams, asked one
batch ahead (as the feed process samples), against unary calls (as it sampled before), as JSON lines.

Usage: ``.venv/bin/python bench/sharded_sampling.py [--seconds 5] [--rounds 3]``.
Two real shards (W1 tables of 1,000,000 CartPole-shaped items each, full) serve one
``ShardedReplayClient`` in this process, which draws batches of 1,024 (the CartPole preset's
8 batches of 128 per request) with everything the learner's feed does per batch: the split,
the calls, and assembling the exact probabilities and importance weights. Each round
measures every way once, in turn; a figure is the median over rounds.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from dataclasses import dataclass

from bench.clients import fill_to_capacity
from bench.servers import start_replay
from bench.workloads import WORKLOADS
from services.common.logs import configure_logging
from services.common.sharded_replay import ShardedReplayClient

logger = logging.getLogger("bench.sharded_sampling")

BATCH = 1024
WARM_UP_BATCHES = 5


@dataclass(frozen=True)
class Way:
    name: str
    stream_samples: bool
    lookahead: int


REFERENCE = Way("unary", stream_samples=False, lookahead=0)
WAYS = (Way("stream", True, 0), Way("stream_lookahead_1", True, 1))


def items_per_s(addresses: list[str], way: Way, seconds: float) -> float:
    client = ShardedReplayClient(
        addresses, seed=0, stream_samples=way.stream_samples, lookahead=way.lookahead
    )
    try:
        for _ in range(WARM_UP_BATCHES):
            client.sample(BATCH, importance_exponent=0.5)
        batches, started = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - started) < seconds:
            client.sample(BATCH, importance_exponent=0.5)
            batches += 1
        return batches * BATCH / elapsed
    finally:
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0, help="Length of each measure.")
    parser.add_argument("--rounds", type=int, default=3)
    arguments = parser.parse_args()
    configure_logging("bench")
    workload = WORKLOADS["W1"]
    shards = [start_replay(workload) for _ in range(2)]
    try:
        for shard in shards:
            fill_to_capacity(shard.target, workload.name)
        addresses = [shard.target for shard in shards]
        figures: dict[str, list[float]] = {way.name: [] for way in (REFERENCE, *WAYS)}
        for round_index in range(arguments.rounds):
            for way in (REFERENCE, *WAYS):
                figures[way.name].append(items_per_s(addresses, way, arguments.seconds))
            logger.info(
                "round=%d items_per_s=%s", round_index, json.dumps({k: v[-1] for k, v in figures.items()})
            )
    finally:
        for shard in shards:
            shard.kill()
    reference = statistics.median(figures[REFERENCE.name])
    for way in WAYS:
        value = statistics.median(figures[way.name])
        logger.info("way=%s min=%.0f max=%.0f", way.name, min(figures[way.name]), max(figures[way.name]))
        print(
            json.dumps(
                {
                    "bench": "sharded_sampling",
                    "workload": "W1-2-shards",
                    "measure": f"items_per_s_{way.name}",
                    "value": value,
                    "unit": "items/s",
                    "reference": "unary_calls",
                    "reference_value": reference,
                    "ratio": value / reference,
                    "better": "higher",
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
