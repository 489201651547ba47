"""Client processes that run one timed phase of calls against a server and report their counts."""

from __future__ import annotations

import multiprocessing
import queue
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import grpc
import numpy as np
from numpy.typing import NDArray

from apexrl.replay.v1 import replay_pb2
from bench import echo_service
from bench.echo_service import INSERT, INSERT_STREAM, SAMPLE, SAMPLE_STREAM, UPDATE
from bench.workloads import (
    SAMPLE_BATCH,
    WORKLOADS,
    insert_requests,
    insert_stream_requests,
    random_priorities,
    sample_request,
    sample_stream_request,
    update_request,
)
from services.common.channels import create_channel

REPLAY_SERVICE = "/apexrl.replay.v1.ReplayService"
ECHO_SERVICE = f"/{echo_service.SERVICE_NAME}"
CALL_TIMEOUT_S = 60.0
# Spawning a client and building its requests takes seconds on a busy machine.
START_TIMEOUT_S = 180.0
# Distinct requests a writer cycles through, so the server never sees one buffer twice in a row.
DISTINCT_REQUESTS = 8
WARM_UP_CALLS = 3

# Sample requests a streaming sampler keeps in flight: two were the fastest for W1 and four for
# W2 when measured, and any more only makes batches older.
SAMPLE_STREAM_IN_FLIGHT = 4

PhaseKind = Literal[
    "insert", "insert_stream", "sample", "sample_stream", "sample_update", "sample_stream_update"
]
RawCall = Callable[[bytes], bytes]


@dataclass(frozen=True)
class PhaseSpec:
    """What every client process of a phase does, and against which server."""

    kind: PhaseKind
    workload: str
    target: str
    # REPLAY_SERVICE or ECHO_SERVICE: both take the same bytes on the same method names.
    service: str
    seconds: float


@dataclass(frozen=True)
class ClientResult:
    calls: int
    items: int
    request_bytes: int
    elapsed_s: float
    # The last reply of each method, so the echo can answer with the very same bytes.
    last_replies: dict[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class PhaseResult:
    """Sums over the phase's clients of their own rates (they run side by side)."""

    items_per_s: float
    calls_per_s: float
    request_bytes_per_s: float
    last_replies: dict[str, bytes]


class _Client:
    """Pre-serialized requests and raw-bytes callables: a timed loop does nothing but the RPCs."""

    def __init__(self, spec: PhaseSpec, index: int) -> None:
        self._kind = spec.kind
        workload = WORKLOADS[spec.workload]
        self._insert_batch = workload.insert_batch
        self._channel = create_channel(spec.target)
        self._calls = {
            method: self._raw_call(f"{spec.service}/{method}") for method in echo_service.REPLY_METHODS
        }
        rng = np.random.default_rng(1000 + index)
        inserting = spec.kind in ("insert", "insert_stream")
        self._inserts = insert_requests(workload, DISTINCT_REQUESTS, 2000 + index) if inserting else []
        self._sample = sample_request()
        self._priorities: list[NDArray[np.float32]] = [
            random_priorities(rng, SAMPLE_BATCH) for _ in range(DISTINCT_REQUESTS)
        ]
        self.last_replies: dict[str, bytes] = {}
        self._stream_request = sample_stream_request()
        self._stream = _Stream(
            self._channel, f"{spec.service}/{SAMPLE_STREAM}", [self._stream_request], SAMPLE_STREAM_IN_FLIGHT
        )
        # As an actor inserts over its stream: the next batch goes once the last one is answered.
        self._insert_stream = _Stream(
            self._channel, f"{spec.service}/{INSERT_STREAM}", insert_stream_requests(self._inserts), 1
        )

    def _raw_call(self, path: str) -> RawCall:
        # No serializers: bytes go out and come back as they are, for replay and echo alike.
        multicallable: grpc.UnaryUnaryMultiCallable[bytes, bytes] = self._channel.unary_unary(path)

        def call(request: bytes) -> bytes:
            reply: bytes = multicallable(request, timeout=CALL_TIMEOUT_S)
            return reply

        return call

    def step(self, iteration: int) -> tuple[int, int]:
        """One unit of work; returns (items, request bytes)."""
        turn = iteration % DISTINCT_REQUESTS
        if self._kind == "insert":
            request = self._inserts[turn]
            self.last_replies[INSERT] = self._calls[INSERT](request)
            return self._insert_batch, len(request)
        if self._kind == "insert_stream":
            self.last_replies[INSERT] = self._insert_stream.next_reply()
            return self._insert_batch, len(self._inserts[turn])
        if self._kind == "sample_stream":
            self.last_replies[SAMPLE] = self._stream.next_reply()
            return SAMPLE_BATCH, len(self._stream_request)
        if self._kind == "sample_stream_update":
            # As the learner samples: batches asked ahead on the stream, each batch's new
            # priorities sent back with a unary call once it is read.
            streamed = self._stream.next_reply()
            self.last_replies[SAMPLE] = streamed
            update = update_request(streamed, self._priorities[turn], streamed=True)
            self.last_replies[UPDATE] = self._calls[UPDATE](update)
            return SAMPLE_BATCH, len(self._stream_request) + len(update)
        reply = self._calls[SAMPLE](self._sample)
        self.last_replies[SAMPLE] = reply
        if self._kind == "sample":
            return SAMPLE_BATCH, len(self._sample)
        update = update_request(reply, self._priorities[turn])
        self.last_replies[UPDATE] = self._calls[UPDATE](update)
        return SAMPLE_BATCH, len(self._sample) + len(update)

    def close(self) -> None:
        self._stream.close()
        self._insert_stream.close()
        self._channel.close()


class _Stream:
    """One streaming call that keeps ``in_flight`` requests ahead of the replies read, sending
    ``requests`` in turn; opened on the first reply asked for."""

    def __init__(self, channel: grpc.Channel, path: str, requests: list[bytes], in_flight: int) -> None:
        self._open: grpc.StreamStreamMultiCallable[bytes, bytes] = channel.stream_stream(path)
        self._requests_sent = requests
        self._credits = threading.Semaphore(in_flight)
        self._closed = threading.Event()
        self._replies: Any = None  # the call: an iterator of replies that can be cancelled

    def _requests(self) -> Iterator[bytes]:
        turn = 0
        while True:
            self._credits.acquire()
            if self._closed.is_set():
                return
            yield self._requests_sent[turn % len(self._requests_sent)]
            turn += 1

    def next_reply(self) -> bytes:
        if self._replies is None:
            self._replies = self._open(self._requests())
        reply: bytes = next(self._replies)
        self._credits.release()
        return reply

    def close(self) -> None:
        self._closed.set()
        self._credits.release()
        if self._replies is not None:
            self._replies.cancel()


def _run_client(spec: PhaseSpec, index: int, messages: Any, go: Any) -> None:
    """Process entry point: build, warm up, report ready, wait for go, run ``spec.seconds``."""
    try:
        client = _Client(spec, index)
        for iteration in range(WARM_UP_CALLS):
            client.step(iteration)
        messages.put(("ready", index, None))
        if not go.wait(START_TIMEOUT_S):
            raise TimeoutError("no go signal")
        calls = items = request_bytes = 0
        started = now = time.perf_counter()
        deadline = started + spec.seconds
        while now < deadline:
            step_items, step_bytes = client.step(calls)
            calls += 1
            items += step_items
            request_bytes += step_bytes
            now = time.perf_counter()
        result = ClientResult(calls, items, request_bytes, now - started, client.last_replies)
        client.close()
        messages.put(("result", index, result))
    except BaseException:
        messages.put(("error", index, traceback.format_exc()))


def _collect(messages: Any, kind: str, count: int, timeout_s: float) -> list[Any]:
    deadline = time.monotonic() + timeout_s
    payloads: list[Any] = []
    while len(payloads) < count:
        try:
            tag, index, payload = messages.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            raise TimeoutError(f"{count - len(payloads)} client(s) not {kind} in time") from None
        if tag == "error":
            raise RuntimeError(f"client {index} failed:\n{payload}")
        payloads.append(payload)
    return payloads


def run_phase(spec: PhaseSpec, clients: int) -> PhaseResult:
    """Runs ``clients`` processes of ``spec`` side by side, started together."""
    context = multiprocessing.get_context("spawn")
    messages = context.Queue()
    go = context.Event()
    processes = [
        context.Process(target=_run_client, args=(spec, index, messages, go), daemon=True)
        for index in range(clients)
    ]
    for process in processes:
        process.start()
    try:
        _collect(messages, "ready", clients, START_TIMEOUT_S)
        go.set()
        results: list[ClientResult] = _collect(messages, "finished", clients, spec.seconds + CALL_TIMEOUT_S)
    finally:
        for process in processes:
            process.join(timeout=10.0)
            if process.is_alive():
                process.terminate()
                process.join()
    return PhaseResult(
        items_per_s=sum(result.items / result.elapsed_s for result in results),
        calls_per_s=sum(result.calls / result.elapsed_s for result in results),
        request_bytes_per_s=sum(result.request_bytes / result.elapsed_s for result in results),
        last_replies=results[0].last_replies,
    )


def configure_echo(target: str, replies: dict[str, bytes]) -> None:
    """Makes the echo answer each method with the given reply bytes."""
    with create_channel(target) as channel:
        set_reply: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            echo_service.method_path(echo_service.SET_REPLY_METHOD)
        )
        for method, reply in replies.items():
            set_reply(echo_service.set_reply_request(method, reply), timeout=CALL_TIMEOUT_S)


def fill_to_capacity(target: str, workload_name: str) -> int:
    """Inserts until the replay table is full; returns the items this took."""
    workload = WORKLOADS[workload_name]
    requests = insert_requests(workload, DISTINCT_REQUESTS, seed=3000)
    inserted = 0
    with create_channel(target) as channel:
        insert: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(f"{REPLAY_SERVICE}/{INSERT}")
        get_info = channel.unary_unary(
            f"{REPLAY_SERVICE}/GetInfo",
            request_serializer=replay_pb2.GetInfoRequest.SerializeToString,
            response_deserializer=replay_pb2.GetInfoResponse.FromString,
        )
        size = get_info(replay_pb2.GetInfoRequest(), timeout=CALL_TIMEOUT_S).size
        while size < workload.capacity:
            reply = insert(requests[inserted % DISTINCT_REQUESTS], timeout=CALL_TIMEOUT_S)
            size = replay_pb2.InsertTransitionsResponse.FromString(reply).size
            inserted += workload.insert_batch
    return inserted
