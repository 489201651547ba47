"""A docker-compose.yml stack driven from the host: compose commands, containers, logs, status and metrics."""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from apexrl.learner.v1 import learner_pb2, learner_pb2_grpc
from services.common.channels import create_channel
from services.common.security import SecuritySettings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
SERVICES = ("replay", "learner", "actor", "evaluator")

T = TypeVar("T")

# Host ports the stack publishes (docker-compose.yml variables); the test picks free ones.
# The marks of every compose test module: slow, and run only by make compose-test.
COMPOSE_TEST_MARKS = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("APEXRL_COMPOSE_TEST") != "1",
        reason="drives Docker and the images of make images; run it with make compose-test",
    ),
]
PORT_VARIABLES = (
    "APEXRL_LEARNER_PORT",
    "APEXRL_LEARNER_METRICS_PORT",
    "APEXRL_REPLAY_0_PORT",
    "APEXRL_REPLAY_0_METRICS_PORT",
    "APEXRL_REPLAY_1_PORT",
    "APEXRL_REPLAY_1_METRICS_PORT",
    "APEXRL_EVALUATOR_METRICS_PORT",
    "APEXRL_PROMETHEUS_PORT",
    "APEXRL_GRAFANA_PORT",
)


def compose_command() -> list[str]:
    """``docker compose`` (v2) if installed, else ``docker-compose`` (v1.29); APEXRL_COMPOSE overrides."""
    chosen = os.environ.get("APEXRL_COMPOSE")
    if chosen:
        return shlex.split(chosen)
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
    return ["docker", "compose"] if probe.returncode == 0 else ["docker-compose"]


def free_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1 now (all bound at once, so they are distinct)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def docker(*args: str, timeout_s: float = 120) -> str:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout_s, check=False)
    if result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed: {result.stderr.strip()[-2000:]}")
    return result.stdout


def wait_until(condition: Callable[[], T | None], timeout_s: float, what: str, poll_s: float = 2.0) -> T:
    """Polls ``condition`` until it returns a true value, and returns it; fails naming ``what``."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while True:
        try:
            value = condition()
            if value:
                return value
        except (OSError, grpc.RpcError, AssertionError) as error:
            last_error = error
        if time.monotonic() > deadline:
            detail = f" (last error: {last_error})" if last_error else ""
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}{detail}")
        time.sleep(poll_s)


def http_get(url: str, timeout_s: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return str(response.read().decode())


def scrape(url: str) -> dict[str, float]:
    """Unlabelled samples of a /metrics page, by sample name (the first of each name)."""
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(http_get(url)):
        for sample in family.samples:
            samples.setdefault(sample.name, sample.value)
    return samples


class Stopwatch:
    """Named stage times, in order, for the test's report."""

    def __init__(self) -> None:
        self.stages: dict[str, float] = {}
        self.started = time.monotonic()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        print(f"[compose e2e {time.monotonic() - self.started:6.1f} s] {name} ...", flush=True)
        try:
            yield
        finally:
            self.stages[name] = round(time.monotonic() - started, 1)
            print(f"[compose e2e] {name}: {self.stages[name]} s", flush=True)


class ComposeStack:
    """One compose project of docker-compose.yml, on free host ports, named ``project``."""

    def __init__(
        self,
        project: str,
        extra_environment: Mapping[str, str] | None = None,
        override_files: Sequence[Path] = (),
        security: SecuritySettings | None = None,
    ) -> None:
        """``override_files`` go after docker-compose.yml; ``security``: how the test's client connects."""
        self.project = project
        self._files = [COMPOSE_FILE, *override_files]
        self.command = compose_command()
        ports = free_ports(len(PORT_VARIABLES))
        self.ports = dict(zip(PORT_VARIABLES, ports, strict=True))
        self.environment = {
            **os.environ,
            **{name: str(port) for name, port in self.ports.items()},
            **(extra_environment or {}),
        }
        self._channel = create_channel(
            f"127.0.0.1:{self.ports['APEXRL_LEARNER_PORT']}", security=security or SecuritySettings()
        )
        self._learner = learner_pb2_grpc.LearnerServiceStub(self._channel)

    def compose(self, *args: str, timeout_s: float = 300) -> str:
        """Runs a compose command on this project; AssertionError with its output if it fails."""
        files = [argument for path in self._files for argument in ("-f", str(path))]
        command = [*self.command, *files, "-p", self.project, *args]
        result = subprocess.run(
            command,
            cwd=ROOT,
            env=self.environment,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        if result.returncode != 0:
            output = result.stdout[-3000:] + result.stderr[-3000:]
            raise AssertionError(f"{' '.join(command)} exited {result.returncode}:\n{output}")
        return result.stdout + result.stderr

    def containers(self, service: str | None = None, running_only: bool = False) -> list[str]:
        """Container ids of the project (or of one service), by compose's labels (the same in v1 and v2)."""
        filters = ["--filter", f"label=com.docker.compose.project={self.project}"]
        if service is not None:
            filters += ["--filter", f"label=com.docker.compose.service={service}"]
        listing = docker("ps", "--quiet", "--no-trunc", *([] if running_only else ["--all"]), *filters)
        return listing.split()

    def inspect(self, container: str) -> dict[str, Any]:
        details: list[dict[str, Any]] = json.loads(docker("inspect", container))
        return details[0]

    def logs(self, container: str) -> str:
        result = subprocess.run(
            ["docker", "logs", container], capture_output=True, text=True, timeout=60, check=False
        )
        return result.stdout + result.stderr

    def save_logs(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for container in self.containers():
            details = self.inspect(container)
            name = details["Name"].lstrip("/")
            (folder / f"{name}.log").write_text(self.logs(container), encoding="utf-8")

    def status(self) -> learner_pb2.GetStatusResponse:
        reply: learner_pb2.GetStatusResponse = self._learner.GetStatus(
            learner_pb2.GetStatusRequest(), timeout=5
        )
        return reply

    def status_if(
        self, predicate: Callable[[learner_pb2.GetStatusResponse], bool]
    ) -> learner_pb2.GetStatusResponse | None:
        """The learner's status if ``predicate`` holds for it, else None (for :func:`wait_until`)."""
        status = self.status()
        return status if predicate(status) else None

    def metrics(self, port_variable: str) -> dict[str, float]:
        return scrape(f"http://127.0.0.1:{self.ports[port_variable]}/metrics")

    def prometheus(self, path: str, **parameters: str) -> Any:
        """The ``data`` of a Prometheus HTTP API answer (``/api/v1/...``)."""
        query = f"?{urllib.parse.urlencode(parameters)}" if parameters else ""
        url = f"http://127.0.0.1:{self.ports['APEXRL_PROMETHEUS_PORT']}{path}{query}"
        answer = json.loads(http_get(url))
        assert answer["status"] == "success", answer
        return answer["data"]

    def close(self) -> None:
        self._channel.close()


@contextmanager
def running(stack: ComposeStack, actors: int, logs: str) -> Iterator[ComposeStack]:
    """``stack`` up with ``actors`` actors (leftovers of an earlier run removed first); at the
    end its logs saved to build/``logs`` and everything, volumes included, removed."""
    stack.compose("down", "--volumes", "--remove-orphans")
    try:
        stack.compose("up", "-d", "--scale", f"actor={actors}")
        yield stack
    finally:
        if stack.containers():
            stack.save_logs(ROOT / "build" / logs)
        stack.compose("down", "--volumes", "--remove-orphans")
        stack.close()


def actor_records(status: learner_pb2.GetStatusResponse) -> list[learner_pb2.ActorStatus]:
    return [actor for actor in status.actors if actor.role == learner_pb2.CLIENT_ROLE_ACTOR]


def describe(status: learner_pb2.GetStatusResponse) -> str:
    """One line of the figures the test waits on, for its progress output and failure messages."""
    return (
        f"updates={status.updates} updates/s={status.updates_per_second:.1f} "
        f"steps={status.environment_steps} steps/s={status.environment_steps_per_second:.0f} "
        f"version={status.parameter_version} replay={status.replay_size}/{status.replay_capacity} "
        f"shards_up={status.replay_shards_up} actors={len(actor_records(status))} "
        f"evaluation={status.latest_evaluation.mean_return:.1f} best={status.best_evaluation.mean_return:.1f}"
    )


def image_sizes(images: Sequence[str]) -> dict[str, int]:
    return {image: int(docker("image", "inspect", "--format", "{{.Size}}", image)) for image in images}
