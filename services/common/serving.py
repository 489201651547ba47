"""gRPC server start-up shared by every service: health, reflection, message limits, graceful stop."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Coroutine, Sequence
from concurrent import futures
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common.security import AsyncTokenInterceptor, SecuritySettings, TokenInterceptor, current

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

MIB = 1 << 20
DEFAULT_MAX_MESSAGE_BYTES = 64 * MIB


@dataclass(frozen=True)
class ServerSettings:
    """Where and how a service listens."""

    host: str = "127.0.0.1"
    port: int = 0
    max_workers: int = 16
    # Calls a thread-pool server holds at once, running or queued for a worker; past it,
    # RESOURCE_EXHAUSTED. Above any realistic count of clients (64 actors and a learner
    # are far below), so a busy shard queues calls instead of refusing them.
    max_concurrent_rpcs: int = 1024
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    grace_s: float = 5.0
    # Connection limits (docs/operations.md lists them with the clients' matching ones).
    max_concurrent_streams: int = 256  # per client connection
    max_connection_age_s: float = 600.0  # then clients reconnect, and rebalance to new servers
    max_connection_age_grace_s: float = 60.0  # for calls under way when the age is reached
    keepalive_s: float = 30.0  # the server pings a connection idle this long ...
    keepalive_timeout_s: float = 10.0  # ... and drops it when no answer comes this soon

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        if self.max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, got {self.max_workers}")
        if self.max_message_bytes < 1024:
            raise ValueError(f"max_message_bytes must be >= 1024, got {self.max_message_bytes}")


def message_size_options(max_message_bytes: int) -> list[tuple[str, int]]:
    """Explicit limits in both directions, the same on servers and channels."""
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]


class RunningServer:
    """A started server, its bound port and its health status."""

    def __init__(
        self,
        server: grpc.Server,
        port: int,
        health_servicer: health.HealthServicer,
        services: Sequence[str],
    ) -> None:
        self.server = server
        self.port = port
        self._health = health_servicer
        self._services = list(services)

    def set_serving(self, serving: bool) -> None:
        """Reports SERVING or NOT_SERVING for the whole server and each service."""
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in ["", *self._services]:
            self._health.set(service, status)

    def stop(self, grace_s: float) -> None:
        """Fails health checks first, lets in-flight calls finish for ``grace_s``, then stops."""
        self.set_serving(False)
        self.server.stop(grace_s).wait()


# Clients ping no more often than this (services/common/channels.py); the server allows it.
CLIENT_KEEPALIVE_S = 60.0


def _server_options(settings: ServerSettings) -> list[tuple[str, int]]:
    milliseconds = [
        ("grpc.max_connection_age_ms", settings.max_connection_age_s),
        ("grpc.max_connection_age_grace_ms", settings.max_connection_age_grace_s),
        ("grpc.keepalive_time_ms", settings.keepalive_s),
        ("grpc.keepalive_timeout_ms", settings.keepalive_timeout_s),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", CLIENT_KEEPALIVE_S / 2),
    ]
    return [
        *message_size_options(settings.max_message_bytes),
        ("grpc.so_reuseport", 0),
        ("grpc.max_concurrent_streams", settings.max_concurrent_streams),
        ("grpc.keepalive_permit_without_calls", 1),
        *((name, round(seconds * 1000)) for name, seconds in milliseconds),
    ]


def _reflected(service_names: Sequence[str]) -> list[str]:
    health_service = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
    return [*service_names, health_service, reflection.SERVICE_NAME]


def _bind(server: grpc.Server | grpc.aio.Server, settings: ServerSettings, security: SecuritySettings) -> int:
    address = f"{settings.host}:{settings.port}"
    credentials = security.server_credentials()
    port = (
        server.add_insecure_port(address)
        if credentials is None
        else server.add_secure_port(address, credentials)
    )
    if port == 0:
        raise OSError(f"cannot bind gRPC server to {address}")
    return port


def _log_started(
    settings: ServerSettings, port: int, service_names: Sequence[str], security: SecuritySettings
) -> None:
    logger.info(
        "grpc server started address=%s:%d services=%s tls=%s token=%s",
        settings.host,
        port,
        ",".join(service_names),
        security.tls,
        security.token_file is not None,
    )


def start_server(
    register: Callable[[grpc.Server], None],
    service_names: Sequence[str],
    settings: ServerSettings,
    serving: bool = True,
    security: SecuritySettings | None = None,
) -> RunningServer:
    """Builds, binds and starts a server with health and reflection; ``register`` adds the servicers.

    ``security``: the process's (:func:`services.common.security.current`) unless given.
    """
    security = security if security is not None else current()
    token = security.token()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=settings.max_workers, thread_name_prefix="grpc"),
        interceptors=[TokenInterceptor(token)] if token else None,
        options=_server_options(settings),
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
    )
    register(server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(_reflected(service_names), server)
    port = _bind(server, settings, security)
    server.start()
    running = RunningServer(server, port, health_servicer, service_names)
    running.set_serving(serving)
    _log_started(settings, port, service_names, security)
    return running


class AsyncServer:
    """A grpc.aio server on an event loop of its own thread, for services with long-lived streams.

    A thread-pool server pins one worker thread to each open stream, so a few
    dozen watchers starve every other call; here a stream is a coroutine waiting
    on the loop, and thousands of them cost no threads. ``register`` runs on the
    loop, so servicers can create their asyncio primitives there.
    """

    def __init__(
        self,
        register: Callable[[grpc.aio.Server], None],
        service_names: Sequence[str],
        settings: ServerSettings,
        serving: bool = True,
        security: SecuritySettings | None = None,
    ) -> None:
        self._settings = settings
        self._security = security if security is not None else current()
        self._services = list(service_names)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="grpc-aio", daemon=True)
        self._thread.start()
        self._health = health.aio.HealthServicer()
        try:
            self.server, self.port = self.run(self._start(register))
        except BaseException:
            self._close_loop()
            raise
        self.set_serving(serving)
        _log_started(settings, self.port, service_names, self._security)

    async def _start(self, register: Callable[[grpc.aio.Server], None]) -> tuple[grpc.aio.Server, int]:
        token = self._security.token()
        server = grpc.aio.server(
            interceptors=[AsyncTokenInterceptor(token)] if token else None,
            options=_server_options(self._settings),
        )
        register(server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(_reflected(self._services), server)
        port = _bind(server, self._settings, self._security)
        await server.start()
        return server, port

    def run(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        """Runs ``coroutine`` on the server's loop and waits for its result (from any other thread)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )

        async def set_all() -> None:
            for service in ["", *self._services]:
                await self._health.set(service, status)

        self.run(set_all())

    def stop(self, grace_s: float) -> None:
        """Fails health checks first, lets in-flight calls finish for ``grace_s``, then stops."""
        self.set_serving(False)
        self.run(self.server.stop(grace_s))
        self._close_loop()

    def _close_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
