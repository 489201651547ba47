"""A small, fast Ape-X configuration and actors running on threads against a real learner."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

from services.actor.actor import Actor
from services.actor.learner_client import LearnerClient
from services.actor.metrics import ActorMetrics
from services.algorithms.experiment import ExperimentConfig, load_experiment
from services.algorithms.families import family_named
from services.evaluation.models import environment_of
from services.learner.checkpoint import TrainingCounters, save_checkpoint
from services.learner.learner import config_yaml

SMALL = (
    "general.device=cpu",
    "general.seed=3",
    "general.log_interval_s=0.2",
    "general.checkpoint_interval_s=3600",
    "algorithm.network.hidden_sizes=[64, 64]",
    "algorithm.batch_size=32",
    "algorithm.min_replay_size=200",
    "algorithm.parameter_publish_interval=5",
    "algorithm.actor.environments_per_actor=2",
    "algorithm.actor.insert_batch_size=32",
    "algorithm.actor.parameter_refresh_steps=40",
)


def small_config(*overrides: str, preset: str = "cartpole") -> ExperimentConfig:
    return load_experiment(preset, [*SMALL, *overrides])


def pong_checkpoint(directory: Path) -> Path:
    """A learner checkpoint of the pong preset's untrained networks (3 updates, parameter version 2)."""
    config = small_config("general.seed=1", preset="pong")
    environment = environment_of(config)
    core = family_named("apex_dqn").make_learner(config.algorithm, environment, torch.device("cpu"), 1)
    counters = TrainingCounters(3, 2)
    return save_checkpoint(directory / "checkpoints", core.state_tensors(), counters, config_yaml(config))


class ActorThread:
    """An actor exactly as the process runs it, on a thread of the test."""

    def __init__(self, learner_address: str, name: str) -> None:
        self.stop = threading.Event()
        self.client = LearnerClient(learner_address, timeout_s=5.0, max_backoff_s=0.5)
        self.actor = Actor(self.client, name, ActorMetrics())
        self.thread = threading.Thread(target=self.actor.run, args=(self.stop,), name=name, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=60)
        self.client.close()


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.2)
