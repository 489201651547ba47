"""One learner of a data-parallel group, run as its own process by test_data_parallel.py.

It trains a learner core for a few updates on its share of deterministic global batches,
averaging gradients with the other learners over gloo, and writes its final state.
"""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from numpy.typing import NDArray
from safetensors.torch import save_file

from services.algorithms.families import family_named
from services.algorithms.interface import LearnerCore
from services.common.environments import BoxActions, EnvironmentSpec
from services.evaluation.models import environment_of
from tests.integration.training_fixtures import small_config

BATCH = 32  # the global batch
SEED = 7


def core_and_environment(preset: str) -> tuple[LearnerCore, EnvironmentSpec]:
    config = small_config(f"algorithm.batch_size={BATCH}", preset=preset)
    environment = environment_of(config)
    family = family_named(config.algorithm.name)
    return family.make_learner(config.algorithm, environment, torch.device("cpu"), SEED), environment


Batch = tuple[dict[str, NDArray[Any]], NDArray[np.float32]]


def global_batches(environment: EnvironmentSpec, updates: int) -> list[Batch]:
    """``updates`` batches of ``BATCH`` random transitions of the environment's shapes, and weights."""
    rng = np.random.default_rng(11)
    shape = (BATCH, *environment.observation_shape)
    batches = []
    for _ in range(updates):
        actions = environment.actions
        if isinstance(actions, BoxActions):
            action: NDArray[Any] = rng.uniform(actions.low, actions.high, (BATCH, *actions.shape)).astype(
                np.float32
            )
        else:
            action = rng.integers(0, actions.count, BATCH)
        columns = {
            "observation": rng.normal(size=shape).astype(np.float32),
            "action": action,
            "reward": rng.normal(size=BATCH).astype(np.float32),
            "discount": np.full(BATCH, 0.97, dtype=np.float32),
            "next_observation": rng.normal(size=shape).astype(np.float32),
        }
        batches.append((columns, rng.uniform(0.2, 1.0, BATCH).astype(np.float32)))
    return batches


def train(core: LearnerCore, environment: EnvironmentSpec, updates: int, rows: slice) -> None:
    for columns, weights in global_batches(environment, updates):
        core.update({name: column[rows] for name, column in columns.items()}, weights[rows])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", required=True)
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world-size", type=int, required=True)
    parser.add_argument("--address", required=True)
    parser.add_argument("--updates", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    arguments = parser.parse_args()
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://{arguments.address}",
        rank=arguments.rank,
        world_size=arguments.world_size,
        timeout=datetime.timedelta(seconds=60),
    )
    core, environment = core_and_environment(arguments.preset)
    share = BATCH // arguments.world_size
    rows = slice(arguments.rank * share, (arguments.rank + 1) * share)
    train(core, environment, arguments.updates, rows)
    state = {name: tensor.contiguous() for name, tensor in core.state_tensors().items()}
    save_file(state, str(arguments.out))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
