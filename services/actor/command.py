"""The ``apexrl actor`` and ``apexrl evaluator`` commands: need nothing but the learner's address."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from services.actor.metrics import ActorMetrics, EvaluatorMetrics
from services.common.http_endpoint import HttpEndpoint
from services.common.logs import configure_logging
from services.common.security import (
    SecurityError,
    TlsCaOption,
    TlsCertOption,
    TlsKeyOption,
    TokenFileOption,
    configure_from_flags,
)
from services.common.signals import exit_without_teardown, install_stop_handlers

if TYPE_CHECKING:
    from services.actor.actor import DatasetSettings

logger = logging.getLogger(__name__)

_ENV = "APEXRL_ACTOR_"

LearnerOption = Annotated[
    str, typer.Option(envvar=_ENV + "LEARNER", help="host:port of the learner (its usual port is 50050).")
]
MetricsPortOption = Annotated[
    int | None, typer.Option(envvar=_ENV + "METRICS_PORT", help="HTTP /metrics /healthz /readyz port.")
]
MetricsHostOption = Annotated[
    str, typer.Option(envvar=_ENV + "METRICS_HOST", help="Interface of the HTTP endpoint.")
]
LogLevelOption = Annotated[str, typer.Option(envvar="APEXRL_LOG_LEVEL", help="Logging level.")]


def _serve(
    role: str,
    learner: str,
    metrics_port: int | None,
    metrics_host: str,
    log_level: str,
    dataset: DatasetSettings | None = None,
) -> None:
    # torch and gymnasium: imported only by the roles that use them.
    from services.actor.actor import Actor
    from services.actor.evaluator import Evaluator
    from services.actor.learner_client import LearnerClient

    configure_logging(role, log_level)
    stop = install_stop_handlers()
    client = LearnerClient(learner)  # security: the process's, configured by the command
    name = f"{socket.gethostname()}:{os.getpid()}"
    worker: Actor | Evaluator
    if role == "actor":
        actor_metrics = ActorMetrics()
        registry, worker = actor_metrics.registry, Actor(client, name, actor_metrics, dataset)
    else:
        evaluator_metrics = EvaluatorMetrics()
        registry, worker = evaluator_metrics.registry, Evaluator(client, name, evaluator_metrics)
    http = (
        HttpEndpoint(registry, lambda: True, metrics_host, metrics_port).start()
        if metrics_port is not None
        else None
    )
    try:
        worker.run(stop)
    except ValueError as error:
        # The learner's experiment does not fit this client (an algorithm it does not
        # implement, a network that does not fit the environment): say so, do not act.
        typer.echo(f"apexrl {role}: {error}", err=True)
        raise typer.Exit(2) from None
    finally:
        client.close()
        if http is not None:
            http.stop()
    exit_without_teardown()


def _secured(
    token_file: Path | None, tls_cert: Path | None, tls_key: Path | None, tls_ca: Path | None
) -> None:
    try:
        configure_from_flags(token_file, tls_cert, tls_key, tls_ca)
    except SecurityError as error:
        typer.echo(f"apexrl: {error}", err=True)
        raise typer.Exit(2) from None


def actor_command(
    learner: LearnerOption = "127.0.0.1:50050",
    metrics_port: MetricsPortOption = None,
    metrics_host: MetricsHostOption = "0.0.0.0",
    token_file: TokenFileOption = None,
    tls_cert: TlsCertOption = None,
    tls_key: TlsKeyOption = None,
    tls_ca: TlsCaOption = None,
    log_level: LogLevelOption = "INFO",
    dataset_dir: Annotated[
        Path | None,
        typer.Option(
            envvar=_ENV + "DATASET_DIR",
            help="Also write the episodes this actor plays, exploring, as a Minari dataset in this "
            "folder (actor-ID); needs apexrl[datasets].",
        ),
    ] = None,
    dataset_max_episodes: Annotated[
        int,
        typer.Option(
            envvar=_ENV + "DATASET_MAX_EPISODES", min=1, help="Episodes after which the dataset stops."
        ),
    ] = 10_000,
) -> None:
    """Run an actor: act in environments, stream prioritized n-step transitions to the replay."""
    _secured(token_file, tls_cert, tls_key, tls_ca)
    dataset = None
    if dataset_dir is not None:
        from services.actor.actor import DatasetSettings
        from services.datasets.writer import DatasetError, require_minari

        try:
            require_minari()
            dataset_dir.mkdir(parents=True, exist_ok=True)
        except (DatasetError, OSError) as error:
            typer.echo(f"apexrl actor: --dataset-dir {dataset_dir}: {error}", err=True)
            raise typer.Exit(2) from None
        dataset = DatasetSettings(dataset_dir, dataset_max_episodes)
    _serve("actor", learner, metrics_port, metrics_host, log_level, dataset)


def evaluator_command(
    learner: LearnerOption = "127.0.0.1:50050",
    metrics_port: MetricsPortOption = None,
    metrics_host: MetricsHostOption = "0.0.0.0",
    token_file: TokenFileOption = None,
    tls_cert: TlsCertOption = None,
    tls_key: TlsKeyOption = None,
    tls_ca: TlsCaOption = None,
    log_level: LogLevelOption = "INFO",
) -> None:
    """Run the evaluator: deterministic episodes with each new parameter version, reported to the learner."""
    _secured(token_file, tls_cert, tls_key, tls_ca)
    _serve("evaluator", learner, metrics_port, metrics_host, log_level)
