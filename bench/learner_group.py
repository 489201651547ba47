"""Updates/s and samples/s of a data-parallel learner group of 1 and 2 learners on 2 remote shards.

Usage: ``.venv/bin/python bench/learner_group.py [--seconds 20] [--learners 1,2] [--device cpu]``.
Two replay shard processes hold the same CartPole-shaped transitions for every group; each
group is ``apexrl learner`` processes exactly as ``apexrl run --learners N`` starts them
(rank 0 serving, the others following, gloo on CPU), sampling their shares of every
global batch and sending priorities back. The reference, measured in the same run, is
the single learner. Every learner process may use all cores (``general.learner_threads``),
so on a machine with few cores the group competes with itself, and with the shards.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
import yaml

from apexrl.learner.v1 import learner_pb2, learner_pb2_grpc
from bench.learner_throughput import cartpole_data, filled_shards
from services.algorithms.experiment import load_experiment
from services.common.channels import create_channel
from services.common.local_process import LocalProcess
from services.launcher.ports import pick_free_ports


def group_updates_per_s(
    config_path: Path, addresses: list[str], learners: int, seconds: float, logs: Path
) -> float:
    """Rank 0's updates per second over ``seconds``, after the group's first 50 updates."""
    (group_port,) = pick_free_ports(1)
    replay = ",".join(addresses)
    common = ["learner", str(config_path), "--replay", replay]
    processes = []
    for rank in range(learners):
        args = [*common]
        if learners > 1:
            args += ["--group-size", str(learners), "--group-rank", str(rank)]
            args += ["--group-address", f"127.0.0.1:{group_port}"]
        if rank == 0:
            args += ["--port", "0", "--run-dir", str(logs / f"run-{learners}")]
        processes.append(LocalProcess(args, logs / f"learner-{learners}-{rank}.log"))
    try:
        channel = create_channel(processes[0].wait_for_address(), default_timeout_s=5.0)
        status = learner_pb2_grpc.LearnerServiceStub(channel)

        def updates() -> int:
            try:
                return int(status.GetStatus(learner_pb2.GetStatusRequest()).updates)
            except grpc.RpcError:
                return 0

        deadline = time.monotonic() + 120
        while updates() < 50:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the group of {learners} did not start training; see {logs}")
            time.sleep(0.2)
        first, started = updates(), time.monotonic()
        time.sleep(seconds)
        done = updates() - first
        elapsed = time.monotonic() - started
        channel.close()
        return done / elapsed
    finally:
        for process in processes:
            process.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--learners", default="1,2", help="group sizes to measure, comma-separated")
    parser.add_argument("--device", default="cpu")
    arguments = parser.parse_args()
    sizes = [int(size) for size in arguments.learners.split(",")]
    logs = Path(tempfile.mkdtemp(prefix="bench-learner-group-"))
    # The CartPole preset as a service: no evaluation target, budgets far away, the
    # learning-starts threshold met by the transitions stored below.
    config = load_experiment(
        "cartpole",
        [
            f"general.device={arguments.device}",
            "general.max_wall_time_s=100000",
            "general.solved_return=null",
        ],
    )
    data = cartpole_data(np.random.default_rng(0))
    config_path = logs / "config.yaml"
    config_path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    with filled_shards(data, logs) as addresses:
        rates = {
            size: group_updates_per_s(config_path, addresses, size, arguments.seconds, logs) for size in sizes
        }
    reference = rates[sizes[0]]
    batch = config.algorithm.batch_size
    for size, rate in rates.items():
        print(
            json.dumps(
                {
                    "bench": "learner_group",
                    "workload": "cartpole",
                    "measure": f"updates_per_s_{size}_learners",
                    "device": arguments.device,
                    "cores": os.cpu_count(),
                    "value": rate,
                    "unit": "updates/s",
                    "samples_per_s": rate * batch,
                    "reference": f"{sizes[0]}_learner",
                    "reference_value": reference,
                    "ratio": rate / reference,
                    "better": "higher",
                }
            ),
            flush=True,
        )
    print(f"logs in {logs}", file=sys.stderr)


if __name__ == "__main__":
    main()
