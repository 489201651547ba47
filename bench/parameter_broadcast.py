"""Parameter broadcast: delivery latency of a new version to 1, 100 and 1,000 watchers, and pull throughput.

Usage: ``.venv/bin/python bench/parameter_broadcast.py [--watchers 1,100,1000] [--versions 20]
[--pullers 256] [--seconds 10] [--preset cartpole]``. One JSON object per line on stdout.

A real learner (its gRPC service on the grpc.aio loop) runs in this process, with
a real replay shard; the clients run in a process of their own
(``bench/broadcast_clients.py``). Delivery latency is from the moment the trainer
hands a version to the parameter store (its encoding included) to its arrival at
each watcher. The reference, measured in the same run, is the transport moving
the same bytes to as many callers: an aio echo server answering that many unary
calls at once with the serialized parameter reply. Pull throughput is full
GetParameters pulls per second with ``--pullers`` concurrent callers, against the
same echo answering the same bytes.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from apexrl.learner.v1 import learner_pb2
from bench.clients import configure_echo
from bench.echo_service import SAMPLE, method_path
from bench.servers import ServerProcess
from services.algorithms.experiment import load_experiment
from services.common.logs import configure_logging
from services.learner.learner import Learner, LearnerSettings

logger = logging.getLogger("bench.parameter_broadcast")

BENCH = "parameter_broadcast"
_REPOSITORY = Path(__file__).resolve().parent.parent
_GET_PARAMETERS = "/apexrl.learner.v1.LearnerService/GetParameters"


class Clients:
    """``bench/broadcast_clients.py`` in its own process, speaking JSON lines."""

    def __init__(self, *arguments: str) -> None:
        command = [sys.executable, "-m", "bench.broadcast_clients", *arguments]
        self._process = subprocess.Popen(
            command, cwd=_REPOSITORY, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def read(self) -> dict[str, Any]:
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line:
            raise RuntimeError(f"the clients exited with {self._process.wait()} before answering")
        message: dict[str, Any] = json.loads(line)
        return message

    def finish(self) -> dict[str, Any]:
        message = self.read()
        if self._process.wait(timeout=60) != 0:
            raise RuntimeError(f"the clients exited with {self._process.returncode}")
        return message


def percentiles_ms(latencies: list[float]) -> dict[str, float]:
    values = np.asarray(latencies) * 1e3
    return {"p50_ms": float(np.percentile(values, 50)), "p99_ms": float(np.percentile(values, 99))}


def delivery_latencies(learner: Learner, watchers: int, versions: int) -> list[float]:
    clients = Clients(
        "watch", "--address", learner.address, "--callers", str(watchers), "--versions", str(versions)
    )
    assert clients.read() == {"ready": True}
    core = learner.core
    published: dict[int, float] = {}
    for _ in range(versions):
        started = time.time()
        version = learner.store.publish(core.actor_parameters(), core.policy_parameters(), core.updates)
        published[version] = started
        heard = clients.read()
        assert heard == {"heard": version}, heard
        time.sleep(0.05)
    result = clients.finish()
    assert result["versions"] == sorted(published), result["versions"]
    return [
        receipt - published[version]
        for receipts in result["receipts"]
        for version, receipt in zip(result["versions"], receipts, strict=True)
    ]


def echo_latencies(echo: ServerProcess, callers: int, versions: int) -> list[float]:
    clients = Clients(
        "fanout", "--address", echo.target, "--method", method_path(SAMPLE), "--callers", str(callers),
        "--versions", str(versions),
    )  # fmt: skip
    latencies: list[float] = clients.finish()["latencies"]
    return latencies


def pulls_per_s(address: str, method: str, request: bytes, callers: int, seconds: float) -> float:
    clients = Clients(
        "pull", "--address", address, "--method", method, "--request-hex", request.hex(),
        "--callers", str(callers), "--seconds", str(seconds),
    )  # fmt: skip
    rate: float = clients.finish()["calls_per_s"]
    return rate


def emit(measure: str, value: float, reference: float, unit: str, better: str, **extra: Any) -> None:
    line = {
        "bench": BENCH,
        "measure": measure,
        "value": value,
        "unit": unit,
        "reference": "aio_echo_same_bytes",
        "reference_value": reference,
        "ratio": value / reference,
        "better": better,
        **extra,
    }
    print(json.dumps(line), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--watchers", default="1,100,1000", help="Comma-separated watcher counts.")
    parser.add_argument("--versions", type=int, default=20, help="New versions timed per watcher count.")
    parser.add_argument("--pullers", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=10.0, help="Seconds of each pull measure.")
    parser.add_argument("--preset", default="cartpole", help="The experiment whose networks are broadcast.")
    arguments = parser.parse_args()
    configure_logging("bench", "WARNING")
    config = load_experiment(arguments.preset, ["general.device=cpu", "algorithm.replay_capacity=1000"])
    shard = ServerProcess("replay", ["services.replay", "--capacity", "1000"])
    echo = ServerProcess("echo", ["bench.echo_service", "--aio"])
    with tempfile.TemporaryDirectory(prefix="bench-broadcast-") as run_dir:
        learner = Learner(config, LearnerSettings((shard.target,), Path(run_dir)))
        try:
            version, parameters = learner.store.latest()
            reply = learner_pb2.GetParametersResponse(
                version=version, parameters=parameters, lineage=learner.store.lineage
            ).SerializeToString()
            configure_echo(echo.target, {SAMPLE: reply})
            for watchers in (int(count) for count in arguments.watchers.split(",")):
                value = percentiles_ms(delivery_latencies(learner, watchers, arguments.versions))
                reference = percentiles_ms(echo_latencies(echo, watchers, arguments.versions))
                for name in ("p50_ms", "p99_ms"):
                    emit(
                        f"delivery_latency_{name}",
                        value[name],
                        reference[name],
                        "ms",
                        "lower",
                        watchers=watchers,
                        preset=arguments.preset,
                        parameter_bytes=len(reply),
                    )
            request = learner_pb2.GetParametersRequest().SerializeToString()
            pulls = [
                pulls_per_s(learner.address, _GET_PARAMETERS, request, arguments.pullers, arguments.seconds),
                pulls_per_s(echo.target, method_path(SAMPLE), request, arguments.pullers, arguments.seconds),
            ]
            emit(
                "pulls_per_s",
                pulls[0],
                pulls[1],
                "pulls/s",
                "higher",
                pullers=arguments.pullers,
                preset=arguments.preset,
                parameter_bytes=len(reply),
            )
        finally:
            learner.stop()
            shard.stop()
            echo.stop()


if __name__ == "__main__":
    main()
