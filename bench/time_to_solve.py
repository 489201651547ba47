"""Wall time to solve CartPole-v1: apexrl's default run against Stable-Baselines3 DQN, same machine, same run.

Usage: ``.venv/bin/python bench/time_to_solve.py cartpole [--seeds 0,1,2]`` (needs the ``bench``
extra: stable-baselines3). Solved means the mean return of 10 deterministic
evaluation episodes reaches 475 (bench-workloads.md). Each attempt is a fresh
process, timed from launch to exit, so both sides pay their start-up: apexrl runs
``apexrl run`` (which stops when its evaluator reports 475); SB3 trains DQN with the
rl-zoo hyperparameters and evaluates every ``EVALUATION_INTERVAL_STEPS`` steps.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import gymnasium as gym
from stable_baselines3 import DQN
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.evaluation import evaluate_policy

SOLVED_RETURN = 475.0
EVALUATION_EPISODES = 10
EVALUATION_INTERVAL_STEPS = 1_000
BUDGET_S = 900.0
SB3_MAX_STEPS = 200_000
_REPOSITORY = Path(__file__).resolve().parent.parent


def sb3_worker(seed: int) -> None:
    """Trains SB3 DQN (rl-zoo CartPole-v1 hyperparameters) until solved; prints whether it did."""

    class StopWhenSolved(BaseCallback):
        def _on_step(self) -> bool:
            if self.num_timesteps % EVALUATION_INTERVAL_STEPS:
                return True
            mean, _ = evaluate_policy(
                self.model, evaluation_env, n_eval_episodes=EVALUATION_EPISODES, deterministic=True
            )
            assert isinstance(mean, float)
            return mean < SOLVED_RETURN

    evaluation_env = gym.make("CartPole-v1")
    model = DQN(
        "MlpPolicy",
        "CartPole-v1",
        learning_rate=2.3e-3,
        batch_size=64,
        buffer_size=100_000,
        learning_starts=1_000,
        gamma=0.99,
        target_update_interval=10,
        train_freq=256,
        gradient_steps=128,
        exploration_fraction=0.16,
        exploration_final_eps=0.04,
        policy_kwargs={"net_arch": [256, 256]},
        seed=seed,
        verbose=0,
    )
    callback = StopWhenSolved()
    model.learn(total_timesteps=SB3_MAX_STEPS, callback=callback)
    solved = model.num_timesteps < SB3_MAX_STEPS
    print(json.dumps({"solved": solved, "steps": model.num_timesteps}))


def timed(command: list[str]) -> tuple[float, bool]:
    """Wall seconds from launch to exit, and whether the run solved the task."""
    started = time.perf_counter()
    result = subprocess.run(
        command, cwd=_REPOSITORY, capture_output=True, text=True, timeout=BUDGET_S + 300, check=False
    )
    elapsed = time.perf_counter() - started
    solved = result.returncode == 0 and ('"solved": true' in result.stdout or "solved:" in result.stdout)
    if not solved:
        print(
            f"unsolved command={command} exit={result.returncode} tail={result.stdout[-300:]!r}",
            file=sys.stderr,
        )
    return elapsed, solved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("task", choices=["cartpole"])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--sb3-worker", type=int, default=None, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.sb3_worker is not None:
        sb3_worker(arguments.sb3_worker)
        return
    seeds = [int(seed) for seed in arguments.seeds.split(",")]
    apexrl, baseline = [], []
    for seed in seeds:
        run_dir = Path(tempfile.mkdtemp(prefix="bench-solve-")) / "run"
        seconds, solved = timed(
            [
                sys.executable,
                "-m",
                "services",
                "run",
                "--run-dir",
                str(run_dir),
                "--set",
                f"general.seed={seed}",
                "--set",
                f"general.max_wall_time_s={BUDGET_S}",
            ]
        )
        apexrl.append(seconds if solved else math.inf)
        seconds, solved = timed([sys.executable, __file__, "cartpole", "--sb3-worker", str(seed)])
        baseline.append(seconds if solved else math.inf)
        print(f"seed={seed} apexrl_s={apexrl[-1]:.1f} sb3_s={baseline[-1]:.1f}", file=sys.stderr, flush=True)
    value, reference = statistics.median(apexrl), statistics.median(baseline)
    print(
        json.dumps(
            {
                "bench": "time_to_solve",
                "workload": "cartpole",
                "measure": "median_wall_time_to_solve",
                "value": value,
                "unit": "s",
                "reference": "stable_baselines3_dqn_rl_zoo",
                "reference_value": reference,
                "ratio": value / reference,
                "better": "lower",
            }
        )
    )


if __name__ == "__main__":
    main()
