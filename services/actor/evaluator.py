"""The evaluator: a parameter-pull client playing greedy episodes with each new version, reporting them."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

import grpc
import gymnasium as gym
import numpy as np
import torch

from apexrl.learner.v1 import learner_pb2
from services.actor.actor import build_network, make_spec_environment
from services.actor.learner_client import LearnerClient, NotRegisteredError
from services.actor.metrics import EvaluatorMetrics
from services.actor.policy import greedy_actions
from services.common.networks import QNetwork

logger = logging.getLogger(__name__)

# Evaluation episodes use their own seeds, the same for every version, so versions compare fairly.
_EVALUATION_SEED_OFFSET = 1_000_000


def play_greedy_episodes(
    network: QNetwork,
    environments: Sequence[gym.Env[Any, Any]],
    seed: int,
    stop: threading.Event | None = None,
) -> list[float]:
    """Undiscounted returns of one greedy episode per environment (environment i seeded ``seed + i``).

    The episodes run in lockstep, so each step is one forward pass over the episodes
    still running. Returns an empty list if ``stop`` is set meanwhile: a partial
    evaluation is never reported.
    """
    observations = [environment.reset(seed=seed + i)[0] for i, environment in enumerate(environments)]
    returns = [0.0] * len(environments)
    running = list(range(len(environments)))
    while running:
        if stop is not None and stop.is_set():
            return []
        actions = greedy_actions(network, np.stack([observations[i] for i in running]))
        still_running = []
        for i, action in zip(running, actions.tolist(), strict=True):
            observations[i], reward, terminated, truncated, _ = environments[i].step(action)
            returns[i] += float(reward)
            if not (terminated or truncated):
                still_running.append(i)
        running = still_running
    return returns


class Evaluator:
    """Evaluates each new parameter version at most every ``interval_s`` seconds."""

    def __init__(self, learner: LearnerClient, client_name: str, metrics: EvaluatorMetrics) -> None:
        self._learner = learner
        self._client_name = client_name
        self._metrics = metrics
        torch.set_num_threads(1)

    def run(self, stop: threading.Event) -> None:
        registration = self._learner.register(learner_pb2.CLIENT_ROLE_EVALUATOR, self._client_name, stop)
        if registration is None:
            return
        network, environment = build_network(registration.spec)
        settings = registration.evaluation_settings
        environments = [environment] + [
            make_spec_environment(registration.spec) for _ in range(settings.episodes - 1)
        ]
        seed = int(registration.spec.seed) + _EVALUATION_SEED_OFFSET
        actor_id, version = registration.actor_id, 0
        logger.info("evaluator running actor_id=%d episodes=%d", actor_id, settings.episodes)
        while not stop.is_set():
            try:
                parameters = self._learner.get_parameters(version, actor_id)
            except NotRegisteredError:
                registration = self._learner.register(
                    learner_pb2.CLIENT_ROLE_EVALUATOR, self._client_name, stop
                )
                actor_id = registration.actor_id if registration is not None else actor_id
                continue
            except grpc.RpcError as error:
                logger.warning("parameter pull failed code=%s", error.code().name)
                stop.wait(1.0)
                continue
            if parameters is None:
                stop.wait(0.2)
                continue
            network.load_state_dict(parameters.state_dict)
            version = parameters.version
            returns = play_greedy_episodes(network, environments, seed, stop)
            if len(returns) == settings.episodes:
                self._report(version, returns)
            stop.wait(settings.interval_s)
        for environment in environments:
            environment.close()

    def _report(self, version: int, returns: list[float]) -> None:
        mean = float(np.mean(returns))
        self._metrics.evaluation_return.set(mean)
        self._metrics.parameter_version.set(version)
        self._metrics.evaluations.inc()
        try:
            reply = self._learner.report_evaluation(version, returns)
        except grpc.RpcError as error:
            logger.warning("evaluation report failed version=%d code=%s", version, error.code().name)
            return
        logger.info("evaluated version=%d mean_return=%.2f new_best=%s", version, mean, reply.new_best)
