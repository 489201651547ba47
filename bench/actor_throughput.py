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

This VM's speed drifts, by 10-20% over minutes and up to twice within one, so the two
sides are measured in alternating windows of about 2.5 s: the actors step while the bare
loop waits, then they are stopped (SIGSTOP) while it steps. Both then see the same moments
of the machine, and neither takes the other's cores. Every measure is repeated in rounds
(each actor count once a round); a count's figure and reference are the steps over the
seconds of all its rounds, each round's own under ``runs`` and ``reference_runs``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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
# Each round alternates windows of about this long: the actors step, then the bare loop.
_WINDOW_S = 2.5
# After the actors are let go again, before their next window: they report what they stepped
# before the stop, and their calls in flight complete.
_SETTLE_S = 0.5
# Each of the two shards' capacity: more than any actor count fills in a measure (8 CartPole
# actors step about 20k times a second here; storage is only touched as it fills).
_SHARD_CAPACITY = 1_000_000
FAST_ENVIRONMENTS = 16


class BareLoop:
    """One process stepping the preset's environments with its policy, nothing else."""

    def __init__(self, preset: str = "cartpole", overrides: Sequence[str] = ()) -> None:
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
        self._count = config.algorithm.actor.environments_per_actor
        environments = [first] + [make_spec_environment(spec) for _ in range(self._count - 1)]
        atari = config.environment.atari
        self._rollout = Rollout(
            environments,
            NStepBuilder(self._count, config.algorithm.n_step, config.algorithm.discount),
            0,
            clip_rewards=atari is not None and atari.clip_rewards,
            terminal_on_life_loss=atari is not None and atari.terminal_on_life_loss,
        )
        rng = np.random.default_rng(0)
        exploration = family.exploration(config.algorithm, 0)
        self._act = lambda observations: policy.act(observations, exploration, rng)

    def run(self, seconds: float) -> tuple[int, float]:
        """Steps for ``seconds``; the steps taken and the time they took."""
        steps, started = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - started) < seconds:
            self._rollout.step(self._act)
            steps += self._count
        return steps, elapsed


def bare_steps_per_s(seconds: float, preset: str = "cartpole", overrides: Sequence[str] = ()) -> float:
    steps, elapsed = BareLoop(preset, overrides).run(seconds)
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


@dataclass
class Tally:
    """Steps and seconds summed over the windows of one side of a paired measure."""

    steps: int = 0
    seconds: float = 0.0

    def add(self, steps: int, seconds: float) -> None:
        self.steps += steps
        self.seconds += seconds

    @property
    def rate(self) -> float:
        return self.steps / self.seconds


def _signal_all(processes: Sequence[LocalProcess], number: signal.Signals) -> None:
    for process in processes:
        os.kill(process.pid, number)


def paired_steps_per_s(
    actors: int,
    seconds: float,
    logs: Path,
    bare: BareLoop,
    preset: str = "cartpole",
    overrides: Sequence[str] = (),
) -> tuple[Tally, Tally]:
    """Aggregate steps of ``actors`` actor processes and of ``bare``, in alternating windows.

    The actors step while the bare loop waits, then they are stopped (SIGSTOP) while it
    steps, ``seconds`` each in all: both sides see the same moments of a machine whose speed
    drifts, and neither competes with the other for the cores. The actors' steps are read
    from the learner's status, which they report every few hundred steps.
    """
    shards = [
        LocalProcess(["replay", "--port", "0", "--capacity", str(_SHARD_CAPACITY)], logs / f"replay-{k}.log")
        for k in range(2)
    ]
    processes = list(shards)
    stepping: list[LocalProcess] = []
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
        stepping = [
            LocalProcess(["actor", "--learner", address], logs / f"actor-{actors}-{i}.log")
            for i in range(actors)
        ]
        processes += stepping
        client = LearnerClient(address)
        _wait_until_stepping(client, actors)
        time.sleep(_WARM_UP_S)
        distributed, alone = Tally(), Tally()
        windows = max(1, round(seconds / _WINDOW_S))
        for _ in range(windows):
            first_steps, started = client.status().environment_steps, time.perf_counter()
            time.sleep(seconds / windows)
            distributed.add(client.status().environment_steps - first_steps, time.perf_counter() - started)
            _signal_all(stepping, signal.SIGSTOP)
            alone.add(*bare.run(seconds / windows))
            _signal_all(stepping, signal.SIGCONT)
            time.sleep(_SETTLE_S)  # the steps taken before the stop are reported meanwhile
        client.close()
        return distributed, alone
    finally:
        _signal_all(stepping, signal.SIGCONT)  # a stopped process would not drain on SIGTERM
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
    """Rounds of each actor count paired with the bare loop, then one JSON line per count.

    A count's figure and its reference are the steps over the seconds of all its rounds;
    ``runs`` and ``reference_runs`` are each round's own. ``overrides`` (``section.key=value``)
    apply to the bare loop and the actors alike.
    """
    logs = Path(tempfile.mkdtemp(prefix=f"bench-actors-{preset}-"))
    bare = BareLoop(preset, overrides)
    rounds: dict[int, list[tuple[Tally, Tally]]] = {actors: [] for actors in counts}
    for _ in range(repeats):
        for actors in counts:
            rounds[actors].append(paired_steps_per_s(actors, seconds, logs, bare, preset, overrides))
    for actors in counts:
        distributed, alone = Tally(), Tally()
        for pair_distributed, pair_alone in rounds[actors]:
            distributed.add(pair_distributed.steps, pair_distributed.seconds)
            alone.add(pair_alone.steps, pair_alone.seconds)
        print(
            json.dumps(
                {
                    "bench": bench,
                    "workload": workload or preset,
                    "measure": f"environment_steps_per_s_{actors}_actors",
                    "value": distributed.rate,
                    "unit": "steps/s",
                    **(extra or {}),
                    "reference": "bare_single_process_loop",
                    "reference_value": alone.rate,
                    "ratio": distributed.rate / alone.rate,
                    "better": "higher",
                    "runs": [round(pair[0].rate, 1) for pair in rounds[actors]],
                    "reference_runs": [round(pair[1].rate, 1) for pair in rounds[actors]],
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
