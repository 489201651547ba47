"""The client side of bench/parameter_broadcast.py, in a process of its own: watchers, fan-outs, pullers.

Talks to its parent in JSON lines: stdout carries results (and "ready" / "heard"
lines while watching), stdin the parent's acknowledgements. Every figure is a
wall-clock time (``time.time()``), which both processes of one machine share.

- ``watch``: opens ``--callers`` WatchParameters streams over ``--channels``
  connections; prints ``{"ready": true}`` once each has its first version, then
  ``{"heard": V}`` once every stream has version V, and after ``--versions`` new
  versions the receipt times of each: ``{"versions": [...], "receipts": [[...], ...]}``.
- ``fanout``: the transport's reference for a broadcast: ``--callers`` unary
  calls answered with the same bytes, fired at once, ``--versions`` times;
  prints each call's latency from the moment all were fired.
- ``pull``: ``--callers`` concurrent loops of one unary call for ``--seconds``;
  prints calls/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import grpc

from apexrl.learner.v1 import learner_pb2, learner_pb2_grpc
from services.common.serving import message_size_options

# Each channel its own connection (a client of its own): channels of one process share one
# unless told not to, and a server admits 256 streams per connection.
_OPTIONS = [*message_size_options(256 << 20), ("grpc.use_local_subchannel_pool", 1)]
_TIMEOUT_S = 60.0


def _say(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def _identity(data: bytes) -> bytes:
    return data


async def watch(address: str, callers: int, channels: int, versions: int) -> None:
    connections = [grpc.aio.insecure_channel(address, options=_OPTIONS) for _ in range(channels)]
    heard: list[list[int]] = [[] for _ in range(callers)]
    receipts: list[list[float]] = [[] for _ in range(callers)]
    progress = asyncio.Event()

    async def one(index: int) -> None:
        stub = learner_pb2_grpc.LearnerServiceStub(connections[index % channels])
        async for reply in stub.WatchParameters(learner_pb2.WatchParametersRequest()):
            receipts[index].append(time.time())
            heard[index].append(reply.version)
            progress.set()

    tasks = [asyncio.create_task(one(index)) for index in range(callers)]

    async def until_all_have(count: int) -> int:
        while min(len(versions_heard) for versions_heard in heard) < count:
            for task in tasks:
                if task.done():
                    task.result()
                    raise RuntimeError("a watch stream ended")
            progress.clear()
            await asyncio.wait_for(progress.wait(), _TIMEOUT_S)
        return heard[0][count - 1]

    await until_all_have(1)
    _say({"ready": True})
    for count in range(2, versions + 2):
        _say({"heard": await until_all_have(count)})
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for connection in connections:
        await connection.close()
    _say({"versions": heard[0][1:], "receipts": [times[1:] for times in receipts]})


async def fanout(address: str, method: str, callers: int, channels: int, versions: int) -> None:
    connections = [grpc.aio.insecure_channel(address, options=_OPTIONS) for _ in range(channels)]
    calls = [
        connections[index % channels].unary_unary(
            method, request_serializer=_identity, response_deserializer=_identity
        )
        for index in range(callers)
    ]
    latencies: list[float] = []

    async def timed(call: Any, fired: float, kept: bool) -> None:
        await call(b"", timeout=_TIMEOUT_S)
        if kept:
            latencies.append(time.time() - fired)

    for round_ in range(versions + 1):  # the first round only opens the connections
        fired = time.time()
        await asyncio.gather(*(timed(call, fired, round_ > 0) for call in calls))
        await asyncio.sleep(0.1)
    for connection in connections:
        await connection.close()
    _say({"latencies": latencies})


async def pull(
    address: str, method: str, request: bytes, callers: int, channels: int, seconds: float
) -> None:
    connections = [grpc.aio.insecure_channel(address, options=_OPTIONS) for _ in range(channels)]
    calls = [
        connections[index % channels].unary_unary(
            method, request_serializer=_identity, response_deserializer=_identity
        )
        for index in range(callers)
    ]
    for call in calls:  # connected and warm before timing
        await call(request, timeout=_TIMEOUT_S)
    done = 0
    deadline = time.monotonic() + seconds

    async def loop(call: Any) -> None:
        nonlocal done
        while time.monotonic() < deadline:
            await call(request, timeout=_TIMEOUT_S)
            done += 1

    started = time.monotonic()
    await asyncio.gather(*(loop(call) for call in calls))
    elapsed = time.monotonic() - started
    for connection in connections:
        await connection.close()
    _say({"calls_per_s": done / elapsed})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=["watch", "fanout", "pull"])
    parser.add_argument("--address", required=True)
    parser.add_argument("--method", default="", help="Full method path (fanout, pull).")
    parser.add_argument("--request-hex", default="", help="The raw request of each pull, in hex.")
    parser.add_argument("--callers", type=int, required=True)
    parser.add_argument("--channels", type=int, default=10)
    parser.add_argument("--versions", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    channels = min(args.channels, args.callers)
    if args.mode == "watch":
        asyncio.run(watch(args.address, args.callers, channels, args.versions))
    elif args.mode == "fanout":
        asyncio.run(fanout(args.address, args.method, args.callers, channels, args.versions))
    else:
        request = bytes.fromhex(args.request_hex)
        asyncio.run(pull(args.address, args.method, request, args.callers, channels, args.seconds))


if __name__ == "__main__":
    main()
