"""The ``apexrl learner`` command: reads the experiment config, trains and serves until SIGTERM or Ctrl-C."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from services.algorithms.experiment import load_experiment
from services.common.config import ConfigError
from services.common.logs import configure_logging
from services.common.security import (
    SecurityError,
    TlsCaOption,
    TlsCertOption,
    TlsKeyOption,
    TokenFileOption,
    configure_from_flags,
)
from services.common.signals import exit_without_teardown, install_stop_handlers, wait_until_stopped

if TYPE_CHECKING:
    from services.algorithms.experiment import ExperimentConfig
    from services.learner.group import GroupSettings

logger = logging.getLogger(__name__)

_ENV = "APEXRL_LEARNER_"


_INDEX = "{index}"


def _address_list(addresses: str) -> tuple[str, ...]:
    return tuple(address.strip() for address in addresses.split(",") if address.strip())


def replay_addresses(addresses: str, shards: int | None = None, option: str = "--replay") -> tuple[str, ...]:
    """The shard addresses of ``--replay``: a comma-separated list, or with ``shards`` a pattern.

    A pattern holds ``{index}``, which runs over 0 .. shards - 1: the names a StatefulSet
    gives its pods (``replay-{index}.replay:50051``). ConfigError for a pattern without
    a count, or a count without a pattern.
    """
    listed = _address_list(addresses)
    if shards is None:
        if any(_INDEX in address for address in listed):
            raise ConfigError(
                f"{option} {addresses!r} is a pattern: give --replay-shards N to expand {_INDEX}"
            )
        return listed
    if len(listed) != 1 or _INDEX not in listed[0]:
        raise ConfigError(
            f"--replay-shards {shards} expands a pattern: {option} must be one address holding {_INDEX} "
            f"(for example replay-{_INDEX}.replay:50051), not {addresses!r}"
        )
    return tuple(listed[0].replace(_INDEX, str(index)) for index in range(shards))


def learner_command(
    config: Annotated[
        str | None, typer.Argument(envvar=_ENV + "CONFIG", help="Experiment YAML file or preset name.")
    ] = None,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="Override a config value: section.key=value.")
    ] = None,
    replay: Annotated[
        str, typer.Option(envvar=_ENV + "REPLAY", help="Comma-separated host:port of every replay shard.")
    ] = "",
    replay_shards: Annotated[
        int | None,
        typer.Option(
            envvar=_ENV + "REPLAY_SHARDS",
            min=1,
            help="Expand {index} in --replay (and --advertise-replay) to 0 .. N-1: shards named by a "
            "pattern, as a StatefulSet names its pods.",
        ),
    ] = None,
    advertise_replay: Annotated[
        str,
        typer.Option(
            envvar=_ENV + "ADVERTISE_REPLAY",
            help="The shards as actors reach them, same order as --replay (default: --replay).",
        ),
    ] = "",
    run_dir: Annotated[
        Path, typer.Option(envvar=_ENV + "RUN_DIR", help="Checkpoints, metrics, best model.")
    ] = Path("runs/learner"),
    learning_curve: Annotated[
        bool,
        typer.Option(
            envvar=_ENV + "LEARNING_CURVE",
            help="Draw RUN_DIR/learning_curve.png when stopped (apexrl run draws it itself).",
        ),
    ] = True,
    host: Annotated[str, typer.Option(envvar=_ENV + "HOST", help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar=_ENV + "PORT", help="gRPC port; 0 picks a free one.")] = 0,
    metrics_port: Annotated[
        int | None, typer.Option(envvar=_ENV + "METRICS_PORT", help="HTTP /metrics /healthz /readyz port.")
    ] = None,
    metrics_host: Annotated[
        str | None,
        typer.Option(envvar=_ENV + "METRICS_HOST", help="Interface of the HTTP endpoint (default: --host)."),
    ] = None,
    group_size: Annotated[
        int,
        typer.Option(
            envvar=_ENV + "GROUP_SIZE",
            min=1,
            help="Learners training together, data-parallel (torch.distributed); each takes 1/N of a batch.",
        ),
    ] = 1,
    group_rank: Annotated[
        int,
        typer.Option(
            envvar=_ENV + "GROUP_RANK",
            min=0,
            help="This learner's rank: 0 serves, publishes and checkpoints; the others only train.",
        ),
    ] = 0,
    group_address: Annotated[
        str,
        typer.Option(envvar=_ENV + "GROUP_ADDRESS", help="host:port where rank 0 meets the group."),
    ] = "",
    token_file: TokenFileOption = None,
    tls_cert: TlsCertOption = None,
    tls_key: TlsKeyOption = None,
    tls_ca: TlsCaOption = None,
    log_level: Annotated[str, typer.Option(envvar="APEXRL_LOG_LEVEL", help="Logging level.")] = "INFO",
) -> None:
    """Run the learner: sample the shards, train the experiment's algorithm, publish parameters."""
    configure_logging("learner", log_level)
    # Handlers first: a SIGTERM right after the start-up line must still drain cleanly.
    stop = install_stop_handlers()
    from services.learner.group import GroupError, GroupSettings  # torch: imported only by this role
    from services.learner.learner import Learner, LearnerSettings

    failures: list[str] = []

    def failed(reason: str) -> None:
        failures.append(reason)
        stop.set()

    try:
        addresses = replay_addresses(replay, replay_shards)
        pattern = _INDEX in advertise_replay
        advertised = replay_addresses(
            advertise_replay, replay_shards if pattern else None, "--advertise-replay"
        )
        configure_from_flags(token_file, tls_cert, tls_key, tls_ca)
        experiment = load_experiment(config, overrides or [])
        if not addresses:
            raise ConfigError("--replay (or APEXRL_LEARNER_REPLAY) must name at least one shard host:port")
        group = GroupSettings(group_size, group_rank, group_address) if group_size > 1 else None
        if group is not None and group.rank > 0:
            _follow(experiment, addresses, group, stop, metrics_port, metrics_host or host)
        settings = LearnerSettings(
            addresses,
            run_dir,
            host,
            port,
            metrics_port,
            advertised_replay_addresses=advertised,
            metrics_host=metrics_host,
            group=group,
        )
        learner = Learner(experiment, settings, on_failure=failed)
    except (ConfigError, SecurityError, FileNotFoundError, ValueError, GroupError) as error:
        typer.echo(f"apexrl learner: {error}", err=True)
        raise typer.Exit(2) from None
    logger.info("learner serving address=%s metrics_port=%s", learner.address, learner.metrics_port)
    wait_until_stopped(stop)
    learner.stop()
    if learning_curve:
        from services.learner.learning_curve import plot_learning_curve  # matplotlib: only now

        csv_path = learner.run_log.csv_path
        plot_learning_curve(csv_path, run_dir / "learning_curve.png", experiment.environment.id)
    if failures:
        typer.echo(f"apexrl learner: {failures[0]}", err=True)
    exit_without_teardown(1 if failures else 0)


def _follow(
    experiment: ExperimentConfig,
    addresses: tuple[str, ...],
    group: GroupSettings,
    stop: threading.Event,
    metrics_port: int | None,
    metrics_host: str,
) -> NoReturn:
    """Rank 1 .. N-1: trains with the group, then waits to be stopped; exits 1 if the group failed.

    It serves no RPC; with ``metrics_port``, its HTTP endpoint (/metrics, /healthz) for probes.
    """
    from services.common.http_endpoint import HttpEndpoint
    from services.learner.follower import Follower

    follower = Follower(experiment, addresses, group)
    http = None
    if metrics_port is not None:
        http = HttpEndpoint(follower.metrics.registry, lambda: True, metrics_host, metrics_port).start()
    logger.info("learner following rank=%d size=%d", group.rank, group.size)
    follower.run(stop)
    if follower.failure is None:
        wait_until_stopped(stop)  # the group is done: stay up until told to stop, as rank 0 does
    follower.close()
    if http is not None:
        http.stop()
    if follower.failure is not None:
        typer.echo(f"apexrl learner: {follower.failure}", err=True)
    exit_without_teardown(1 if follower.failure is not None else 0)
