"""The actor's transport: a child process that makes the actor's calls to the replay and the learner.

An actor's acting thread is the only thread of its process that runs Python. Its inserts
and parameter pulls go to this child, which makes the gRPC calls (on threads of its own),
so no thread of the acting process wakes to take the interpreter lock while it steps. With
the calls on two threads of the acting process instead, each of the 40 or so calls a
second handed the lock back and forth about a dozen times, and one CartPole actor stepped
at 0.6-0.8 of the bare loop (docs/benchmarks.md, "Where one actor loses").

The two processes talk over a socket pair. Each message is length-prefixed bytes
(``multiprocessing.connection``'s ``send_bytes`` and ``recv_bytes``; no pickle): a JSON
header, then the binary frames it announces (the raw bytes of a column, or of a gRPC
message). The acting process computes a batch's initial priorities from what acting
recorded and sends its columns raw; the child compresses the columns the learner asked
for compressed, encodes the request and inserts. A pull's request and reply cross as the
learner's own serialized messages, which the child forwards without reading them.

One insert and one pull are in flight at a time, as before: the acting process waits for
an insert's outcome before it sends the next batch, so a shard's rate limiter still holds
the actor back. The child exits when the acting process closes the socket, or dies. It
runs in a session of its own and ignores SIGINT and SIGTERM: a stop is the acting
process's to handle, which settles its last insert before it closes the socket.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import grpc
import numpy as np
from numpy.typing import NDArray

from services.common.channels import create_channel
from services.common.encoded import Column, compress
from services.common.logs import configure_logging
from services.common.security import SecuritySettings
from services.common.sharded_replay import InsertRefusedError, ReplayUnavailableError, ShardedReplayClient

logger = logging.getLogger(__name__)

# The learner's GetParameters, called with the serialized request and reply as they are.
_GET_PARAMETERS = "/apexrl.learner.v1.LearnerService/GetParameters"
# How long closing waits for the child to exit before it is killed.
_EXIT_WAIT_S = 5.0

_INSERT = "insert"
_PULL = "pull"
# An insert's last array: its initial priorities (not a column).
_PRIORITIES = "priorities"


class TransportError(RuntimeError):
    """The transport process is gone, or failed a call in a way no status code names."""


class CallError(grpc.RpcError):
    """A call the transport made failed with a gRPC status: ``code()`` and ``details()`` as the call's own."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def _status(name: str) -> grpc.StatusCode:
    return grpc.StatusCode[name]


class Reply:
    """The outcome of one call the transport makes, read from the child as the caller asks for it."""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport
        self._settled = False
        self._value: bytes | None = None
        self._error: Exception | None = None

    def done(self) -> bool:
        if not self._settled:
            self._transport.receive()
        return self._settled

    def result(self) -> bytes | None:
        """The reply's bytes (a pull's), or None (an insert's); raises the call's error."""
        while not self._settled:
            self._transport.receive(block=True)
        if self._error is not None:
            raise self._error
        return self._value

    def settle(self, value: bytes | None, error: Exception | None) -> None:
        self._value, self._error, self._settled = value, error, True


@dataclass(frozen=True)
class ReplaySettings:
    """Where the child inserts, and how."""

    addresses: Sequence[str]
    seed: int
    # Columns compressed (zstd, one frame per item) before they are sent.
    compressed: Sequence[str]
    # How long an insert may wait on a shard's rate limiter.
    insert_wait_s: float
    timeout_s: float = 10.0
    min_backoff_s: float = 0.5
    max_backoff_s: float = 30.0


class Transport:
    """The acting process's side: starts the child and hands it inserts and pulls."""

    def __init__(
        self, learner_address: str, security: SecuritySettings, timeout_s: float, log_level: str = "INFO"
    ) -> None:
        ours, theirs = socket.socketpair()
        with theirs:
            self._process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "services.actor.transport",
                    "--socket-fd",
                    str(theirs.fileno()),
                    "--learner",
                    learner_address,
                    "--timeout-s",
                    str(timeout_s),
                    "--log-level",
                    log_level,
                ],
                pass_fds=(theirs.fileno(),),
                env=security.child_environment(),
                stdin=subprocess.DEVNULL,
                # A session of its own: the terminal's Ctrl-C, or a signal to the actor's
                # process group, does not reach it (see main).
                start_new_session=True,
            )
        self._connection = Connection(ours.detach())
        self._pending: dict[str, Reply] = {}

    @property
    def pid(self) -> int:
        return self._process.pid

    def configure_replay(self, settings: ReplaySettings) -> None:
        header = {
            "op": "replay",
            "addresses": list(settings.addresses),
            "seed": settings.seed,
            "compressed": list(settings.compressed),
            "insert_wait_s": settings.insert_wait_s,
            "timeout_s": settings.timeout_s,
            "min_backoff_s": settings.min_backoff_s,
            "max_backoff_s": settings.max_backoff_s,
        }
        self._send(header, ())

    def insert(self, columns: Mapping[str, NDArray[Any]], priorities: NDArray[np.floating]) -> Reply:
        """Starts inserting a batch: its wire columns, raw, and its initial priorities."""
        named = {name: np.ascontiguousarray(values) for name, values in columns.items()}
        named[_PRIORITIES] = np.ascontiguousarray(priorities, dtype=np.float64)
        header = {
            "op": _INSERT,
            "arrays": [[name, array.dtype.str, list(array.shape)] for name, array in named.items()],
        }
        return self._call(
            _INSERT, header, [array.reshape(-1).view(np.uint8).data for array in named.values()]
        )

    def pull(self, request: bytes) -> Reply:
        """Starts a GetParameters call with the serialized request; the reply's bytes are its result."""
        return self._call(_PULL, {"op": _PULL}, [request])

    def _call(self, op: str, header: dict[str, Any], frames: Sequence[bytes | memoryview]) -> Reply:
        if op in self._pending:
            raise RuntimeError(f"a {op} is already in flight: one at a time")
        reply = Reply(self)
        self._pending[op] = reply
        self._send(header, frames)
        return reply

    def _send(self, header: dict[str, Any], frames: Sequence[bytes | memoryview]) -> None:
        header["frames"] = len(frames)
        try:
            self._connection.send_bytes(json.dumps(header).encode())
            for frame in frames:
                self._connection.send_bytes(frame)
        except OSError as error:
            raise self._gone(error) from None

    def receive(self, block: bool = False) -> None:
        """Settles the replies that arrived (waiting for one first when ``block``)."""
        try:
            while block or self._connection.poll():
                block = False
                header = json.loads(self._connection.recv_bytes())
                frames = [self._connection.recv_bytes() for _ in range(header["frames"])]
                self._settle(header, frames)
        except (EOFError, OSError) as error:
            raise self._gone(error) from None

    def _settle(self, header: dict[str, Any], frames: list[bytes]) -> None:
        reply = self._pending.pop(header["op"])
        error: Exception | None = None
        if "failed" in header:
            error = TransportError(
                f"the actor's transport process could not make the {header['op']}: {header['failed']}"
            )
        elif "unavailable" in header:
            error = ReplayUnavailableError(header["unavailable"])
        elif "code" in header:
            call_error = CallError(_status(header["code"]), header["details"])
            error = (
                InsertRefusedError(header["shard"], header["address"], call_error)
                if "shard" in header
                else call_error
            )
        reply.settle(frames[0] if frames else None, error)

    def _gone(self, error: BaseException) -> TransportError:
        code = self._process.poll()
        state = "is still running" if code is None else f"exited with code {code}"
        return TransportError(f"lost the actor's transport process (pid {self.pid}, {state}): {error!r}")

    def close(self) -> None:
        """Ends the child (it exits once the socket closes), killing it if it does not exit in time."""
        self._connection.close()
        try:
            self._process.wait(_EXIT_WAIT_S)
        except subprocess.TimeoutExpired:
            logger.warning("the transport process did not exit in %.0f s; killing it", _EXIT_WAIT_S)
            self._process.kill()
            self._process.wait()


# The child's side.

# What a call the child made sends back: the reply header's fields besides "op", and its frames.
_Outcome = tuple[dict[str, Any], Sequence[bytes]]


class _Child:
    """Reads the acting process's messages and makes their calls: inserts on one thread, pulls on another."""

    def __init__(self, connection: Connection, learner: str, timeout_s: float) -> None:
        self._connection = connection
        self._send_lock = threading.Lock()
        self._timeout_s = timeout_s
        self._channel = create_channel(learner, default_timeout_s=timeout_s)
        self._get_parameters: grpc.UnaryUnaryMultiCallable[bytes, bytes] = self._channel.unary_unary(
            _GET_PARAMETERS
        )
        self._replay: ShardedReplayClient | None = None
        self._compressed: tuple[str, ...] = ()
        self._insert_wait_s = 0.0
        self._inserts: queue.SimpleQueue[tuple[dict[str, NDArray[Any]], NDArray[np.float64]] | None] = (
            queue.SimpleQueue()
        )
        self._pulls: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._serve, args=(self._inserts, _INSERT, self._insert), name="inserts"),
            threading.Thread(target=self._serve, args=(self._pulls, _PULL, self._pull), name="pulls"),
        ]

    def run(self) -> None:
        for thread in self._threads:
            thread.start()
        try:
            while True:
                try:
                    header = json.loads(self._connection.recv_bytes())
                    frames = [self._connection.recv_bytes() for _ in range(header["frames"])]
                except (EOFError, OSError):
                    return  # the acting process closed the socket, or is gone
                self._dispatch(header, frames)
        finally:
            self._inserts.put(None)
            self._pulls.put(None)
            for thread in self._threads:
                thread.join(self._timeout_s)
            if self._replay is not None:
                self._replay.close()
            self._channel.close()

    def _dispatch(self, header: dict[str, Any], frames: list[bytes]) -> None:
        op = header["op"]
        if op == "replay":
            self._replay = ShardedReplayClient(
                header["addresses"],
                seed=header["seed"],
                timeout_s=header["timeout_s"],
                min_backoff_s=header["min_backoff_s"],
                max_backoff_s=header["max_backoff_s"],
                # Off the acting process, a stream's threads cost the actor nothing, and a shard
                # serves a stream's inserts at less cost than unary calls (docs/replay.md).
                stream_inserts=True,
            )
            self._compressed = tuple(header["compressed"])
            self._insert_wait_s = header["insert_wait_s"]
        elif op == _INSERT:
            arrays = {
                name: np.frombuffer(frame, dtype=np.dtype(dtype)).reshape(shape)
                for frame, (name, dtype, shape) in zip(frames, header["arrays"], strict=True)
            }
            priorities = arrays.pop(_PRIORITIES)
            self._inserts.put((arrays, priorities))
        elif op == _PULL:
            self._pulls.put(frames[0])
        else:
            raise TransportError(f"unknown message {op!r} from the acting process")

    def _serve(self, jobs: queue.SimpleQueue[Any], op: str, call: Callable[[Any], _Outcome]) -> None:
        """Makes ``jobs``' calls one after another, replying to each; a call that raises is reported too."""
        while (job := jobs.get()) is not None:
            try:
                header, frames = call(job)
            except Exception as error:
                logger.exception("%s failed", op)
                header, frames = {"failed": repr(error)}, ()
            self._reply({"op": op, **header}, frames)

    def _insert(self, job: tuple[dict[str, NDArray[Any]], NDArray[np.float64]]) -> _Outcome:
        columns, priorities = job
        if self._replay is None:
            raise TransportError("an insert before the replay was configured")
        sent: dict[str, Column] = dict(columns)
        for name in self._compressed:
            sent[name] = compress(columns[name])
        try:
            self._replay.insert(sent, priorities, self._insert_wait_s)
        except InsertRefusedError as refusal:
            refused = {"shard": refusal.shard, "address": refusal.address}
            return {**refused, "code": refusal.code().name, "details": refusal.details()}, ()
        except ReplayUnavailableError as error:
            return {"unavailable": str(error)}, ()
        return {}, ()

    def _pull(self, request: bytes) -> _Outcome:
        try:
            reply = self._get_parameters(request, timeout=self._timeout_s)
        except grpc.RpcError as error:
            return {"code": error.code().name, "details": error.details() or ""}, ()
        return {}, (reply,)

    def _reply(self, header: dict[str, Any], frames: Sequence[bytes]) -> None:
        header["frames"] = len(frames)
        with self._send_lock:
            try:
                self._connection.send_bytes(json.dumps(header).encode())
                for frame in frames:
                    self._connection.send_bytes(frame)
            except OSError:
                pass  # the acting process is gone; the reader sees the socket close and ends


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="An actor's transport process (started by the actor).")
    parser.add_argument("--socket-fd", type=int, required=True)
    parser.add_argument("--learner", required=True)
    parser.add_argument("--timeout-s", type=float, required=True)
    parser.add_argument("--log-level", default="INFO")
    arguments = parser.parse_args(argv)
    # The acting process decides when this one ends: it closes the socket once its last
    # insert is settled.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    configure_logging("actor-transport", arguments.log_level)
    _Child(Connection(arguments.socket_fd), arguments.learner, arguments.timeout_s).run()
    logging.shutdown()
    os._exit(0)  # gRPC's threads need no teardown


if __name__ == "__main__":
    main()
