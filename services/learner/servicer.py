"""Serves apexrl.learner.v1.LearnerService: registration, versioned parameters, status, evaluations.

The service runs on a grpc.aio loop (:class:`services.common.serving.AsyncServer`):
a parameter watch is a coroutine waiting for the next publish, not a thread, so
thousands of watchers leave every other call its answer. Handlers only take
short locks (registry, store, progress); the one that writes a file (a new best
model) does it on a worker thread. Parameter replies are serialized once per
version and sent as bytes to every puller and watcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator, Callable
from typing import Any, NoReturn

import grpc
import numpy as np
from google.protobuf.message import DecodeError, Message

from apexrl.learner.v1 import learner_pb2
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
SERVICE_NAME = learner_pb2.DESCRIPTOR.services_by_name["LearnerService"].full_name
# An actor's reported steps or episodes are taken as at most this (1.1e12: years of stepping at
# any real rate), so totals over every registration stay far inside int64, which the run log's
# step and the status's counters need (a report of 2**64 - 1 steps stopped the trainer).
MAX_REPORTED_COUNT = 1 << 40


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


Context = grpc.aio.ServicerContext[Any, Any]


async def _abort(context: Context, code: grpc.StatusCode, message: str) -> NoReturn:
    await context.abort(code, message)
    raise AssertionError("unreachable: abort raises")


class LearnerServicer:
    """Constructed on the server's loop (it creates the loop's wake-up event there)."""

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
        # Replaced by a fresh event at each publish; a watcher awaits the one it saw.
        self._published = asyncio.Event()
        self._replies: dict[tuple[type[Message], bool], tuple[int, bytes]] = {}
        loop = asyncio.get_running_loop()

        def on_publish() -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed: the server stopped
                loop.call_soon_threadsafe(self._wake_watchers)

        store.add_listener(on_publish)

    def _wake_watchers(self) -> None:
        self._published.set()
        self._published = asyncio.Event()

    def _reply(self, kind: type[Message], policy_only: bool) -> tuple[int, bytes | None]:
        """The latest version and its serialized reply of ``kind`` (None before the first publish)."""
        version, parameters = self._store.latest(policy_only)
        if parameters is None:
            return version, None
        cached = self._replies.get((kind, policy_only))
        if cached is None or cached[0] != version:
            message = kind(version=version, parameters=parameters, lineage=self._store.lineage)
            cached = version, message.SerializeToString()
            self._replies[kind, policy_only] = cached
        return cached

    async def RegisterActor(
        self, request: learner_pb2.RegisterActorRequest, context: Context
    ) -> learner_pb2.RegisterActorResponse:
        role = _ROLES.get(request.role)
        if role is None:
            await _abort(
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
            parameter_lineage=self._store.lineage,
            actor_settings=self._actor_settings,
            evaluation_settings=learner_pb2.EvaluationSettings(
                episodes=general.evaluation_episodes, interval_s=general.evaluation_interval_s
            ),
        )

    @staticmethod
    def _exploration(record: ActorRecord) -> learner_pb2.Exploration:
        return exploration_to_wire(record.exploration, record.rung)

    async def GetParameters(self, request: learner_pb2.GetParametersRequest, context: Context) -> bytes:
        if request.actor_id:
            progress = request.progress
            try:
                self._registry.heartbeat(
                    request.actor_id,
                    min(progress.environment_steps, MAX_REPORTED_COUNT),
                    min(progress.episodes, MAX_REPORTED_COUNT),
                    progress.last_episode_return,
                    request.known_version,
                )
            except UnknownActorError as error:
                await _abort(context, grpc.StatusCode.NOT_FOUND, str(error))
        version, reply = self._reply(learner_pb2.GetParametersResponse, _policy_only(request.parameter_set))
        if reply is None:
            await _abort(context, grpc.StatusCode.FAILED_PRECONDITION, "no parameters published yet")
        if (request.known_lineage, request.known_version) == (self._store.lineage, version):
            current = learner_pb2.GetParametersResponse(
                version=version, up_to_date=True, lineage=self._store.lineage
            )
            return current.SerializeToString()
        return reply

    async def WatchParameters(
        self, request: learner_pb2.WatchParametersRequest, context: Context
    ) -> AsyncIterator[bytes]:
        policy_only = _policy_only(request.parameter_set)
        await self._touch(request.actor_id, request.known_version, context)
        # What the caller holds: a version of another lineage (a learner that crashed after
        # its last checkpoint) is not the current one whatever its number.
        held = (request.known_lineage, request.known_version)
        while not self._store.closed:
            published = self._published  # taken before reading, so no publish slips between
            version, reply = self._reply(learner_pb2.WatchParametersResponse, policy_only)
            if reply is not None and (self._store.lineage, version) != held:
                held = (self._store.lineage, version)
                await self._touch(request.actor_id, version, context)  # a push is a heartbeat
                yield reply
                continue
            # A cancelled call cancels this wait; a draining learner closes the store.
            await published.wait()

    async def _touch(self, actor_id: int, version: int, context: Context) -> None:
        """Keeps a registered watcher's registration alive; NOT_FOUND for an id the learner forgot."""
        if not actor_id:
            return
        try:
            self._registry.touch(actor_id, version)
        except UnknownActorError as error:
            await _abort(context, grpc.StatusCode.NOT_FOUND, str(error))

    async def GetStatus(
        self, request: learner_pb2.GetStatusRequest, context: Context
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
            parameter_lineage=self._store.lineage,
            replay_size=snapshot.replay_size,
            replay_capacity=snapshot.replay_capacity,
            replay_shards_up=snapshot.shards_up,
            actors=actors,
            latest_evaluation=_evaluation(self._progress.latest),
            best_evaluation=_evaluation(self._progress.best),
            elapsed_s=self._progress.elapsed_s(),
            finished=self._finished(),
        )

    async def ReportEvaluation(
        self, request: learner_pb2.ReportEvaluationRequest, context: Context
    ) -> learner_pb2.ReportEvaluationResponse:
        returns = list(request.episode_returns)
        if not returns:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "episode_returns is empty")
        if not all(math.isfinite(value) for value in returns):
            await _abort(
                context, grpc.StatusCode.INVALID_ARGUMENT, f"episode_returns must be finite, got {returns}"
            )
        with np.errstate(over="ignore", invalid="ignore"):
            values = np.asarray(returns, dtype=np.float64)
            summary = (float(values.mean()), float(values.std()))
        if not all(math.isfinite(value) for value in summary):
            await _abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"episode_returns are too large to average: mean {summary[0]}, std {summary[1]}",
            )
        if request.parameter_lineage not in ("", self._store.lineage):
            await _abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"parameter_version {request.parameter_version} is of lineage {request.parameter_lineage}, "
                f"not this learner's {self._store.lineage} (it restarted): its parameters are gone",
            )
        if not 0 < request.parameter_version <= self._store.version:
            await _abort(
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
            await asyncio.to_thread(self._save_best, request.parameter_version)
        return learner_pb2.ReportEvaluationResponse(new_best=new_best, finished=self._finished())


class _Undecodable:
    """Request bytes that do not parse as the method's message."""

    def __init__(self, details: str) -> None:
        self.details = details


def _deserializer(request: type[Message]) -> Callable[[bytes], Message | _Undecodable]:
    """Parses requests; one that does not parse is handed on, to fail with INVALID_ARGUMENT (the
    gRPC runtime answers a deserializer's exception with UNKNOWN)."""

    def deserialize(data: bytes) -> Message | _Undecodable:
        try:
            return request.FromString(data)
        except DecodeError as error:
            return _Undecodable(f"the request is not a valid {request.DESCRIPTOR.full_name}: {error}")

    return deserialize


def _handler(
    method: Callable[..., Any], request: type[Message], serialized: bool, stream: bool = False
) -> Any:
    serializer = _already_serialized if serialized else lambda reply: reply.SerializeToString()

    async def unary(message: Message | _Undecodable, context: Context) -> Any:
        if isinstance(message, _Undecodable):
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, message.details)
        return await method(message, context)

    async def streaming(message: Message | _Undecodable, context: Context) -> AsyncIterator[Any]:
        if isinstance(message, _Undecodable):
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, message.details)
        async for reply in method(message, context):
            yield reply

    make = grpc.unary_stream_rpc_method_handler if stream else grpc.unary_unary_rpc_method_handler
    return make(
        streaming if stream else unary,
        request_deserializer=_deserializer(request),
        response_serializer=serializer,
    )


def _already_serialized(reply: bytes) -> bytes:
    return reply


def add_to_server(servicer: LearnerServicer, server: grpc.aio.Server) -> None:
    """Registers the servicer like the generated function, but parameter replies go out as the
    bytes serialized once per version."""
    messages = learner_pb2
    handlers = {
        "RegisterActor": _handler(servicer.RegisterActor, messages.RegisterActorRequest, False),
        "GetParameters": _handler(servicer.GetParameters, messages.GetParametersRequest, True),
        "WatchParameters": _handler(
            servicer.WatchParameters, messages.WatchParametersRequest, True, stream=True
        ),
        "GetStatus": _handler(servicer.GetStatus, messages.GetStatusRequest, False),
        "ReportEvaluation": _handler(servicer.ReportEvaluation, messages.ReportEvaluationRequest, False),
    }
    service = messages.DESCRIPTOR.services_by_name["LearnerService"]
    # Every RPC of the contract must be served here; a new one in the proto fails loudly.
    assert set(handlers) == {method.name for method in service.methods}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
