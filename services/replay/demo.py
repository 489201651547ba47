"""``apexrl demo``: local replay shards fed by a writer and drained by a prioritized sampler, live."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from rich.console import Console
from rich.live import Live
from rich.table import Table

from services.common.local_process import LocalProcess
from services.common.sharded_replay import ReplayUnavailableError, ShardedReplayClient


def cartpole_like_transitions(rng: np.random.Generator, count: int) -> dict[str, NDArray[np.generic]]:
    """Random transitions with CartPole's signature (3-step discount), for demos and benchmarks."""
    observation = rng.standard_normal((count, 4)).astype(np.float32)
    return {
        "observation": observation,
        "action": rng.integers(0, 2, count),
        "reward": np.ones(count, dtype=np.float32),
        "discount": np.full(count, 0.99**3, dtype=np.float32),
        "next_observation": observation + 0.01,
    }


def _table(elapsed_s: float, inserted: int, sampled: int, client: ShardedReplayClient, size: int) -> Table:
    table = Table(title="apexrl replay demo", show_header=False)
    rate = 1 / max(elapsed_s, 1e-9)
    table.add_row("elapsed", f"{elapsed_s:6.1f} s")
    table.add_row("shards up", f"{client.shards_up()} / {client.num_shards}")
    table.add_row("replay size", f"{size:,}")
    table.add_row("inserted", f"{inserted:,} ({inserted * rate:,.0f}/s)")
    table.add_row("sampled + priorities updated", f"{sampled:,} ({sampled * rate:,.0f}/s)")
    return table


def run_demo(shards: int, seconds: float, capacity: int, run_dir: Path, console: Console) -> dict[str, float]:
    """Runs the demo and returns its final rates."""
    processes = [
        LocalProcess(
            ["replay", "--port", "0", "--capacity", str(capacity), "--seed", str(index)],
            run_dir / f"replay-{index}.log",
        )
        for index in range(shards)
    ]
    # A writer that does nothing else: its inserts go over a stream per shard (docs/replay.md).
    client = ShardedReplayClient([p.wait_for_address() for p in processes], seed=0, stream_inserts=True)
    rng = np.random.default_rng(0)
    inserted = sampled = size = 0
    started = time.perf_counter()
    try:
        with Live(console=console, refresh_per_second=4, transient=not console.is_terminal) as live:
            while (elapsed := time.perf_counter() - started) < seconds:
                client.insert(cartpole_like_transitions(rng, 1000), rng.uniform(0.01, 1.0, 1000))
                inserted += 1000
                try:
                    sample = client.sample(256, importance_exponent=0.4)
                except ReplayUnavailableError:
                    continue
                # New priorities as a learner would send them: |TD error| stand-ins.
                client.update_priorities(sample.shards, sample.keys, rng.uniform(0.01, 1.0, 256))
                sampled += 256
                size = sample.total_size
                live.update(_table(elapsed, inserted, sampled, client, size))
    finally:
        client.close()
        codes = [process.stop() for process in processes]
    elapsed = time.perf_counter() - started
    if any(codes):
        raise RuntimeError(f"replay shards exited with codes {codes}; see the logs in {run_dir}")
    return {
        "seconds": elapsed,
        "inserted_per_s": inserted / elapsed,
        "sampled_per_s": sampled / elapsed,
    }
