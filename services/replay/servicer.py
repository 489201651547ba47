"""Serves apexrl.replay.v1.ReplayService over a PrioritizedTable; all state lives in the table."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from apexrl.replay.v1 import replay_pb2, replay_pb2_grpc
from services.common import tensor_codec
from services.common.encoded import InvalidInputError
from services.common.sharded_replay import INSERT_STREAM_LIMIT_KEY
from services.replay.columns import batch_length
from services.replay.metrics import ReplayMetrics
from services.replay.rate_limiter import NotEnoughDataError, RateLimitedError
from services.replay.sample_encoding import serialize_sample
from services.replay.table import InPlace, PrioritizedTable, SampledItems

logger = logging.getLogger(__name__)

# Wire limits documented in replay.proto.
MAX_INSERT_ITEMS = 65_536
MAX_SAMPLE_BATCH = 16_384
# A rate-limited caller never waits longer than this, whatever it asks for.
MAX_WAIT_S = 60.0
# Room left in a Sample reply for keys, masses and framing, per item and overall.
_REPLY_OVERHEAD_BYTES = 4096
_REPLY_PER_ITEM_BYTES = 16
# SampleStreamResponse.sample: a streamed reply is the unary reply within this field.
_STREAMED_SAMPLE = replay_pb2.SampleStreamResponse.DESCRIPTOR.fields_by_name["sample"].number

T = TypeVar("T")


class MessageTooLargeError(Exception):
    """A reply would exceed the configured message limit."""


class SnapshotUnavailableError(Exception):
    """The shard was started without a snapshot path."""


@dataclass(frozen=True)
class SnapshotResult:
    path: str
    size: int
    bytes: int
    longest_pause_s: float
    seconds: float


# Domain exceptions -> status codes: the one table of this servicer. Only InvalidInputError,
# raised where a request is checked, blames the caller; any other exception (a ValueError or
# TypeError included) is a bug of the shard: INTERNAL, logged with its traceback.
_STATUS_BY_ERROR: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (InvalidInputError, grpc.StatusCode.INVALID_ARGUMENT),
    (NotEnoughDataError, grpc.StatusCode.FAILED_PRECONDITION),
    (SnapshotUnavailableError, grpc.StatusCode.FAILED_PRECONDITION),
    (RateLimitedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (MessageTooLargeError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    # A request whose checking needs more memory than the shard has (encoded items that claim
    # to decompress to terabytes) is too large, not a bug of the shard.
    (MemoryError, grpc.StatusCode.RESOURCE_EXHAUSTED),
)


def _status_of(error: Exception) -> grpc.StatusCode:
    for error_type, code in _STATUS_BY_ERROR:
        if isinstance(error, error_type):
            return code
    return grpc.StatusCode.INTERNAL


def _allowed_wait_s(requested_s: float, context: grpc.ServicerContext) -> float:
    """The caller's wait, capped by its deadline (less a margin to reply in) and MAX_WAIT_S."""
    remaining = context.time_remaining()
    limit = MAX_WAIT_S if remaining is None else min(MAX_WAIT_S, remaining - 0.05)
    return max(0.0, min(requested_s, limit))


class ReplayServicer(replay_pb2_grpc.ReplayServiceServicer):
    def __init__(
        self,
        table: PrioritizedTable,
        metrics: ReplayMetrics,
        max_message_bytes: int,
        save_snapshot: Callable[[], SnapshotResult] | None,
        max_insert_streams: int = 0,
    ) -> None:
        self._table = table
        self._metrics = metrics
        self._max_message_bytes = max_message_bytes
        self._save_snapshot = save_snapshot
        self._max_insert_streams = max_insert_streams
        self._insert_streams = threading.BoundedSemaphore(max_insert_streams)

    def _serve(self, method: str, context: grpc.ServicerContext, handler: Callable[[], T]) -> T:
        """Runs ``handler``, records its latency and maps its errors to status codes."""
        started = time.perf_counter()
        try:
            return handler()
        except Exception as error:
            code = _status_of(error)
            self._metrics.request_errors.labels(method, code.name).inc()
            message = str(error) or type(error).__name__
            if code == grpc.StatusCode.INTERNAL:
                logger.exception("rpc failed method=%s code=%s", method, code.name)
                message = f"internal error of the replay shard: {type(error).__name__}: {error}"
            context.abort(code, message)
        finally:
            self._metrics.request_seconds.labels(method).observe(time.perf_counter() - started)

    def InsertTransitions(
        self, request: replay_pb2.InsertTransitionsRequest, context: grpc.ServicerContext
    ) -> replay_pb2.InsertTransitionsResponse:
        return self._serve("InsertTransitions", context, partial(self._insert, request, context))

    def InsertStream(
        self,
        requests: Iterator[replay_pb2.InsertStreamRequest | _Undecodable],
        context: grpc.ServicerContext,
    ) -> Iterator[replay_pb2.InsertStreamResponse]:
        """One reply per request, in order; the first failure ends the stream with its status.

        A stream holds a server thread while it is open, so at most ``max_insert_streams`` are
        served at once; one beyond them is refused before its first request is read.
        """
        if not self._insert_streams.acquire(blocking=False):
            self._metrics.request_errors.labels("InsertStream", grpc.StatusCode.RESOURCE_EXHAUSTED.name).inc()
            context.set_trailing_metadata(((INSERT_STREAM_LIMIT_KEY, str(self._max_insert_streams)),))
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"this shard serves at most {self._max_insert_streams} insert streams at once; "
                "insert with InsertTransitions",
            )
        try:
            for request in requests:
                insert = request if isinstance(request, _Undecodable) else request.insert
                reply = self._serve("InsertStream", context, partial(self._insert, insert, context))
                yield replay_pb2.InsertStreamResponse(insert=reply)
        finally:
            self._insert_streams.release()

    def _insert(
        self, request: replay_pb2.InsertTransitionsRequest | _Undecodable, context: grpc.ServicerContext
    ) -> replay_pb2.InsertTransitionsResponse:
        """Stores one request's batch; the domain error that refuses it, and nothing stored, if not."""
        if isinstance(request, _Undecodable):  # only a stream's requests arrive undecoded
            raise InvalidInputError(request.details)
        columns = tensor_codec.decode_columns(request.batch)
        count = batch_length(columns)
        priorities = tensor_codec.decode(request.priorities, "priorities")
        if count > MAX_INSERT_ITEMS:
            raise InvalidInputError(f"insert of {count} items exceeds the maximum of {MAX_INSERT_ITEMS}")
        keys = self._table.insert(columns, priorities, _allowed_wait_s(request.max_wait_s, context))
        reply = replay_pb2.InsertTransitionsResponse(size=self._table.size)
        tensor_codec.encode_into(reply.keys, keys)
        return reply

    def SampleTransitions(  # type: ignore[override]  # the reply's bytes, see add_to_server
        self, request: replay_pb2.SampleTransitionsRequest, context: grpc.ServicerContext
    ) -> bytes:
        return self._serve("SampleTransitions", context, lambda: self._sample(request, context, None))

    def SampleStream(  # type: ignore[override]  # the replies' bytes, see add_to_server
        self,
        requests: Iterator[replay_pb2.SampleStreamRequest | _Undecodable],
        context: grpc.ServicerContext,
    ) -> Iterator[bytes]:
        """One reply per request, in order; the first failure ends the stream with its status."""
        for request in requests:
            sample = request if isinstance(request, _Undecodable) else request.sample
            serve = partial(self._sample, sample, context, _STREAMED_SAMPLE)
            yield self._serve("SampleStream", context, serve)

    def _sample(
        self,
        request: replay_pb2.SampleTransitionsRequest | _Undecodable,
        context: grpc.ServicerContext,
        enclosing_field: int | None,
    ) -> bytes:
        """One request's reply bytes (as ``enclosing_field`` of a message, if given), or the
        domain error that refuses it."""
        if isinstance(request, _Undecodable):  # only a stream's requests arrive undecoded
            raise InvalidInputError(request.details)
        batch_size = request.batch_size
        if not 1 <= batch_size <= MAX_SAMPLE_BATCH:
            raise InvalidInputError(f"batch_size must be in 1..{MAX_SAMPLE_BATCH}, got {batch_size}")
        item_bytes = self._table.item_bytes
        reply_bytes = batch_size * (item_bytes + _REPLY_PER_ITEM_BYTES) + _REPLY_OVERHEAD_BYTES
        if reply_bytes > self._max_message_bytes:
            raise MessageTooLargeError(
                f"a sample of {batch_size} items of {item_bytes} bytes needs a ~{reply_bytes} byte "
                f"reply, above the {self._max_message_bytes} byte message limit; sample fewer items"
            )
        # Serialized under the table's lock, straight from the stored rows.
        wait_s = _allowed_wait_s(request.max_wait_s, context)
        finish = partial(self._serialize_within_limit, enclosing_field=enclosing_field)
        return self._table.sample_into(batch_size, wait_s, finish)

    def _serialize_within_limit(self, items: SampledItems[InPlace], enclosing_field: int | None) -> bytes:
        """The reply's bytes; MessageTooLargeError, raised before the table counts the sample, where
        they exceed the message limit after all (the estimate above leaves out per-item framing)."""
        reply = serialize_sample(items, enclosing_field)
        if len(reply) > self._max_message_bytes:
            raise MessageTooLargeError(
                f"a sample of {len(items.keys)} items needs a {len(reply)} byte reply, above the "
                f"{self._max_message_bytes} byte message limit; sample fewer items"
            )
        return reply

    def UpdatePriorities(
        self, request: replay_pb2.UpdatePrioritiesRequest, context: grpc.ServicerContext
    ) -> replay_pb2.UpdatePrioritiesResponse:
        def update() -> replay_pb2.UpdatePrioritiesResponse:
            keys = tensor_codec.decode(request.keys, "keys")
            priorities = tensor_codec.decode(request.priorities, "priorities")
            result = self._table.update_priorities(keys, priorities)
            return replay_pb2.UpdatePrioritiesResponse(updated=result.updated, stale=result.stale)

        return self._serve("UpdatePriorities", context, update)

    def GetInfo(
        self, request: replay_pb2.GetInfoRequest, context: grpc.ServicerContext
    ) -> replay_pb2.GetInfoResponse:
        def get_info() -> replay_pb2.GetInfoResponse:
            info = self._table.info()
            return replay_pb2.GetInfoResponse(
                size=info.size,
                capacity=info.capacity,
                total_priority_mass=info.total_priority_mass,
                priority_exponent=info.priority_exponent,
                min_size_to_sample=info.limiter.min_size_to_sample,
                samples_per_insert=info.limiter.samples_per_insert,
                samples_per_insert_tolerance=info.limiter.tolerance,
                inserts=info.inserts,
                samples=info.samples,
                priority_updates=info.priority_updates,
                rate_limiter_waits=info.rate_limiter_waits,
                signature={
                    name: tensor_codec.encode_spec(spec.dtype, spec.shape)
                    for name, spec in info.signature.items()
                },
                incarnation=info.incarnation,
                column_codecs={
                    name: tensor_codec.wire_codec(spec.codec)
                    for name, spec in info.signature.items()
                    if spec.codec is not None
                },
                storage_bytes=info.storage_bytes,
            )

        return self._serve("GetInfo", context, get_info)

    def SaveSnapshot(
        self, request: replay_pb2.SaveSnapshotRequest, context: grpc.ServicerContext
    ) -> replay_pb2.SaveSnapshotResponse:
        def save() -> replay_pb2.SaveSnapshotResponse:
            if self._save_snapshot is None:
                raise SnapshotUnavailableError("this shard was started without --snapshot-path")
            result = self._save_snapshot()
            return replay_pb2.SaveSnapshotResponse(
                path=result.path,
                size=result.size,
                bytes=result.bytes,
                longest_pause_s=result.longest_pause_s,
                seconds=result.seconds,
            )

        return self._serve("SaveSnapshot", context, save)


def _already_serialized(reply: bytes) -> bytes:
    return reply


@dataclass(frozen=True)
class _Undecodable:
    """Request bytes that do not parse as the method's message."""

    details: str


def _deserializer(request: type[Message]) -> Callable[[bytes], Message | _Undecodable]:
    """Parses ``request``; bytes that do not parse become an :class:`_Undecodable` for the handler
    to refuse with INVALID_ARGUMENT (the gRPC runtime answers a deserializer's exception with
    INTERNAL, a server fault)."""

    def deserialize(data: bytes) -> Message | _Undecodable:
        try:
            return request.FromString(data)
        except DecodeError as error:
            return _Undecodable(f"the request is not a valid {request.DESCRIPTOR.full_name}: {error}")

    return deserialize


def _handler(
    behavior: Callable[[Any, grpc.ServicerContext], Any],
    request: type[Message],
    response_serializer: Callable[[Any], bytes],
) -> grpc.RpcMethodHandler[Any, Any]:
    """A unary handler whose undecodable requests fail with INVALID_ARGUMENT."""

    def handle(message: Message | _Undecodable, context: grpc.ServicerContext) -> Any:
        if isinstance(message, _Undecodable):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, message.details)
        return behavior(message, context)

    return grpc.unary_unary_rpc_method_handler(
        handle, request_deserializer=_deserializer(request), response_serializer=response_serializer
    )


def add_to_server(servicer: ReplayServicer, server: grpc.Server) -> None:
    """Registers the servicer like the generated function, but SampleTransitions and SampleStream
    answer with the bytes :func:`serialize_sample` made under the table's lock (one copy of the rows)."""
    messages = replay_pb2
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "InsertTransitions": _handler(
            servicer.InsertTransitions,
            messages.InsertTransitionsRequest,
            messages.InsertTransitionsResponse.SerializeToString,
        ),
        "SampleTransitions": _handler(
            servicer.SampleTransitions, messages.SampleTransitionsRequest, _already_serialized
        ),
        # The streams' behaviors refuse undecodable requests themselves: they arrive mid-stream.
        "InsertStream": grpc.stream_stream_rpc_method_handler(
            servicer.InsertStream,
            request_deserializer=_deserializer(messages.InsertStreamRequest),
            response_serializer=messages.InsertStreamResponse.SerializeToString,
        ),
        "SampleStream": grpc.stream_stream_rpc_method_handler(
            servicer.SampleStream,
            request_deserializer=_deserializer(messages.SampleStreamRequest),
            response_serializer=_already_serialized,
        ),
        "UpdatePriorities": _handler(
            servicer.UpdatePriorities,
            messages.UpdatePrioritiesRequest,
            messages.UpdatePrioritiesResponse.SerializeToString,
        ),
        "GetInfo": _handler(
            servicer.GetInfo, messages.GetInfoRequest, messages.GetInfoResponse.SerializeToString
        ),
        "SaveSnapshot": _handler(
            servicer.SaveSnapshot,
            messages.SaveSnapshotRequest,
            messages.SaveSnapshotResponse.SerializeToString,
        ),
    }
    service = messages.DESCRIPTOR.services_by_name["ReplayService"]
    # Every RPC of the contract must be served here; a new one in the proto fails loudly.
    assert set(handlers) == {method.name for method in service.methods}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
