"""The ``apexrl actor`` and ``apexrl evaluator`` commands: need nothing but the learner's address."""

from __future__ import annotations

import logging
import os
import socket
from typing import Annotated

import typer

from services.actor.metrics import ActorMetrics, EvaluatorMetrics
from services.common.http_endpoint import HttpEndpoint
from services.common.logs import configure_logging
from services.common.signals import exit_without_teardown, install_stop_handlers

logger = logging.getLogger(__name__)

_ENV = "APEXRL_ACTOR_"

LearnerOption = Annotated[
    str, typer.Option(envvar=_ENV + "LEARNER", help="host:port of the learner (its usual port is 50050).")
]
MetricsPortOption = Annotated[
    int | None, typer.Option(envvar=_ENV + "METRICS_PORT", help="HTTP /metrics /healthz /readyz port.")
]
LogLevelOption = Annotated[str, typer.Option(envvar="APEXRL_LOG_LEVEL", help="Logging level.")]


def _serve(role: str, learner: str, metrics_port: int | None, log_level: str) -> None:
    # torch and gymnasium: imported only by the roles that use them.
    from services.actor.actor import Actor
    from services.actor.evaluator import Evaluator
    from services.actor.learner_client import LearnerClient

    configure_logging(role, log_level)
    stop = install_stop_handlers()
    client = LearnerClient(learner)
    name = f"{socket.gethostname()}:{os.getpid()}"
    worker: Actor | Evaluator
    if role == "actor":
        actor_metrics = ActorMetrics()
        registry, worker = actor_metrics.registry, Actor(client, name, actor_metrics)
    else:
        evaluator_metrics = EvaluatorMetrics()
        registry, worker = evaluator_metrics.registry, Evaluator(client, name, evaluator_metrics)
    http = (
        HttpEndpoint(registry, lambda: True, "0.0.0.0", metrics_port).start()
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


def actor_command(
    learner: LearnerOption = "127.0.0.1:50050",
    metrics_port: MetricsPortOption = None,
    log_level: LogLevelOption = "INFO",
) -> None:
    """Run an actor: act in environments, stream prioritized n-step transitions to the replay."""
    _serve("actor", learner, metrics_port, log_level)


def evaluator_command(
    learner: LearnerOption = "127.0.0.1:50050",
    metrics_port: MetricsPortOption = None,
    log_level: LogLevelOption = "INFO",
) -> None:
    """Run the evaluator: deterministic episodes with each new parameter version, reported to the learner."""
    _serve("evaluator", learner, metrics_port, log_level)
