"""A running replay shard: table, gRPC server, HTTP endpoint and snapshot schedule wired together."""

from __future__ import annotations

import logging
import threading
import time

import grpc

from apexrl.replay.v1 import replay_pb2
from services.common.http_endpoint import HttpEndpoint
from services.common.serving import MIB, RunningServer, ServerSettings, start_server
from services.replay.metrics import ReplayMetrics
from services.replay.rate_limiter import RateLimiterSettings
from services.replay.servicer import ReplayServicer, SnapshotResult, add_to_server
from services.replay.settings import ReplayShardSettings
from services.replay.snapshot import load_snapshot, save_snapshot
from services.replay.table import PrioritizedTable

logger = logging.getLogger(__name__)

SERVICE_NAME = replay_pb2.DESCRIPTOR.services_by_name["ReplayService"].full_name


def _open_table(settings: ReplayShardSettings) -> PrioritizedTable:
    limiter = RateLimiterSettings(
        min_size_to_sample=settings.min_size_to_sample,
        samples_per_insert=settings.samples_per_insert,
        tolerance=settings.samples_per_insert_tolerance,
    )
    state = None
    path = settings.snapshot_path
    if path is not None and path.exists():
        started = time.perf_counter()
        state = load_snapshot(path)
        table = PrioritizedTable(settings.capacity, settings.priority_exponent, limiter, settings.seed, state)
        logger.info(
            "snapshot loaded path=%s items=%d seconds=%.2f",
            path,
            state.rows,
            time.perf_counter() - started,
        )
        return table
    return PrioritizedTable(settings.capacity, settings.priority_exponent, limiter, settings.seed)


class ReplayShard:
    """Starts serving on construction; :meth:`stop` drains, snapshots and shuts down."""

    def __init__(self, settings: ReplayShardSettings) -> None:
        self.settings = settings
        self.table = _open_table(settings)
        self.metrics = ReplayMetrics(self.table)
        self._snapshot_lock = threading.Lock()
        self._stopping = threading.Event()
        servicer = ReplayServicer(
            self.table,
            self.metrics,
            settings.max_message_mib * MIB,
            self.save_snapshot if settings.snapshot_path is not None else None,
            settings.max_insert_streams,
        )

        def register(server: grpc.Server) -> None:
            add_to_server(servicer, server)

        self._server: RunningServer = start_server(
            register,
            [SERVICE_NAME],
            ServerSettings(
                host=settings.host,
                port=settings.port,
                max_workers=settings.max_workers,
                max_message_bytes=settings.max_message_mib * MIB,
                grace_s=settings.grace_s,
            ),
        )
        self.port = self._server.port
        self._http: HttpEndpoint | None = None
        if settings.metrics_port is not None:
            self._http = HttpEndpoint(
                self.metrics.registry,
                lambda: not self._stopping.is_set(),
                settings.metrics_host or settings.host,
                settings.metrics_port,
            ).start()
        self._snapshotter: threading.Thread | None = None
        if settings.snapshot_path is not None and settings.snapshot_interval_s > 0:
            self._snapshotter = threading.Thread(target=self._snapshot_loop, name="snapshots", daemon=True)
            self._snapshotter.start()

    @property
    def metrics_port(self) -> int | None:
        return self._http.port if self._http is not None else None

    @property
    def address(self) -> str:
        return f"{self.settings.host}:{self.port}"

    def save_snapshot(self) -> SnapshotResult:
        """Streams the table to its snapshot file, a chunk under the lock at a time (one writer at a time)."""
        path = self.settings.snapshot_path
        if path is None:
            raise ValueError("no snapshot path configured")
        with self._snapshot_lock:
            started = time.perf_counter()
            written = save_snapshot(self.table, path)
            seconds = time.perf_counter() - started
            logger.info(
                "snapshot saved path=%s items=%d bytes=%d seconds=%.2f longest_pause_s=%.4f",
                path,
                written.rows,
                written.bytes,
                seconds,
                written.longest_pause_s,
            )
            return SnapshotResult(str(path), written.rows, written.bytes, written.longest_pause_s, seconds)

    def _snapshot_loop(self) -> None:
        while not self._stopping.wait(self.settings.snapshot_interval_s):
            try:
                self.save_snapshot()
            except OSError as error:
                logger.error("snapshot failed path=%s error=%s", self.settings.snapshot_path, error)

    def stop(self, snapshot: bool = True) -> None:
        """Fails health, lets calls drain, writes a final snapshot, stops the endpoints."""
        self._stopping.set()
        self._server.stop(self.settings.grace_s)
        if snapshot and self.settings.snapshot_path is not None:
            self.save_snapshot()
        if self._http is not None:
            self._http.stop()
        logger.info("replay shard stopped port=%d", self.port)
