"""The evaluator: a parameter-pull client playing deterministic episodes with each new version."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc
import gymnasium as gym
import numpy as np
import torch

from apexrl.learner.v1 import learner_pb2
from services.actor.actor import build_policy, make_spec_environment
from services.actor.learner_client import LearnerClient, NotRegisteredError, Parameters
from services.actor.metrics import EvaluatorMetrics
from services.algorithms.interface import ActingPolicy

logger = logging.getLogger(__name__)

# Seconds between pulls while an evaluation runs; well below the learner's 30 s expiry.
_HEARTBEAT_INTERVAL_S = 10.0
# Evaluation episodes use their own seeds, the same for every version, so versions compare fairly.
EVALUATION_SEED_OFFSET = 1_000_000


def play_deterministic_episodes(
    policy: ActingPolicy,
    environments: Sequence[gym.Env[Any, Any]],
    seed: int,
    stop: threading.Event | None = None,
    on_step: Callable[[], None] | None = None,
) -> list[float]:
    """Undiscounted returns of one episode per environment (environment i seeded ``seed + i``).

    The policy acts deterministically: greedy (Ape-X DQN), without noise (TD3), its mean (SAC).

    The episodes run in lockstep, so each step is one forward pass over the episodes
    still running; ``on_step`` is called after each. Returns an empty list if ``stop``
    is set meanwhile: a partial evaluation is never reported.
    """
    observations = [environment.reset(seed=seed + i)[0] for i, environment in enumerate(environments)]
    returns = [0.0] * len(environments)
    running = list(range(len(environments)))
    while running:
        if stop is not None and stop.is_set():
            return []
        actions = policy.act_deterministic(np.stack([observations[i] for i in running]))
        still_running = []
        for i, action in zip(running, actions, strict=True):
            observations[i], reward, terminated, truncated, _ = environments[i].step(action)
            returns[i] += float(reward)
            if not (terminated or truncated):
                still_running.append(i)
        running = still_running
        if on_step is not None:
            on_step()
    return returns


class Evaluator:
    """Evaluates each new parameter version at most every ``interval_s`` seconds.

    While an evaluation runs, and while it waits for the next, a pull every
    ``heartbeat_interval_s`` keeps the registration alive: the learner forgets a
    client silent for 30 s, and long episodes or a long evaluation interval must not
    make the evaluator drop out of its status. Parameters a heartbeat brings are the
    ones evaluated next.
    """

    def __init__(
        self,
        learner: LearnerClient,
        client_name: str,
        metrics: EvaluatorMetrics,
        heartbeat_interval_s: float = _HEARTBEAT_INTERVAL_S,
    ) -> None:
        self._learner = learner
        self._client_name = client_name
        self._metrics = metrics
        self._heartbeat_interval_s = heartbeat_interval_s
        self._actor_id = 0
        self._held: Parameters | None = None  # pulled by a heartbeat, not yet evaluated
        torch.set_num_threads(1)

    def run(self, stop: threading.Event) -> None:
        registration = self._learner.register(learner_pb2.CLIENT_ROLE_EVALUATOR, self._client_name, stop)
        if registration is None:
            return
        policy, environment = build_policy(registration.spec)
        settings = registration.evaluation_settings
        environments = [environment] + [
            make_spec_environment(registration.spec) for _ in range(settings.episodes - 1)
        ]
        seed = int(registration.spec.seed) + EVALUATION_SEED_OFFSET
        self._actor_id = registration.actor_id
        evaluated: Parameters | None = None
        logger.info("evaluator running actor_id=%d episodes=%d", self._actor_id, settings.episodes)
        while not stop.is_set():
            try:
                parameters = self._newer_than(evaluated)
            except NotRegisteredError:
                registration = self._learner.register(
                    learner_pb2.CLIENT_ROLE_EVALUATOR, self._client_name, stop
                )
                self._actor_id = registration.actor_id if registration is not None else self._actor_id
                continue
            except grpc.RpcError as error:
                logger.warning("parameter pull failed code=%s", error.code().name)
                stop.wait(1.0)
                continue
            if parameters is None:
                stop.wait(0.2)
                continue
            policy.load_parameters(parameters.state_dict)
            evaluated = parameters
            beat = self._heartbeat(evaluated)
            returns = play_deterministic_episodes(policy, environments, seed, stop, beat)
            if len(returns) == settings.episodes:
                self._report(evaluated, returns)
            self._wait(settings.interval_s, stop, beat)
        for environment in environments:
            environment.close()

    def _wait(self, seconds: float, stop: threading.Event, beat: Callable[[], None]) -> None:
        """Waits ``seconds``, or until stopped, still beating."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0 and not stop.wait(
            min(left, self._heartbeat_interval_s)
        ):
            beat()

    def _newer_than(self, evaluated: Parameters | None) -> Parameters | None:
        """The parameters a heartbeat brought, else a pull's; None when ``evaluated`` is current."""
        held, self._held = self._held, None
        if held is not None and not _same_version(held, evaluated):
            return held
        return self._pull(evaluated)

    def _pull(self, known: Parameters | None) -> Parameters | None:
        if known is None:
            return self._learner.get_parameters(0, self._actor_id)
        return self._learner.get_parameters(known.version, self._actor_id, known_lineage=known.lineage)

    def _heartbeat(self, evaluating: Parameters) -> Callable[[], None]:
        """A callback, called as often as convenient, that pulls once every heartbeat interval."""
        due = time.monotonic() + self._heartbeat_interval_s

        def beat() -> None:
            nonlocal due
            if time.monotonic() < due:
                return
            due = time.monotonic() + self._heartbeat_interval_s
            try:
                pulled = self._pull(self._held or evaluating)
            except (NotRegisteredError, grpc.RpcError) as error:  # the loop re-registers or retries
                logger.warning("heartbeat pull failed error=%s", error)
                return
            if pulled is not None:
                self._held = pulled

        return beat

    def _report(self, evaluated: Parameters, returns: list[float]) -> None:
        version = evaluated.version
        mean = float(np.mean(returns))
        self._metrics.evaluation_return.set(mean)
        self._metrics.parameter_version.set(version)
        self._metrics.evaluations.inc()
        try:
            # Refused (FAILED_PRECONDITION) when the learner restarted since: its parameters are gone.
            reply = self._learner.report_evaluation(version, returns, evaluated.lineage)
        except grpc.RpcError as error:
            logger.warning("evaluation report failed version=%d code=%s", version, error.code().name)
            return
        logger.info("evaluated version=%d mean_return=%.2f new_best=%s", version, mean, reply.new_best)


def _same_version(pulled: Parameters, evaluated: Parameters | None) -> bool:
    if evaluated is None:
        return False
    return (pulled.lineage, pulled.version) == (evaluated.lineage, evaluated.version)
