"""An Ape-X actor: explores with its algorithm's policy, streams prioritized n-step transitions."""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
import torch
from google.protobuf import json_format
from numpy.typing import NDArray

from apexrl.common.v1 import tensor_pb2
from apexrl.learner.v1 import learner_pb2
from services.actor.learner_client import (
    LearnerClient,
    NotRegisteredError,
    Parameters,
    not_registered_or,
    parameters_from,
    parameters_request,
)
from services.actor.metrics import DROP_OUTBOX_FULL, DROP_REFUSED, ActorMetrics
from services.actor.n_step import Columns, NStepBuilder
from services.actor.rollout import Rollout
from services.actor.transport import ReplaySettings, Reply, Transport
from services.algorithms.families import family_for_wire
from services.algorithms.interface import ActingPolicy, ExplorationSetting, wire_columns
from services.algorithms.wire import exploration_from_wire
from services.common.environments import AtariSettings, environment_spec, make_environment
from services.common.sharded_replay import InsertRefusedError, ReplayUnavailableError

if TYPE_CHECKING:
    from services.datasets.actor_stream import EpisodeStream

logger = logging.getLogger(__name__)

# The columns compressed when the learner asks for compressed observations.
OBSERVATION_COLUMNS = ("observation", "next_observation")
# Transitions kept while no shard accepts them; beyond it the oldest are dropped.
_MAX_OUTBOX_BATCHES = 64
# A batch not yet full leaves this long after its first transition arrived.
_MAX_HOLD_S = 1.0
# The least time between parameter pulls, whatever parameter_refresh_steps says: 16 fast
# environments step 400 times in 20 ms, and a pull (a call to the learner, on both cores)
# that often costs the actor a tenth of its steps while bringing no newer parameters than
# one every 50 ms would (a learner publishes a version every few updates).
_MIN_PULL_INTERVAL_S = 0.05
# How long an insert may wait on a shard's samples-per-insert limiter: the wait is
# the back-pressure that keeps actors from outrunning the learner.
_INSERT_WAIT_S = 10.0

# How the outbox treats a shard's refusal of an insert, by status code. Transient: the
# shard's state is the cause and it takes the same batch later, so the batch is kept and
# sent again. Permanent: the batch itself is the cause, or the shard can never take it;
# sending it again would only hold back every newer batch behind it, so it is dropped.
_TRANSIENT_INSERT_CODES = frozenset(
    {
        # The shard is unreachable or restarting. (The replay client marks a shard down for
        # this code, DEADLINE_EXCEEDED or CANCELLED and tries the next one; the outbox sees
        # them as ReplayUnavailableError once no shard took the batch.)
        grpc.StatusCode.UNAVAILABLE,
        # The shard did not answer in time (busy, or gone); nothing is stored when a request fails.
        grpc.StatusCode.DEADLINE_EXCEEDED,
        # The call was cut off (a channel closed, a shard stopping), not answered.
        grpc.StatusCode.CANCELLED,
        # replay.proto: the samples-per-insert limiter kept the insert waiting beyond
        # max_wait_s, the back-pressure of a learner that is behind. (It is also the gRPC
        # runtime's code for a request above the message limit, which the status does not
        # tell apart; an insert batch of the usual size is far below it.)
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        # gRPC's code for a conflict to retry at a higher level; the replay does not send it.
        grpc.StatusCode.ABORTED,
    }
)
_PERMANENT_INSERT_CODES = frozenset(
    {
        # replay.proto: an empty or malformed batch, a column that does not match the table
        # signature, bad priorities, more items than a request or the limiter's band allows:
        # the same batch is refused again, on every try.
        grpc.StatusCode.INVALID_ARGUMENT,
        # gRPC: not to be retried until someone fixes the system's state; the replay's
        # InsertTransitions does not send it (replay.proto has it for sampling and snapshots).
        grpc.StatusCode.FAILED_PRECONDITION,
        # A value outside its range: the request's contents, not the moment, are the cause.
        grpc.StatusCode.OUT_OF_RANGE,
        # No InsertTransitions where the address points (another service or version): it never will be.
        grpc.StatusCode.UNIMPLEMENTED,
        # The servicer's code for an OSError, and gRPC's for a request it cannot deserialize or
        # a broken invariant (reserved for serious errors): sent again, the batch meets it again.
        grpc.StatusCode.INTERNAL,
        # An exception the servicer has no code for: a fault this batch sets off, again if resent.
        grpc.StatusCode.UNKNOWN,
        # Unrecoverable loss or corruption of the request.
        grpc.StatusCode.DATA_LOSS,
        # The replay has no authentication; a credential problem does not pass with time.
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        # Not sent by InsertTransitions; both name something about the request itself.
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
    }
)


def insert_refusal_is_transient(code: grpc.StatusCode) -> bool:
    """Whether a shard that refused an insert with ``code`` may take the same batch later."""
    return code in _TRANSIENT_INSERT_CODES


def atari_settings_from_wire(spec: learner_pb2.ExperimentSpec) -> AtariSettings | None:
    """The spec's Atari preprocessing; None when it has none (not an Atari experiment)."""
    if not spec.HasField("atari"):
        return None
    atari = spec.atari
    return AtariSettings(
        noop_max=atari.noop_max,
        frame_skip=atari.frame_skip,
        screen_size=atari.screen_size,
        terminal_on_life_loss=atari.terminal_on_life_loss,
        clip_rewards=atari.clip_rewards,
    )


def make_spec_environment(spec: learner_pb2.ExperimentSpec) -> Any:
    """The experiment's environment, as every actor and the evaluator create it."""
    if spec.environment_options_json:
        options = json.loads(spec.environment_options_json)
    else:  # a learner from before environment_options_json: every number arrives a float
        options = json_format.MessageToDict(spec.environment_options)
    return make_environment(
        spec.environment_id, options, spec.frame_stack or 1, atari_settings_from_wire(spec)
    )


def build_policy(spec: learner_pb2.ExperimentSpec) -> tuple[ActingPolicy, Any]:
    """The spec's environment and the acting policy that fits it.

    ValueError when this client does not implement the learner's algorithm, or the
    network spec does not fit the environment: acting with the wrong code is worse than
    not acting.
    """
    family = family_for_wire(spec.algorithm)
    environment = make_spec_environment(spec)
    try:
        described = environment_spec(environment)
        family.check_environment(described)
        return family.make_policy(spec.network, described), environment
    except ValueError:
        environment.close()
        raise


class Outbox:
    """Transitions waiting to be inserted, sent in batches by a background thread while acting goes on.

    A batch leaves once it holds ``batch_size`` transitions, or ``max_hold_s`` after
    its first one arrived, so slow environments stream too. One insert is in flight
    at a time: the next batch waits for the previous one, so a shard's rate limiter
    still holds the actor back. While no shard accepts, transitions are kept (the
    newest ``_MAX_OUTBOX_BATCHES`` batches) and sent again later. A batch a shard refuses
    for good (see ``_PERMANENT_INSERT_CODES``) is logged, counted and dropped, so the
    batches after it go on.

    The inserts are made by the actor's transport process (services/actor/transport.py),
    which also compresses the columns the learner asked for compressed. A batch's initial
    priorities are computed here, as it leaves, from what acting computed (the ``acted.*``
    and ``bootstrap.*`` columns, never sent): Ape-X DQN's need no network at all, TD3's and
    SAC's one critic pass over the batch.
    """

    def __init__(
        self,
        transport: Transport,
        batch_size: int,
        metrics: ActorMetrics,
        max_hold_s: float = _MAX_HOLD_S,
    ) -> None:
        self._transport = transport
        self._batch_size = batch_size
        self._max_hold_s = max_hold_s
        self._held_since = 0.0
        self._metrics = metrics
        self._parts: list[Columns] = []
        self._count = 0
        self._retry_at = 0.0
        self._in_flight: tuple[Reply, Columns] | None = None

    def add(self, columns: Columns) -> None:
        rows = len(columns["reward"])
        if rows:
            if not self._count:
                self._held_since = time.monotonic()
            self._parts.append(columns)
            self._count += rows

    def ready(self) -> bool:
        if not self._count:
            return False
        now = time.monotonic()
        full = self._count >= self._batch_size or now - self._held_since >= self._max_hold_s
        return full and now >= self._retry_at

    def send(self, policy: ActingPolicy) -> None:
        """Waits for the insert in flight, then starts one with the oldest batch held.

        A batch is the oldest parts held up to ``batch_size`` transitions, so a backlog
        kept through an outage drains in requests of the usual size.
        """
        self._settle()
        if not self._count:
            return
        taken, rows = 0, 0
        while taken < len(self._parts) and rows < self._batch_size:
            rows += len(self._parts[taken]["reward"])
            taken += 1
        parts, self._parts = self._parts[:taken], self._parts[taken:]
        self._count -= rows
        columns = {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
        call = self._transport.insert(wire_columns(columns), policy.initial_priorities(columns))
        self._in_flight = (call, columns)

    def flush(self, policy: ActingPolicy) -> None:
        """Sends all that is held and waits for it (on stop); gives up at the first batch kept."""
        accepted = self._settle()
        while self._count and accepted:
            self.send(policy)
            accepted = self._settle()

    def _settle(self) -> bool:
        """Waits for the insert in flight, if any; False if it was not accepted and its batch is kept.

        A batch refused for good is dropped instead, and True: the batches after it may go.
        """
        if self._in_flight is None:
            return True
        call, columns = self._in_flight
        self._in_flight = None
        try:
            call.result()
        except InsertRefusedError as refusal:
            if not insert_refusal_is_transient(refusal.code()):
                self._drop(columns, refusal)
                return True
            self._keep(columns, refusal)
            return False
        except ReplayUnavailableError as error:
            self._keep(columns, error)
            return False
        self._metrics.transitions_sent.inc(len(columns["reward"]))
        return True

    def _drop(self, columns: Columns, refusal: InsertRefusedError) -> None:
        """Drops a batch a shard refused for good: logged once, counted, never sent again."""
        rows = len(columns["reward"])
        self._metrics.batches_refused.labels(str(refusal.shard), refusal.code().name).inc()
        self._metrics.transitions_dropped.labels(DROP_REFUSED).inc(rows)
        logger.error(
            "insert refused, dropping %d transitions shard=%d address=%s code=%s error=%s",
            rows,
            refusal.shard,
            refusal.address,
            refusal.code().name,
            refusal.details(),
        )

    def _keep(self, columns: Columns, error: Exception) -> None:
        """Puts a batch that was not accepted back in front, dropping the oldest beyond the bound."""
        self._retry_at = time.monotonic() + 1.0
        self._parts.insert(0, columns)
        self._count += len(columns["reward"])
        dropped = 0
        while self._count > _MAX_OUTBOX_BATCHES * self._batch_size and len(self._parts) > 1:
            rows = len(self._parts.pop(0)["reward"])
            self._count -= rows
            dropped += rows
        if dropped:
            self._metrics.transitions_dropped.labels(DROP_OUTBOX_FULL).inc(dropped)
        logger.warning(
            "insert failed, keeping %d transitions dropped=%d error=%s", self._count, dropped, error
        )


@dataclass(frozen=True)
class DatasetSettings:
    """Where an actor writes the episodes it plays (``apexrl actor --dataset-dir``), and how many."""

    directory: Path
    max_episodes: int


class Actor:
    """One actor process; survives the learner or any shard going away and coming back."""

    def __init__(
        self,
        learner: LearnerClient,
        client_name: str,
        metrics: ActorMetrics,
        dataset: DatasetSettings | None = None,
    ) -> None:
        self._learner = learner
        self._client_name = client_name
        self._metrics = metrics
        self._dataset = dataset
        torch.set_num_threads(1)

    def run(self, stop: threading.Event) -> None:
        # The transport process starts first: its imports overlap the registration.
        transport = Transport(
            self._learner.address,
            self._learner.security,
            self._learner.timeout_s,
            logging.getLevelName(logging.getLogger().getEffectiveLevel()),
        )
        try:
            self._run(stop, transport)
        finally:
            transport.close()

    def _run(self, stop: threading.Event, transport: Transport) -> None:
        registration = self._learner.register(learner_pb2.CLIENT_ROLE_ACTOR, self._client_name, stop)
        if registration is None:
            return
        spec = registration.spec
        settings = registration.actor_settings
        policy, first_environment = build_policy(spec)
        extra = max(1, settings.environments_per_actor) - 1
        environments = [first_environment] + [make_spec_environment(spec) for _ in range(extra)]
        session = _Session(self._learner, registration, policy, self._metrics, self._client_name, transport)
        builder = NStepBuilder(len(environments), spec.n_step, spec.discount)
        # Atari learning signals (the spec's atari message; both false when it has none).
        rollout = Rollout(
            environments,
            builder,
            session.seed,
            clip_rewards=spec.atari.clip_rewards,
            terminal_on_life_loss=spec.atari.terminal_on_life_loss,
            episodes=self._episode_stream(spec, session, first_environment),
            record=policy.record,
        )
        compressed = OBSERVATION_COLUMNS if settings.observation_codec != tensor_pb2.CODEC_UNSPECIFIED else ()
        transport.configure_replay(
            ReplaySettings(list(registration.replay_addresses), session.seed, compressed, _INSERT_WAIT_S)
        )
        outbox = Outbox(transport, settings.insert_batch_size, self._metrics)
        logger.info(
            "actor running actor_id=%d exploration=%s environments=%d",
            session.actor_id,
            session.exploration,
            len(environments),
        )
        try:
            self._loop(stop, session, rollout, outbox, settings.parameter_refresh_steps)
        finally:
            session.cancel_refresh()
            outbox.add(rollout.flush())
            outbox.flush(policy)
            rollout.close()
            logger.info("actor stopped steps=%d", session.steps)

    def _episode_stream(
        self, spec: learner_pb2.ExperimentSpec, session: _Session, environment: Any
    ) -> EpisodeStream | None:
        """The dataset of this actor's episodes, where it was asked to write one."""
        if self._dataset is None:
            return None
        from services.datasets.actor_stream import EpisodeStream, new_dataset_folder  # noqa: PLC0415 (minari)

        path = new_dataset_folder(self._dataset.directory, session.actor_id)
        metadata = {
            "algorithm_name": f"apexrl {family_for_wire(spec.algorithm).name}",
            "description": f"Episodes of {spec.environment_id} played by apexrl actor {session.actor_id} "
            f"while training, exploring by {session.exploration.kind} {session.exploration.value:g}",
            "apexrl": {
                "source": "actor",
                "actor_id": session.actor_id,
                "client_name": self._client_name,
                "experiment_spec": json_format.MessageToDict(spec),
            },
        }

        def context() -> dict[str, Any]:
            return {
                "actor_id": session.actor_id,
                "parameter_version": session.version,
                "parameter_lineage": session.lineage,
                "exploration": session.exploration.value,
            }

        return EpisodeStream(
            path,
            environment,
            spec.environment_id,
            metadata,
            self._metrics,
            context,
            self._dataset.max_episodes,
        )

    def _loop(
        self, stop: threading.Event, session: _Session, rollout: Rollout, outbox: Outbox, refresh_steps: int
    ) -> None:
        # The first pull completes before acting; later ones run while the actor steps.
        session.start_refresh(rollout)
        session.finish_refresh(stop, rollout.stats.episodes, wait=True)
        rng = np.random.default_rng(session.seed)

        def act(observations: NDArray[Any]) -> tuple[NDArray[Any], dict[str, NDArray[Any]]]:
            return session.policy.act_recorded(observations, session.exploration, rng)

        # Per step the loop only steps and collects; metrics and the next pull are taken
        # care of every refresh_steps steps, so the bookkeeping costs nothing per transition.
        reported = _Reported(session.steps, rollout.stats.episodes)
        next_refresh = session.steps + refresh_steps
        next_pull_s = time.monotonic() + _MIN_PULL_INTERVAL_S
        try:
            while not stop.is_set():
                outbox.add(rollout.step_recorded(act))
                session.steps += rollout.num_environments
                if session.steps >= next_refresh and (now_s := time.monotonic()) >= next_pull_s:
                    next_refresh = session.steps + refresh_steps
                    next_pull_s = now_s + _MIN_PULL_INTERVAL_S
                    self._report(session, rollout, reported)
                    session.start_refresh(rollout)
                session.finish_refresh(stop, rollout.stats.episodes)
                if outbox.ready():
                    outbox.send(session.policy)
        finally:
            self._report(session, rollout, reported)

    def _report(self, session: _Session, rollout: Rollout, reported: _Reported) -> None:
        """Adds the steps and episodes since the last report to the metrics."""
        self._metrics.steps.inc(session.steps - reported.steps)
        reported.steps = session.steps
        if rollout.stats.episodes != reported.episodes:
            self._metrics.episodes.inc(rollout.stats.episodes - reported.episodes)
            self._metrics.episode_return.set(rollout.stats.last_return)
            reported.episodes = rollout.stats.episodes


@dataclass
class _Reported:
    """What the actor's metrics count so far."""

    steps: int
    episodes: int


class _Session:
    """The actor's registration and policy, renewed when the learner forgets it."""

    def __init__(
        self,
        learner: LearnerClient,
        registration: learner_pb2.RegisterActorResponse,
        policy: ActingPolicy,
        metrics: ActorMetrics,
        client_name: str,
        transport: Transport,
    ) -> None:
        self._learner = learner
        self._transport = transport
        self._metrics = metrics
        self._client_name = client_name
        self.policy = policy
        self._exploration_kind = family_for_wire(registration.spec.algorithm).exploration_kind
        self.version = 0
        self.lineage = ""  # of version: the learner's incarnation that numbered it
        self.steps = 0
        # Every actor explores differently: its seed derives from the run's and its first id.
        self.seed = int(registration.spec.seed) + 10_007 * registration.actor_id
        self._pull: Reply | None = None
        self._adopt(registration, episodes=0)

    def _adopt(self, registration: learner_pb2.RegisterActorResponse, episodes: int) -> None:
        setting = exploration_from_wire(registration.exploration)
        if setting is None or setting.kind != self._exploration_kind:
            raise ValueError(
                f"the learner gave this actor the exploration setting {setting}, "
                f"but its algorithm explores by {self._exploration_kind}"
            )
        self.actor_id = registration.actor_id
        self.exploration: ExplorationSetting = setting
        # Progress is reported per registration: the learner sums each registration's own counts.
        self._steps_at_registration = self.steps
        self._episodes_at_registration = episodes
        self._metrics.exploration.set(setting.value)

    def start_refresh(self, rollout: Rollout) -> None:
        """Starts pulling newer parameters (a heartbeat too) unless a pull is under way."""
        if self._pull is not None:
            return
        progress = learner_pb2.ActorProgress(
            environment_steps=self.steps - self._steps_at_registration,
            episodes=rollout.stats.episodes - self._episodes_at_registration,
            last_episode_return=rollout.stats.last_return,
        )
        request = parameters_request(self.version, self.actor_id, progress, known_lineage=self.lineage)
        self._pull = self._transport.pull(request.SerializeToString())

    def cancel_refresh(self) -> None:
        """Abandons a pull under way (the actor is stopping)."""
        self._pull = None  # its reply, when it comes, is not read

    def finish_refresh(self, stop: threading.Event, episodes: int, wait: bool = False) -> None:
        """Adopts the pull's parameters once it is done (or waits for it); re-registers if forgotten.

        ``episodes`` is the rollout's episode count now, where a new registration's count starts.
        """
        if self._pull is None or not (wait or self._pull.done()):
            return
        pull, self._pull = self._pull, None
        try:
            parameters = _parameters_of(pull)
        except NotRegisteredError:
            registration = self._learner.register(learner_pb2.CLIENT_ROLE_ACTOR, self._client_name, stop)
            if registration is not None:
                self._adopt(registration, episodes)
                logger.info("re-registered actor_id=%d exploration=%s", self.actor_id, self.exploration)
            return
        except grpc.RpcError as error:
            # Keep acting with the parameters held; the next refresh tries again.
            logger.warning("parameter refresh failed code=%s", error.code().name)
            return
        if parameters is not None:
            if parameters.lineage == self.lineage:  # across lineages the numbers do not compare
                self._metrics.parameter_lag.set(parameters.version - self.version)
            self.policy.load_parameters(parameters.state_dict)
            self.version, self.lineage = parameters.version, parameters.lineage
            self._metrics.parameter_version.set(self.version)


def _parameters_of(pull: Reply) -> Parameters | None:
    """A pull's parameters (None when current), or its failure as LearnerClient.get_parameters raises it."""
    try:
        reply = pull.result()
    except grpc.RpcError as error:
        raise not_registered_or(error) from error
    assert reply is not None  # a pull's reply has its bytes
    return parameters_from(learner_pb2.GetParametersResponse.FromString(reply))
