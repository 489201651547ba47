"""Serves apexrl.learner.v1.LearnerService: registration, versioned parameters, status, evaluations."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from typing import NoReturn

import grpc

from apexrl.learner.v1 import learner_pb2, learner_pb2_grpc
from services.algorithms.experiment import ExperimentConfig, actor_settings, experiment_spec
from services.algorithms.wire import exploration_to_wire
from services.learner.parameter_store import ParameterStore
from services.learner.progress import Evaluation, Progress
from services.learner.registry import ActorRecord, ActorRegistry, UnknownActorError
from services.learner.training import Snapshot

logger = logging.getLogger(__name__)

_ROLES = {
    learner_pb2.CLIENT_ROLE_ACTOR: "actor",
    learner_pb2.CLIENT_ROLE_EVALUATOR: "evaluator",
    learner_pb2.CLIENT_ROLE_OBSERVER: "observer",
}
_ROLE_VALUES = {name: value for value, name in _ROLES.items()}
# A watch wakes this often to notice a cancelled client or a draining learner.
_WATCH_POLL_S = 1.0


def _evaluation(evaluation: Evaluation | None) -> learner_pb2.Evaluation | None:
    if evaluation is None:
        return None
    return learner_pb2.Evaluation(
        parameter_version=evaluation.parameter_version,
        mean_return=evaluation.mean_return,
        std_return=evaluation.std_return,
        episodes=evaluation.episodes,
        updates=evaluation.updates,
    )


def _policy_only(parameter_set: learner_pb2.ParameterSet.ValueType) -> bool:
    return parameter_set == learner_pb2.PARAMETER_SET_POLICY


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    context.abort(code, message)


class LearnerServicer(learner_pb2_grpc.LearnerServiceServicer):
    def __init__(
        self,
        config: ExperimentConfig,
        replay_addresses: list[str],
        store: ParameterStore,
        registry: ActorRegistry,
        progress: Progress,
        snapshot: Callable[[], Snapshot],
        finished: Callable[[], bool],
        save_best: Callable[[int], None],
    ) -> None:
        self._config = config
        self._spec = experiment_spec(config)
        self._actor_settings = actor_settings(config)
        self._replay_addresses = replay_addresses
        self._store = store
        self._registry = registry
        self._progress = progress
        self._snapshot = snapshot
        self._finished = finished
        self._save_best = save_best

    def RegisterActor(
        self, request: learner_pb2.RegisterActorRequest, context: grpc.ServicerContext
    ) -> learner_pb2.RegisterActorResponse:
        role = _ROLES.get(request.role)
        if role is None:
            _abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"role must be ACTOR, EVALUATOR or OBSERVER, got {request.role}",
            )
        record = self._registry.register(role, request.client_name)
        logger.info(
            "registered actor_id=%d role=%s name=%s rung=%s exploration=%s",
            record.actor_id,
            role,
            request.client_name,
            record.rung,
            record.exploration,
        )
        general = self._config.general
        return learner_pb2.RegisterActorResponse(
            actor_id=record.actor_id,
            exploration=self._exploration(record),
            spec=self._spec,
            replay_addresses=self._replay_addresses,
            parameter_version=self._store.version,
            actor_settings=self._actor_settings,
            evaluation_settings=learner_pb2.EvaluationSettings(
                episodes=general.evaluation_episodes, interval_s=general.evaluation_interval_s
            ),
        )

    @staticmethod
    def _exploration(record: ActorRecord) -> learner_pb2.Exploration:
        return exploration_to_wire(record.exploration, record.rung)

    def GetParameters(
        self, request: learner_pb2.GetParametersRequest, context: grpc.ServicerContext
    ) -> learner_pb2.GetParametersResponse:
        if request.actor_id:
            progress = request.progress
            try:
                self._registry.heartbeat(
                    request.actor_id,
                    progress.environment_steps,
                    progress.episodes,
                    progress.last_episode_return,
                    request.known_version,
                )
            except UnknownActorError as error:
                _abort(context, grpc.StatusCode.NOT_FOUND, str(error))
        version, parameters = self._store.latest(_policy_only(request.parameter_set))
        if parameters is None:
            _abort(context, grpc.StatusCode.FAILED_PRECONDITION, "no parameters published yet")
        if request.known_version == version:
            return learner_pb2.GetParametersResponse(version=version, up_to_date=True)
        return learner_pb2.GetParametersResponse(version=version, parameters=parameters)

    def WatchParameters(
        self, request: learner_pb2.WatchParametersRequest, context: grpc.ServicerContext
    ) -> Iterator[learner_pb2.WatchParametersResponse]:
        policy_only = _policy_only(request.parameter_set)
        known = request.known_version
        version, parameters = self._store.latest(policy_only)
        if parameters is not None and version != known:
            # Another lineage's version (a learner that crashed after its last checkpoint) is
            # not "newer" by number, but the caller must get the current parameters at once.
            known = version
            yield learner_pb2.WatchParametersResponse(version=version, parameters=parameters)
        while context.is_active() and not self._store.closed:
            version, parameters = self._store.wait_newer(known, _WATCH_POLL_S, policy_only)
            if parameters is not None and version > known:
                known = version
                yield learner_pb2.WatchParametersResponse(version=version, parameters=parameters)

    def GetStatus(
        self, request: learner_pb2.GetStatusRequest, context: grpc.ServicerContext
    ) -> learner_pb2.GetStatusResponse:
        snapshot = self._snapshot()
        actors = [
            learner_pb2.ActorStatus(
                actor_id=record.actor_id,
                role=_ROLE_VALUES[record.role],
                client_name=record.client_name,
                exploration=self._exploration(record),
                progress=learner_pb2.ActorProgress(
                    environment_steps=record.environment_steps,
                    episodes=record.episodes,
                    last_episode_return=record.last_episode_return,
                ),
                parameter_version=record.parameter_version,
            )
            for record in self._registry.active()
        ]
        return learner_pb2.GetStatusResponse(
            updates=snapshot.updates,
            updates_per_second=snapshot.updates_per_second,
            environment_steps=snapshot.environment_steps,
            environment_steps_per_second=snapshot.environment_steps_per_second,
            parameter_version=self._store.version,
            replay_size=snapshot.replay_size,
            replay_capacity=snapshot.replay_capacity,
            replay_shards_up=snapshot.shards_up,
            actors=actors,
            latest_evaluation=_evaluation(self._progress.latest),
            best_evaluation=_evaluation(self._progress.best),
            elapsed_s=self._progress.elapsed_s(),
            finished=self._finished(),
        )

    def ReportEvaluation(
        self, request: learner_pb2.ReportEvaluationRequest, context: grpc.ServicerContext
    ) -> learner_pb2.ReportEvaluationResponse:
        returns = list(request.episode_returns)
        if not returns:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "episode_returns is empty")
        if not all(math.isfinite(value) for value in returns):
            _abort(
                context, grpc.StatusCode.INVALID_ARGUMENT, f"episode_returns must be finite, got {returns}"
            )
        if not 0 < request.parameter_version <= self._store.version:
            _abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"parameter_version {request.parameter_version} was never published "
                f"(latest {self._store.version})",
            )
        # The updates behind the evaluated version, not those made while it was evaluated.
        updates = self._store.updates_of(request.parameter_version)
        new_best = self._progress.record_evaluation(
            request.parameter_version, returns, self._snapshot().updates if updates is None else updates
        )
        latest = self._progress.latest
        assert latest is not None
        logger.info(
            "evaluation version=%d mean_return=%.2f episodes=%d best=%s",
            request.parameter_version,
            latest.mean_return,
            len(returns),
            new_best,
        )
        if new_best:
            self._save_best(request.parameter_version)
        return learner_pb2.ReportEvaluationResponse(new_best=new_best, finished=self._finished())
