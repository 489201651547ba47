"""The ``apexrl replay`` command: validates flags, runs one shard until SIGTERM or Ctrl-C."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from services.common.allocator import keep_large_buffers
from services.common.config import ConfigError, validate
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
from services.replay.settings import ReplayShardSettings
from services.replay.shard import ReplayShard

logger = logging.getLogger(__name__)

_ENV = "APEXRL_REPLAY_"
# Options that configure the process, not the shard.
_NOT_SHARD_SETTINGS = ("log_level", "token_file", "tls_cert", "tls_key", "tls_ca")


def replay_command(
    host: Annotated[str, typer.Option(envvar=_ENV + "HOST", help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar=_ENV + "PORT", help="gRPC port; 0 picks a free one.")] = 0,
    metrics_port: Annotated[
        int | None,
        typer.Option(envvar=_ENV + "METRICS_PORT", help="HTTP /metrics /healthz /readyz port."),
    ] = None,
    metrics_host: Annotated[
        str | None,
        typer.Option(envvar=_ENV + "METRICS_HOST", help="Interface of the HTTP endpoint (default: --host)."),
    ] = None,
    capacity: Annotated[int, typer.Option(envvar=_ENV + "CAPACITY", help="Most items held.")] = 1_000_000,
    priority_exponent: Annotated[
        float, typer.Option(envvar=_ENV + "PRIORITY_EXPONENT", help="alpha: P(i) ~ p_i^alpha.")
    ] = 0.6,
    min_size_to_sample: Annotated[
        int, typer.Option(envvar=_ENV + "MIN_SIZE_TO_SAMPLE", help="Items needed before sampling.")
    ] = 1,
    samples_per_insert: Annotated[
        float,
        typer.Option(envvar=_ENV + "SAMPLES_PER_INSERT", help="Sampled per inserted item; 0 = off."),
    ] = 0.0,
    samples_per_insert_tolerance: Annotated[
        float,
        typer.Option(envvar=_ENV + "SAMPLES_PER_INSERT_TOLERANCE", help="Band half-width, in samples."),
    ] = 0.0,
    snapshot_path: Annotated[
        Path | None,
        typer.Option(envvar=_ENV + "SNAPSHOT_PATH", help="Snapshot file, restored on start."),
    ] = None,
    snapshot_interval_s: Annotated[
        float,
        typer.Option(envvar=_ENV + "SNAPSHOT_INTERVAL_S", help="Seconds between snapshots; 0 = on stop."),
    ] = 0.0,
    seed: Annotated[int | None, typer.Option(envvar=_ENV + "SEED", help="Sampling seed.")] = None,
    max_message_mib: Annotated[
        int, typer.Option(envvar=_ENV + "MAX_MESSAGE_MIB", help="Message limit, MiB.")
    ] = 64,
    max_insert_streams: Annotated[
        int,
        typer.Option(
            envvar=_ENV + "MAX_INSERT_STREAMS",
            help="InsertStream calls served at once (a server thread each); more writers insert unary.",
        ),
    ] = 8,
    token_file: TokenFileOption = None,
    tls_cert: TlsCertOption = None,
    tls_key: TlsKeyOption = None,
    tls_ca: TlsCaOption = None,
    log_level: Annotated[str, typer.Option(envvar="APEXRL_LOG_LEVEL", help="Logging level.")] = "INFO",
) -> None:
    """Run one replay shard (prioritized experience replay over gRPC)."""
    values = {name: value for name, value in locals().items() if name not in _NOT_SHARD_SETTINGS}
    configure_logging("replay", log_level)
    # Handlers first: a SIGTERM right after the start-up line must still drain cleanly.
    stop = install_stop_handlers()
    keep_large_buffers()
    try:
        configure_from_flags(token_file, tls_cert, tls_key, tls_ca)
        settings = validate(ReplayShardSettings, values, "apexrl replay flags")
        shard = ReplayShard(settings)
    except (ConfigError, SecurityError, ValueError) as error:
        typer.echo(f"apexrl replay: {error}", err=True)
        raise typer.Exit(2) from None
    logger.info("replay shard serving address=%s metrics_port=%s", shard.address, shard.metrics_port)
    wait_until_stopped(stop)
    shard.stop()
    exit_without_teardown()
