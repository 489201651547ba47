"""A bare gRPC echo server answering with preset bytes: the transport-only reference for replay."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import grpc

from services.common.logs import configure_logging
from services.common.serving import AsyncServer, RunningServer, ServerSettings, start_server

logger = logging.getLogger(__name__)

SERVICE_NAME = "bench.echo.v1.Echo"
# The replay service's method names, mirrored: each answers with the bytes last set for it.
INSERT = "InsertTransitions"
SAMPLE = "SampleTransitions"
UPDATE = "UpdatePriorities"
REPLY_METHODS = (INSERT, SAMPLE, UPDATE)
# The replay's streams, mirrored: each request read is answered with SAMPLE's (INSERT's) bytes.
SAMPLE_STREAM = "SampleStream"
INSERT_STREAM = "InsertStream"
SET_REPLY_METHOD = "SetReply"
# SetReply's request is the method name, this separator, then the reply bytes.
SET_REPLY_SEPARATOR = b"\n"


def method_path(method: str) -> str:
    return f"/{SERVICE_NAME}/{method}"


def set_reply_request(method: str, reply: bytes) -> bytes:
    """The raw SetReply request that makes ``method`` answer with ``reply`` from now on."""
    if method not in REPLY_METHODS:
        raise ValueError(f"unknown echo method {method!r}; known: {REPLY_METHODS}")
    return method.encode() + SET_REPLY_SEPARATOR + reply


def _identity(data: bytes) -> bytes:
    return data


class EchoHandlers:
    """Raw-bytes handlers: no (de)serialization, no work, so a call costs only the transport."""

    def __init__(self) -> None:
        # A dict assignment is atomic under the GIL; readers see the old or the new reply.
        self._replies: dict[str, bytes] = dict.fromkeys(REPLY_METHODS, b"")

    def generic_handler(self) -> grpc.GenericRpcHandler:
        handlers = {
            method: grpc.unary_unary_rpc_method_handler(
                self._answer(method), request_deserializer=_identity, response_serializer=_identity
            )
            for method in REPLY_METHODS
        }
        for stream, method in ((SAMPLE_STREAM, SAMPLE), (INSERT_STREAM, INSERT)):
            handlers[stream] = grpc.stream_stream_rpc_method_handler(
                self._answer_stream(method), request_deserializer=_identity, response_serializer=_identity
            )
        handlers[SET_REPLY_METHOD] = grpc.unary_unary_rpc_method_handler(
            self._set_reply, request_deserializer=_identity, response_serializer=_identity
        )
        return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)

    def async_generic_handler(self) -> grpc.GenericRpcHandler:
        """The unary handlers as coroutines, for a grpc.aio server (the learner's benchmarks)."""
        handlers = {
            method: grpc.unary_unary_rpc_method_handler(
                _as_coroutine(self._answer(method)),
                request_deserializer=_identity,
                response_serializer=_identity,
            )
            for method in REPLY_METHODS
        }
        handlers[SET_REPLY_METHOD] = grpc.unary_unary_rpc_method_handler(
            _as_coroutine(self._set_reply), request_deserializer=_identity, response_serializer=_identity
        )
        return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)

    def _answer(self, method: str) -> Callable[[bytes, grpc.ServicerContext], bytes]:
        replies = self._replies

        def answer(_request: bytes, _context: grpc.ServicerContext) -> bytes:
            return replies[method]

        return answer

    def _answer_stream(
        self, method: str
    ) -> Callable[[Iterator[bytes], grpc.ServicerContext], Iterator[bytes]]:
        replies = self._replies

        def answer(requests: Iterator[bytes], _context: grpc.ServicerContext) -> Iterator[bytes]:
            for _request in requests:
                yield replies[method]

        return answer

    def _set_reply(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        name, separator, reply = request.partition(SET_REPLY_SEPARATOR)
        method = name.decode(errors="replace")
        if not separator or method not in REPLY_METHODS:
            raise ValueError(f"unknown echo method {method!r}")
        self._replies[method] = reply
        logger.info("reply set method=%s bytes=%d", method, len(reply))
        return b""


def _as_coroutine(handler: Callable[[bytes, Any], bytes]) -> Callable[[bytes, Any], Awaitable[bytes]]:
    async def answer(request: bytes, context: Any) -> bytes:
        return handler(request, context)

    return answer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True, help="gRPC port on 127.0.0.1.")
    parser.add_argument("--max-workers", type=int, default=ServerSettings.max_workers)
    parser.add_argument(
        "--aio", action="store_true", help="Serve on a grpc.aio loop, as the learner's service is served."
    )
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args()
    configure_logging("echo", args.log_level)
    handlers = EchoHandlers()
    settings = ServerSettings(port=args.port, max_workers=args.max_workers)
    running: RunningServer | AsyncServer
    if args.aio:
        running = AsyncServer(
            lambda server: server.add_generic_rpc_handlers((handlers.async_generic_handler(),)),
            [SERVICE_NAME],
            settings,
        )
    else:
        running = start_server(
            lambda server: server.add_generic_rpc_handlers((handlers.generic_handler(),)),
            [SERVICE_NAME],
            settings,
        )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda _signum, _frame: stop.set())
    signal.signal(signal.SIGINT, lambda _signum, _frame: stop.set())
    logger.info("echo serving address=127.0.0.1:%d", running.port)
    stop.wait()
    running.stop(ServerSettings.grace_s)


if __name__ == "__main__":
    main()
