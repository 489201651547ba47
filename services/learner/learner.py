"""A running learner: trainer, replay feed, parameter store, gRPC service and HTTP endpoint wired together."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import torch
import yaml
from safetensors.numpy import save_file

from services.algorithms.experiment import ExperimentConfig, batch_share
from services.algorithms.families import family_named
from services.algorithms.interface import LearnerCore
from services.common import tensor_codec
from services.common.atomic_files import write_atomically
from services.common.environments import describe_environment
from services.common.http_endpoint import HttpEndpoint
from services.common.serving import MIB, AsyncServer, ServerSettings
from services.learner.checkpoint import (
    TrainingCounters,
    latest_checkpoint,
    mismatch,
    save_checkpoint,
    setting_differences,
    tensor_differences,
)
from services.learner.device import resolve_device
from services.learner.feed_process import ReplayFeed
from services.learner.group import GroupSettings, LearnerGroup, feed_seed, group_device
from services.learner.metrics import LearnerMetrics
from services.learner.parameter_store import ParameterStore
from services.learner.progress import Progress
from services.learner.registry import ActorRegistry
from services.learner.run_log import RunLog
from services.learner.servicer import SERVICE_NAME, LearnerServicer, add_to_server
from services.learner.shard_check import check_shards
from services.learner.training import Trainer

logger = logging.getLogger(__name__)

BEST_MODEL = "best_model.safetensors"


@dataclass(frozen=True)
class LearnerSettings:
    """Deployment wiring of a learner (the experiment itself comes from the config)."""

    replay_addresses: tuple[str, ...]
    run_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    metrics_port: int | None = None
    max_message_mib: int = 64
    grace_s: float = 5.0
    # The shard addresses RegisterActor hands out, where actors reach the shards under
    # other names than the learner does (actors on other machines, published container
    # ports); empty: replay_addresses. Same shards, same order.
    advertised_replay_addresses: tuple[str, ...] = ()
    # A client (actor or evaluator) silent this long is forgotten and frees its rung.
    client_expiry_s: float = 30.0
    # How long the start-up check waits for each shard's GetInfo; one that does not answer
    # in time is logged and not checked (training waits for it as for any shard that is down).
    shard_check_timeout_s: float = 30.0
    # The HTTP endpoint's interface; None: host.
    metrics_host: str | None = None
    # Rank 0 of a data-parallel learner group (services/learner/group.py); None: a learner alone.
    group: GroupSettings | None = None


def config_yaml(config: ExperimentConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


class Learner:
    """Starts training and serving on construction (resuming from the run's latest checkpoint)."""

    def __init__(
        self,
        config: ExperimentConfig,
        settings: LearnerSettings,
        on_failure: Callable[[str], None] | None = None,
    ) -> None:
        """``on_failure`` hears why training stopped for good (a learner group that failed)."""
        if not settings.replay_addresses:
            raise ValueError("the learner needs at least one replay shard address")
        advertised = settings.advertised_replay_addresses
        if advertised and len(advertised) != len(settings.replay_addresses):
            raise ValueError(
                f"{len(advertised)} advertised replay addresses for {len(settings.replay_addresses)} "
                f"shards: name the same shards in the same order ({list(advertised)} for "
                f"{list(settings.replay_addresses)})"
            )
        self.config = config
        self.settings = settings
        settings.run_dir.mkdir(parents=True, exist_ok=True)
        (settings.run_dir / "config.yaml").write_text(config_yaml(config), encoding="utf-8")
        self._checkpoint_lock = threading.Lock()
        check_shards(list(settings.replay_addresses), config.algorithm, settings.shard_check_timeout_s)
        self.family = family_named(config.algorithm.name)
        self.core, counters = self._restore_or_create()
        self.group: LearnerGroup | None = None
        if settings.group is not None:
            if settings.group.rank != 0:
                raise ValueError("the learner service is rank 0 of its group; the others run as followers")
            self.group = LearnerGroup(settings.group, self.device)
            self.group.share_state(self.core)
        self.store = ParameterStore(first_version=counters.parameter_version)
        self.store.publish(self.core.actor_parameters(), self.core.policy_parameters(), self.core.updates)
        self.registry = ActorRegistry(
            lambda rung: self.family.exploration(config.algorithm, rung),
            expiry_s=settings.client_expiry_s,
            base_environment_steps=counters.environment_steps,
            first_actor_id=counters.next_actor_id,
        )
        self.progress = Progress(config.general, counters.elapsed_s, counters.best_mean_return)
        self.metrics = LearnerMetrics()
        self.run_log = RunLog(settings.run_dir)
        addresses = list(settings.replay_addresses)
        self.feed = ReplayFeed(
            addresses,
            batch_share(config.algorithm.batch_size, settings.group.size if settings.group else 1),
            self.core.importance_exponent(),
            config.algorithm.min_replay_size,
            seed=feed_seed(config.general.seed, settings.group),
            batches_per_request=config.algorithm.batches_per_sample_request,
        ).start()
        self.trainer = Trainer(
            config,
            self.core,
            self.feed,
            self.store,
            self.registry,
            self.progress,
            self.metrics,
            self.run_log,
            self.save_checkpoint,
            self.group,
            on_failure,
        )
        self._server = self._start_server(addresses)
        self.port = self._server.port
        self._http: HttpEndpoint | None = None
        if settings.metrics_port is not None:
            self._http = HttpEndpoint(
                self.metrics.registry,
                lambda: True,
                settings.metrics_host or settings.host,
                settings.metrics_port,
            )
            self._http.start()
        self.trainer.start()

    def _restore_or_create(self) -> tuple[LearnerCore, TrainingCounters]:
        config = self.config
        environment = describe_environment(
            config.environment.id,
            config.environment.options,
            config.environment.frame_stack,
            config.environment.atari_settings(),
        )
        self.family.check_environment(environment)
        device = self.device = group_device(resolve_device(config.general.device), self.settings.group)
        torch.set_num_threads(config.general.learner_threads)
        core = self.family.make_learner(config.algorithm, environment, device, config.general.seed)
        restored = latest_checkpoint(self.checkpoint_dir)
        if restored is None:
            logger.info(
                "starting fresh algorithm=%s device=%s observation_shape=%s actions=%s",
                self.family.name,
                device,
                environment.observation_shape,
                environment.actions,
            )
            return core, TrainingCounters()
        matter, other = setting_differences(restored.config_yaml, config.model_dump(mode="json"))
        problems = matter + tensor_differences(restored.tensors, core.state_tensors())
        if problems:
            raise mismatch(restored.path, problems)
        for change in other:
            logger.info("setting changed since the checkpoint: %s", change)
        counters = restored.counters
        try:
            core.load_state_tensors(restored.tensors, counters.updates)
        except (KeyError, RuntimeError) as error:  # what the checks above cannot see (extra tensors)
            raise mismatch(restored.path, [str(error).strip().replace("\n", " ")]) from error
        logger.info(
            "resumed from checkpoint updates=%d version=%d environment_steps=%d",
            counters.updates,
            counters.parameter_version,
            counters.environment_steps,
        )
        return core, counters

    def _start_server(self, addresses: list[str]) -> AsyncServer:
        def register(server: grpc.aio.Server) -> None:
            servicer = LearnerServicer(
                self.config,
                list(self.settings.advertised_replay_addresses) or addresses,
                self.store,
                self.registry,
                self.progress,
                lambda: self.trainer.snapshot,
                lambda: self.trainer.finished,
                self.save_best,
            )
            add_to_server(servicer, server)

        settings = self.settings
        return AsyncServer(
            register,
            [SERVICE_NAME],
            ServerSettings(
                host=settings.host,
                port=settings.port,
                max_message_bytes=settings.max_message_mib * MIB,
                grace_s=settings.grace_s,
            ),
        )

    @property
    def checkpoint_dir(self) -> Path:
        return self.settings.run_dir / "checkpoints"

    @property
    def address(self) -> str:
        return f"{self.settings.host}:{self.port}"

    @property
    def metrics_port(self) -> int | None:
        return self._http.port if self._http is not None else None

    def counters(self) -> TrainingCounters:
        return TrainingCounters(
            updates=self.core.updates,
            parameter_version=self.store.version,
            environment_steps=self.registry.environment_steps(),
            elapsed_s=self.progress.elapsed_s(),
            next_actor_id=self.registry.next_actor_id,
            best_mean_return=self.progress.best_mean_return,
        )

    def save_checkpoint(self) -> None:
        """Called by the training thread, or after it stopped, so the networks are not mid-update."""
        with self._checkpoint_lock:
            path = save_checkpoint(
                self.checkpoint_dir, self.core.state_tensors(), self.counters(), config_yaml(self.config)
            )
        logger.info("checkpoint saved path=%s updates=%d", path, self.core.updates)

    def save_best(self, version: int) -> None:
        """Saves the parameters of ``version`` as the run's best model."""
        parameters = self.store.get(version)
        if parameters is None:
            logger.warning("best version %d is no longer held; best model not updated", version)
            return
        arrays = {name: array.copy() for name, array in tensor_codec.decode_named(parameters).items()}
        best = self.progress.best
        metadata = {
            "parameter_version": str(version),
            "mean_return": repr(best.mean_return if best else float("nan")),
            "config": config_yaml(self.config),
        }
        path = self.settings.run_dir / BEST_MODEL
        write_atomically(path, lambda temporary: save_file(arrays, str(temporary), metadata=metadata))
        logger.info("best model saved path=%s version=%d", path, version)

    def stop(self) -> None:
        """Stops training, checkpoints and drains the server."""
        self.trainer.stop()
        self.save_checkpoint()
        self.store.close()
        self._server.stop(self.settings.grace_s)
        self.feed.stop()
        if self._http is not None:
            self._http.stop()
        self.run_log.close()
        if self.group is not None:
            self.group.leave()
        logger.info("learner stopped")
