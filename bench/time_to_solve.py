"""Wall time to solve a task with apexrl's presets against Stable-Baselines3, same machine, same run.

Usage: ``.venv/bin/python bench/time_to_solve.py cartpole|pendulum [--seeds 0,1,2,3,4]`` and
``.venv/bin/python bench/time_to_solve.py halfcheetah [--budget-s 600] [--seeds 0]`` (needs the
``bench`` extra: stable-baselines3; halfcheetah the ``mujoco`` one too).

- ``cartpole``: apexrl's Ape-X DQN preset against SB3 DQN with the rl-zoo hyperparameters;
  solved when 10 deterministic evaluation episodes average 475.
- ``pendulum``: apexrl's TD3 (``pendulum``) and SAC (``pendulum-sac``) presets against SB3
  TD3 and SB3 SAC with the rl-zoo hyperparameters; solved at -200.
- ``halfcheetah``: no solved return; each side trains for the same wall-clock budget and
  the best evaluation return each reached is reported.

Every attempt is a fresh process timed from launch to exit, so each side pays its
start-up; apexrl runs ``apexrl run <preset>``, which stops when its evaluator reports the
solved return, and SB3 evaluates every ``evaluation_interval_steps`` steps (10 episodes,
deterministic) and stops when solved. For each seed the sides run one after another
(interleaved), and a seed that does not solve within the budget counts as the budget.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_REPOSITORY = Path(__file__).resolve().parent.parent
_SOLVED = re.compile(r"^solved: best evaluation return", re.MULTILINE)


@dataclass(frozen=True)
class Sb3Side:
    """A Stable-Baselines3 baseline: its algorithm and its rl-zoo hyperparameters."""

    name: str
    algorithm: str
    environment_id: str
    hyperparameters: dict[str, Any]
    max_steps: int
    evaluation_interval_steps: int
    action_noise_std: float | None = None  # TD3's Gaussian exploration noise


@dataclass(frozen=True)
class ApexrlSide:
    name: str
    preset: str


@dataclass(frozen=True)
class Task:
    environment_id: str
    solved_return: float | None
    budget_s: float
    evaluation_episodes: int
    sides: tuple[ApexrlSide | Sb3Side, ...]
    reference: str
    targets: dict[str, float] = field(default_factory=dict)


_CARTPOLE_DQN = {
    "learning_rate": 2.3e-3,
    "batch_size": 64,
    "buffer_size": 100_000,
    "learning_starts": 1_000,
    "gamma": 0.99,
    "target_update_interval": 10,
    "train_freq": 256,
    "gradient_steps": 128,
    "exploration_fraction": 0.16,
    "exploration_final_eps": 0.04,
    "policy_kwargs": {"net_arch": [256, 256]},
}
_PENDULUM_TD3 = {
    "learning_rate": 1e-3,
    "buffer_size": 200_000,
    "learning_starts": 10_000,
    "gamma": 0.98,
    "train_freq": (1, "episode"),
    "gradient_steps": -1,
    "policy_kwargs": {"net_arch": [400, 300]},
}
_HALFCHEETAH_TD3 = {
    "learning_rate": 1e-3,
    "learning_starts": 10_000,
    "policy_kwargs": {"net_arch": [400, 300]},
}

TASKS = {
    "cartpole": Task(
        "CartPole-v1",
        475.0,
        900.0,
        10,
        (
            ApexrlSide("apexrl_apex_dqn", "cartpole"),
            Sb3Side("sb3_dqn_rl_zoo", "DQN", "CartPole-v1", _CARTPOLE_DQN, 200_000, 1_000),
        ),
        reference="sb3_dqn_rl_zoo",
        targets={"apexrl_apex_dqn": 0.33},
    ),
    "pendulum": Task(
        "Pendulum-v1",
        -200.0,
        300.0,
        10,
        (
            ApexrlSide("apexrl_td3", "pendulum"),
            ApexrlSide("apexrl_sac", "pendulum-sac"),
            Sb3Side("sb3_td3_rl_zoo", "TD3", "Pendulum-v1", _PENDULUM_TD3, 100_000, 2_000, 0.1),
            Sb3Side("sb3_sac_rl_zoo", "SAC", "Pendulum-v1", {"learning_rate": 1e-3}, 100_000, 2_000),
        ),
        reference="sb3_td3_rl_zoo",
        targets={"apexrl_td3": 0.4, "apexrl_sac": 0.4},
    ),
    "halfcheetah": Task(
        "HalfCheetah-v5",
        None,
        600.0,
        5,
        (
            ApexrlSide("apexrl_td3", "halfcheetah"),
            Sb3Side("sb3_td3_rl_zoo", "TD3", "HalfCheetah-v5", _HALFCHEETAH_TD3, 10_000_000, 10_000, 0.1),
        ),
        reference="sb3_td3_rl_zoo",
    ),
}


def sb3_worker(task_name: str, side_name: str, seed: int, budget_s: float) -> None:
    """Trains one SB3 side until solved or out of time; prints its outcome as JSON."""
    import gymnasium as gym  # noqa: PLC0415 (only the worker needs SB3)
    import numpy as np  # noqa: PLC0415
    import stable_baselines3  # noqa: PLC0415
    from stable_baselines3.common.callbacks import BaseCallback  # noqa: PLC0415
    from stable_baselines3.common.evaluation import evaluate_policy  # noqa: PLC0415
    from stable_baselines3.common.noise import NormalActionNoise  # noqa: PLC0415

    task = TASKS[task_name]
    side = next(s for s in task.sides if s.name == side_name)
    assert isinstance(side, Sb3Side)
    interval = side.evaluation_interval_steps
    started = time.perf_counter()
    evaluation_env = gym.make(side.environment_id)
    best = -math.inf

    class EvaluateAndStop(BaseCallback):
        def _on_step(self) -> bool:
            nonlocal best
            if time.perf_counter() - started > budget_s:
                return False
            if self.num_timesteps % interval:
                return True
            mean, _ = evaluate_policy(
                self.model, evaluation_env, n_eval_episodes=task.evaluation_episodes, deterministic=True
            )
            best = max(best, float(mean))  # type: ignore[arg-type]
            return task.solved_return is None or best < task.solved_return

    extra: dict[str, Any] = {}
    if side.action_noise_std is not None:
        dimensions = gym.make(side.environment_id).action_space.shape
        assert dimensions is not None
        extra["action_noise"] = NormalActionNoise(
            np.zeros(dimensions), side.action_noise_std * np.ones(dimensions)
        )
    model_class = getattr(stable_baselines3, side.algorithm)
    model = model_class(
        "MlpPolicy", side.environment_id, seed=seed, verbose=0, **side.hyperparameters, **extra
    )
    model.learn(total_timesteps=side.max_steps, callback=EvaluateAndStop())
    solved = task.solved_return is not None and best >= task.solved_return
    print(json.dumps({"solved": solved, "best_return": best, "steps": model.num_timesteps}))


@dataclass(frozen=True)
class Attempt:
    seconds: float
    solved: bool
    best_return: float


def _best_in_run_folder(run_dir: Path) -> float:
    try:
        with open(run_dir / "metrics.csv", encoding="utf-8") as file:
            values = [
                float(row["evaluation_return"]) for row in csv.DictReader(file) if row["evaluation_return"]
            ]
    except OSError:
        return -math.inf
    finite = [value for value in values if math.isfinite(value)]
    return max(finite, default=-math.inf)


def attempt(task_name: str, side: ApexrlSide | Sb3Side, seed: int, budget_s: float) -> Attempt:
    """One timed run of one side, from launch to exit."""
    run_dir = Path(tempfile.mkdtemp(prefix="bench-solve-")) / "run"
    if isinstance(side, ApexrlSide):
        command = [sys.executable, "-m", "services", "run", side.preset, "--run-dir", str(run_dir)]
        command += ["--set", f"general.seed={seed}", "--set", f"general.max_wall_time_s={budget_s}"]
    else:
        command = [sys.executable, __file__, task_name, "--sb3-worker", side.name, "--seeds", str(seed)]
        command += ["--budget-s", str(budget_s)]
    started = time.perf_counter()
    result = subprocess.run(
        command,
        cwd=_REPOSITORY,
        capture_output=True,
        text=True,
        timeout=budget_s + 300,
        check=False,
        env={**os.environ, "COLUMNS": "1000"},  # the launcher's summary lines stay whole
    )
    seconds = time.perf_counter() - started
    if isinstance(side, ApexrlSide):
        solved, best = bool(_SOLVED.search(result.stdout)), _best_in_run_folder(run_dir)
    else:
        outcome = json.loads(result.stdout.strip().splitlines()[-1]) if result.returncode == 0 else {}
        solved, best = bool(outcome.get("solved")), float(outcome.get("best_return", -math.inf))
    if result.returncode != 0:
        print(
            f"failed command={command} exit={result.returncode} tail={result.stderr[-500:]!r}",
            file=sys.stderr,
        )
    return Attempt(seconds, solved and result.returncode == 0, best)


def report(task_name: str, task: Task, attempts: dict[str, list[Attempt]], budget_s: float) -> dict[str, Any]:
    """Each side's median and every seed's figure, and each apexrl side's ratio to the reference."""
    if task.solved_return is None:
        figures = {name: [a.best_return for a in runs] for name, runs in attempts.items()}
        measure, unit, better = f"best_evaluation_return_in_{budget_s:g}_s", "return", "higher"
    else:
        # A seed that does not solve within the budget counts as the budget.
        figures = {
            name: [a.seconds if a.solved else budget_s for a in runs] for name, runs in attempts.items()
        }
        measure, unit, better = "median_wall_time_to_solve", "s", "lower"
    medians = {name: statistics.median(values) for name, values in figures.items()}
    reference = medians[task.reference]
    sides = {
        name: {
            "median": medians[name],
            "per_seed": [round(value, 2) for value in figures[name]],
            "solved": [a.solved for a in attempts[name]],
        }
        for name in figures
    }
    apexrl = [side.name for side in task.sides if isinstance(side, ApexrlSide)]
    result: dict[str, Any] = {
        "bench": "time_to_solve",
        "workload": task_name,
        "measure": measure,
        "unit": unit,
        "better": better,
        "value": medians[apexrl[0]],
        "reference": task.reference,
        "reference_value": reference,
        "sides": sides,
    }
    if task.solved_return is not None:
        result["ratios"] = {name: medians[name] / reference for name in apexrl}
        if len(apexrl) == 1:  # the ratio, where one side is measured against the reference
            result["ratio"] = result["ratios"][apexrl[0]]
        result["targets"] = task.targets
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("task", choices=sorted(TASKS))
    parser.add_argument("--seeds", default=None, help="Comma-separated seeds (default 0-4; halfcheetah 0).")
    parser.add_argument("--budget-s", type=float, default=None, help="Wall-clock budget of one attempt.")
    parser.add_argument("--sb3-worker", default=None, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    task = TASKS[arguments.task]
    budget_s = arguments.budget_s if arguments.budget_s is not None else task.budget_s
    default_seeds = "0" if task.solved_return is None else "0,1,2,3,4"
    seeds = [int(seed) for seed in (arguments.seeds or default_seeds).split(",")]
    if arguments.sb3_worker is not None:
        sb3_worker(arguments.task, arguments.sb3_worker, seeds[0], budget_s)
        return
    attempts: dict[str, list[Attempt]] = {side.name: [] for side in task.sides}
    for seed in seeds:
        for side in task.sides:
            outcome = attempt(arguments.task, side, seed, budget_s)
            attempts[side.name].append(outcome)
            print(
                f"seed={seed} side={side.name} seconds={outcome.seconds:.1f} solved={outcome.solved} "
                f"best_return={outcome.best_return:.1f}",
                file=sys.stderr,
                flush=True,
            )
    print(json.dumps(report(arguments.task, task, attempts, budget_s)))


if __name__ == "__main__":
    main()
