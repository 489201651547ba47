"""Server subprocesses for the benchmark, started on a free port and stopped with SIGTERM."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2

from bench.process_memory import memory_field
from bench.workloads import Workload

logger = logging.getLogger(__name__)

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
_HEALTH_CHECK = "/grpc.health.v1.Health/Check"
_REPOSITORY = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A port the kernel just reported free on 127.0.0.1 (another process could still take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class ServerProcess:
    """One server in its own process, on 127.0.0.1:``port``; its log goes to a temporary file."""

    def __init__(self, name: str, arguments: list[str]) -> None:
        self.name = name
        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        self._log = tempfile.NamedTemporaryFile(prefix=f"bench-{name}-", suffix=".log")  # noqa: SIM115
        command = [sys.executable, "-m", *arguments, "--port", str(self.port)]
        logger.info("starting server=%s command=%s", name, " ".join(command))
        self._process = subprocess.Popen(command, cwd=_REPOSITORY, stdout=self._log, stderr=subprocess.STDOUT)
        self._wait_until_serving()

    @property
    def pid(self) -> int:
        return self._process.pid

    def _wait_until_serving(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        with grpc.insecure_channel(self.target) as channel:
            # The typed stubs of grpc_health lack HealthStub.Check; the call is spelled out.
            check = channel.unary_unary(
                _HEALTH_CHECK,
                request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                response_deserializer=health_pb2.HealthCheckResponse.FromString,
            )
            while time.monotonic() < deadline:
                if self._process.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with {self._process.returncode}: {self.log()}")
                try:
                    reply = check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"{self.name} not serving after {READY_TIMEOUT_S} s: {self.log()}")

    def resident_bytes(self) -> int:
        """VmRSS: resident memory now."""
        return memory_field(self.pid, "VmRSS")

    def peak_resident_bytes(self) -> int:
        """VmHWM: the most resident memory since the process started (or the last reset)."""
        return memory_field(self.pid, "VmHWM")

    def reset_peak_resident_bytes(self) -> None:
        """Starts VmHWM again from the resident memory now (Linux: 5 to /proc/PID/clear_refs)."""
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")

    def kill(self) -> None:
        """SIGKILL: for a shard whose final snapshot on SIGTERM would only cost time."""
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._log.close()

    def log(self) -> str:
        return Path(self._log.name).read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        """SIGTERM, as production stops it; SIGKILL if it has not exited in time."""
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                logger.error("server=%s ignored SIGTERM; killing it", self.name)
                self._process.kill()
                self._process.wait()
        self._log.close()


def start_replay(workload: Workload, snapshot_path: Path | None = None) -> ServerProcess:
    """The real replay shard, started as production starts it."""
    arguments = [
        "services.replay",
        "--capacity",
        str(workload.capacity),
        "--priority-exponent",
        "0.6",
        "--min-size-to-sample",
        "1",
    ]
    if snapshot_path is not None:
        arguments += ["--snapshot-path", str(snapshot_path)]
    return ServerProcess("replay", arguments)


def start_echo() -> ServerProcess:
    return ServerProcess("echo", ["bench.echo_service"])
