"""Environment steps per second of 1, 2, 4 and 8 actor processes, against a bare loop running the same policy.

Usage: ``.venv/bin/python bench/actor_throughput.py [--seconds 10] [--actors 1,2,4,8] [--repeats 3]
[--fast-actors 1,2]``.
The distributed actors are real ``apexrl actor`` processes registered with a learner
that serves parameters but does not train (its learning threshold is never
reached), inserting into two replay shards. The bare loop steps the same
environments with the same network, n-step builder and exploration as the first
actor (rung 0 of the ladder: epsilon 0.4, whose short episodes reset often) in this
process, with no replay, learner or network in between.

A second workload, ``cartpole-16-environments``, runs the same with 16 environments per
actor (``--fast-actors`` counts): one policy call then serves 16 steps, so the bare loop
runs 2-3 times as fast, and what an actor adds per step weighs that much more.

This VM's speed drifts by 10-20% over minutes, so every measure is repeated: each
round runs the bare loop and then each actor count once, a count's figure is the
median of its rounds, and the reference is the median of every bare-loop run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from services.actor.actor import build_policy, make_spec_environment
from services.actor.learner_client import LearnerClient
from services.actor.n_step import NStepBuilder
from services.actor.rollout import Rollout
from services.algorithms.experiment import experiment_spec, load_experiment
from services.algorithms.families import family_named
from services.common.environments import environment_spec
from services.common.local_process import LocalProcess

_WARM_UP_S = 5.0
# Each of the two shards' capacity: more than any actor count fills in a measure (8 CartPole
# actors step about 20k times a second here; storage is only touched as it fills).
_SHARD_CAPACITY = 1_000_000
FAST_ENVIRONMENTS = 16


def bare_steps_per_s(seconds: float, preset: str = "cartpole", overrides: Sequence[str] = ()) -> float:
    """One process stepping the preset's environments with its policy, nothing else."""
    torch.set_num_threads(1)
    config = load_experiment(preset, list(overrides))
    spec = experiment_spec(config)
    policy, first = build_policy(spec)
    # The parameters the actors get from the learner, which does not train here: its
    # initial networks. Others would act differently, and episode lengths (so reset
    # costs) with them.
    family = family_named(config.algorithm.name)
    initial = family.make_learner(
        config.algorithm, environment_spec(first), torch.device("cpu"), config.general.seed
    )
    policy.load_parameters(initial.actor_parameters())
    count = config.algorithm.actor.environments_per_actor
    environments = [first] + [make_spec_environment(spec) for _ in range(count - 1)]
    atari = config.environment.atari
    rollout = Rollout(
        environments,
        NStepBuilder(count, config.algorithm.n_step, config.algorithm.discount),
        0,
        clip_rewards=atari is not None and atari.clip_rewards,
        terminal_on_life_loss=atari is not None and atari.terminal_on_life_loss,
    )
    rng = np.random.default_rng(0)

    exploration = family.exploration(config.algorithm, 0)

    def act(observations: np.ndarray) -> np.ndarray:
        return policy.act(observations, exploration, rng)

    steps, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        rollout.step(act)
        steps += count
    return steps / elapsed


def _wait_until_stepping(client: LearnerClient, actors: int, timeout_s: float = 300.0) -> None:
    """Until every actor process has registered and reported steps (start-up takes seconds each)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stepping = [row for row in client.status().actors if row.progress.environment_steps > 0]
        if len(stepping) >= actors:
            return
        time.sleep(0.5)
    raise TimeoutError(f"{actors} actors did not all report steps within {timeout_s} s")


def distributed_steps_per_s(
    actors: int, seconds: float, logs: Path, preset: str = "cartpole", overrides: Sequence[str] = ()
) -> float:
    """Aggregate steps/s of ``actors`` actor processes, read from the learner's status."""
    shards = [
        LocalProcess(["replay", "--port", "0", "--capacity", str(_SHARD_CAPACITY)], logs / f"replay-{k}.log")
        for k in range(2)
    ]
    processes = list(shards)
    try:
        replay = ",".join(shard.wait_for_address() for shard in shards)
        learner = LocalProcess(
            [
                "learner",
                preset,
                "--replay",
                replay,
                "--run-dir",
                str(logs / f"run-{preset}-{actors}"),
                # Never trains: learning would start once the shards are full, long after the run.
                "--set",
                f"algorithm.replay_capacity={2 * _SHARD_CAPACITY}",
                "--set",
                f"algorithm.min_replay_size={2 * _SHARD_CAPACITY}",
                "--set",
                "general.max_wall_time_s=100000",
                *(item for override in overrides for item in ("--set", override)),
            ],
            logs / f"learner-{actors}.log",
        )
        processes.append(learner)
        address = learner.wait_for_address()
        processes += [
            LocalProcess(["actor", "--learner", address], logs / f"actor-{actors}-{i}.log")
            for i in range(actors)
        ]
        client = LearnerClient(address)
        _wait_until_stepping(client, actors)
        time.sleep(_WARM_UP_S)
        first_steps, started = client.status().environment_steps, time.perf_counter()
        time.sleep(seconds)
        steps = client.status().environment_steps - first_steps
        client.close()
        return steps / (time.perf_counter() - started)
    finally:
        for process in reversed(processes):
            process.stop()


def measure_actors(
    preset: str,
    counts: list[int],
    seconds: float,
    repeats: int,
    bench: str,
    extra: Mapping[str, object] | None = None,
    overrides: Sequence[str] = (),
    workload: str | None = None,
) -> None:
    """Rounds of the bare loop and each actor count, then one JSON line per count (medians).

    ``overrides`` (``section.key=value``) apply to the bare loop and the actors alike.
    """
    logs = Path(tempfile.mkdtemp(prefix=f"bench-actors-{preset}-"))
    references: list[float] = []
    runs: dict[int, list[float]] = {actors: [] for actors in counts}
    for _ in range(repeats):
        for actors in counts:
            references.append(bare_steps_per_s(seconds, preset, overrides))
            runs[actors].append(distributed_steps_per_s(actors, seconds, logs, preset, overrides))
    reference = statistics.median(references)
    print(f"bare loop runs: {[round(r) for r in references]} steps/s", file=sys.stderr)
    for actors in counts:
        value = statistics.median(runs[actors])
        print(
            json.dumps(
                {
                    "bench": bench,
                    "workload": workload or preset,
                    "measure": f"environment_steps_per_s_{actors}_actors",
                    "value": value,
                    "unit": "steps/s",
                    **(extra or {}),
                    "reference": "bare_single_process_loop",
                    "reference_value": reference,
                    "ratio": value / reference,
                    "better": "higher",
                    "runs": [round(run, 1) for run in runs[actors]],
                }
            ),
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--actors", default="1,2,4,8")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--fast-actors",
        default="1,2",
        help="Actor counts of the second workload, whose bare loop is several times faster ('' skips it).",
    )
    arguments = parser.parse_args()
    counts = [int(value) for value in arguments.actors.split(",")]
    measure_actors("cartpole", counts, arguments.seconds, arguments.repeats, "actor_throughput")
    if arguments.fast_actors:
        # The same CartPole with 16 environments per actor: one policy call serves 16 steps,
        # so the bare loop runs 2-3 times as fast and each step's other costs weigh more.
        fast = [int(value) for value in arguments.fast_actors.split(",")]
        overrides = [f"algorithm.actor.environments_per_actor={FAST_ENVIRONMENTS}"]
        workload = f"cartpole-{FAST_ENVIRONMENTS}-environments"
        measure_actors(
            "cartpole",
            fast,
            arguments.seconds,
            arguments.repeats,
            "actor_throughput",
            None,
            overrides,
            workload,
        )


if __name__ == "__main__":
    main()
