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
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    grace_s: float = 5.0

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


def _server_options(settings: ServerSettings) -> list[tuple[str, int]]:
    return [*message_size_options(settings.max_message_bytes), ("grpc.so_reuseport", 0)]


def _reflected(service_names: Sequence[str]) -> list[str]:
    health_service = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
    return [*service_names, health_service, reflection.SERVICE_NAME]


def _bind(server: grpc.Server | grpc.aio.Server, settings: ServerSettings) -> int:
    address = f"{settings.host}:{settings.port}"
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot bind gRPC server to {address}")
    return port


def _log_started(settings: ServerSettings, port: int, service_names: Sequence[str]) -> None:
    logger.info("grpc server started address=%s:%d services=%s", settings.host, port, ",".join(service_names))


def start_server(
    register: Callable[[grpc.Server], None],
    service_names: Sequence[str],
    settings: ServerSettings,
    serving: bool = True,
) -> RunningServer:
    """Builds, binds and starts a server with health and reflection; ``register`` adds the servicers."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=settings.max_workers, thread_name_prefix="grpc"),
        options=_server_options(settings),
        maximum_concurrent_rpcs=settings.max_workers * 4,
    )
    register(server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(_reflected(service_names), server)
    port = _bind(server, settings)
    server.start()
    running = RunningServer(server, port, health_servicer, service_names)
    running.set_serving(serving)
    _log_started(settings, port, service_names)
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
    ) -> None:
        self._settings = settings
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
        _log_started(settings, self.port, service_names)

    async def _start(self, register: Callable[[grpc.aio.Server], None]) -> tuple[grpc.aio.Server, int]:
        server = grpc.aio.server(options=_server_options(self._settings))
        register(server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(_reflected(self._services), server)
        port = _bind(server, self._settings)
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
