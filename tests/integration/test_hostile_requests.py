"""Hostile requests to every RPC of the replay shard and the learner, generated with hypothesis.

Real servers on 127.0.0.1 (one shard, one learner, each started once for the module)
get at least ``EXAMPLES`` generated requests per RPC: structured messages with
hostile values (wrong dtypes and shapes, huge, negative and overflowing sizes, NaN
and inf, truncated and corrupt zstd bytes, keys and ids never issued, versions
ahead, garbage lineages, enums out of range, empty and oversize batches), and raw
bytes sent to the method's path (well-formed fields of the wrong types, unknown
fields, undecodable bytes). Every reply must carry a status code the proto
documents for that RPC (``ALLOWED``); INTERNAL and UNKNOWN (a server fault) never
are. A request that does not parse is INVALID_ARGUMENT, whatever the method. After
each request that must change nothing, the state it could touch is compared with
the state before it; after each run the server still answers and is SERVING.

Generation is derandomized (the same requests every run); each test counts what it
sent.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health_pb2
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from apexrl.common.v1 import tensor_pb2
from apexrl.learner.v1 import learner_pb2
from apexrl.replay.v1 import replay_pb2
from services.common import tensor_codec
from services.common.channels import create_channel
from services.common.encoded import EncodedItems, InvalidInputError, check_encoded, compress
from services.learner.learner import BEST_MODEL, Learner, LearnerSettings
from services.learner.servicer import SERVICE_NAME as LEARNER_SERVICE
from services.replay.settings import ReplayShardSettings
from services.replay.shard import SERVICE_NAME as REPLAY_SERVICE
from services.replay.shard import ReplayShard
from services.replay.snapshot import load_snapshot
from services.replay.table import PrioritizedTable, TableInfo
from tests.integration.conftest import transitions
from tests.integration.training_fixtures import small_config, wait_for

# Generated requests per RPC (explicit regression examples come on top).
EXAMPLES = 1000
TIMEOUT_S = 10.0  # per call; nothing here waits on the server side
HEALTH_SERVICE = "grpc.health.v1.Health"

Code = grpc.StatusCode
OK = Code.OK
# What the "Errors:" comments of the protos document for each RPC, OK included, less what
# this setup rules out: SaveSnapshot's INTERNAL (the snapshot path is writable) and
# RegisterActor's UNAVAILABLE (the learner is neither starting nor draining). INTERNAL and
# UNKNOWN mean a bug of the server and appear nowhere.
ALLOWED: dict[str, frozenset[Code]] = {
    "InsertTransitions": frozenset({OK, Code.INVALID_ARGUMENT, Code.RESOURCE_EXHAUSTED}),
    "InsertStream": frozenset({OK, Code.INVALID_ARGUMENT, Code.RESOURCE_EXHAUSTED}),
    "SampleTransitions": frozenset(
        {OK, Code.INVALID_ARGUMENT, Code.FAILED_PRECONDITION, Code.RESOURCE_EXHAUSTED}
    ),
    "SampleStream": frozenset({OK, Code.INVALID_ARGUMENT, Code.FAILED_PRECONDITION, Code.RESOURCE_EXHAUSTED}),
    "UpdatePriorities": frozenset({OK, Code.INVALID_ARGUMENT}),
    "GetInfo": frozenset({OK}),
    "SaveSnapshot": frozenset({OK, Code.FAILED_PRECONDITION}),
    "RegisterActor": frozenset({OK, Code.INVALID_ARGUMENT}),
    "GetParameters": frozenset({OK, Code.FAILED_PRECONDITION, Code.NOT_FOUND}),
    "WatchParameters": frozenset({OK, Code.FAILED_PRECONDITION, Code.NOT_FOUND}),
    "GetStatus": frozenset({OK}),
    "ReportEvaluation": frozenset({OK, Code.INVALID_ARGUMENT, Code.FAILED_PRECONDITION}),
    "Check": frozenset({OK, Code.NOT_FOUND}),
}
# Whatever the RPC, a request whose bytes do not parse is the caller's error.
UNDECODABLE = Code.INVALID_ARGUMENT

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# For RPCs fuzzed in two runs, structured messages and raw bytes: EXAMPLES in all.
STRUCTURED_SHARE = settings(FUZZ, max_examples=EXAMPLES * 3 // 4)
RAW_SHARE = settings(FUZZ, max_examples=EXAMPLES - EXAMPLES * 3 // 4)

# --- Calling a method with raw bytes --------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    code: Code
    details: str
    body: bytes | None  # the reply (the first message of a stream) when OK


def _same(data: bytes) -> bytes:
    return data


class Method:
    """One RPC, called with request bytes as they are; counts the requests it sent.

    ``stream``: the RPC streams its replies; ``bidi``: its requests too (one is sent per call).
    """

    def __init__(
        self,
        channel: grpc.Channel,
        service: str,
        name: str,
        request: type[Message],
        stream: bool = False,
        bidi: bool = False,
    ) -> None:
        self.name = name
        self.request = request
        self.sent = 0
        self.codes: Counter[str] = Counter()  # replies by status code
        path = f"/{service}/{name}"
        self._stream = stream or bidi
        self._bidi = bidi
        self._unary = channel.unary_unary(path, request_serializer=_same, response_deserializer=_same)
        self._streaming = channel.unary_stream(path, request_serializer=_same, response_deserializer=_same)
        self._both_streaming = channel.stream_stream(
            path, request_serializer=_same, response_deserializer=_same
        )

    def decodes(self, payload: bytes) -> bool:
        try:
            self.request.FromString(payload)
        except DecodeError:
            return False
        return True

    def call(self, payload: bytes) -> Reply:
        """Sends ``payload`` and checks the status against the RPC's documented codes."""
        self.sent += 1
        reply = self._call(payload)
        self.codes[reply.code.name] += 1
        if self.decodes(payload):
            assert reply.code in ALLOWED[self.name], (
                f"{self.name} answered {reply.code.name} ({reply.details}), "
                f"not one of {sorted(code.name for code in ALLOWED[self.name])}"
            )
        else:
            assert reply.code == UNDECODABLE, (
                f"{self.name} answered an undecodable request with {reply.code.name} ({reply.details})"
            )
        return reply

    def _call(self, payload: bytes) -> Reply:
        try:
            if not self._stream:
                return Reply(OK, "", self._unary(payload, timeout=TIMEOUT_S))
            stream = (
                self._both_streaming(iter([payload]), timeout=TIMEOUT_S)
                if self._bidi
                else self._streaming(payload, timeout=TIMEOUT_S)
            )
            try:
                return Reply(OK, "", next(stream))
            except StopIteration:
                return Reply(stream.code(), stream.details() or "", None)
            finally:
                stream.cancel()
        except grpc.RpcError as error:
            return Reply(error.code(), error.details() or "", None)


def assert_sent(method: Method, least: int) -> None:
    print(f"{method.name}: {method.sent} requests, answered {dict(method.codes)}")  # shown with -rP
    assert method.sent >= least, f"{method.name} got only {method.sent} requests"


def serialized(message: Message) -> bytes:
    return message.SerializeToString()


# --- Strategies shared by every RPC ---------------------------------------------------------

INT32 = st.integers(-(2**31), 2**31 - 1)
INT64 = st.integers(-(2**63), 2**63 - 1)
UINT64 = st.integers(0, 2**64 - 1)
ANY_FLOAT = st.floats(allow_nan=True, allow_infinity=True)
# Enum values a proto3 (open) enum field carries on the wire: any int32.
ENUM_OUT_OF_RANGE = st.one_of(st.integers(10, 2**31 - 1), st.integers(-(2**31), -1))
NAMES = st.text(max_size=24)


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64 values go out as ten bytes, like protobuf's own
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


@st.composite
def wire_fields(draw: st.DrawFn, numbers: st.SearchStrategy[int]) -> bytes:
    """Well-framed protobuf fields with the given numbers, each of any wire type and content."""
    out = bytearray()
    for _ in range(draw(st.integers(1, 6))):
        number = draw(numbers)
        wire_type = draw(st.sampled_from([0, 1, 2, 5]))
        out += _varint(number << 3 | wire_type)
        if wire_type == 0:
            out += _varint(draw(INT64))
        elif wire_type == 1:
            out += draw(st.binary(min_size=8, max_size=8))
        elif wire_type == 5:
            out += draw(st.binary(min_size=4, max_size=4))
        else:
            payload = draw(st.one_of(st.binary(max_size=48), wire_fields(st.integers(1, 5))))
            out += _varint(len(payload)) + payload
    return bytes(out)


# Field numbers no request message of these services uses (they are skipped as unknown).
UNKNOWN_FIELDS = wire_fields(st.integers(100, 2**29 - 1))


@st.composite
def malformed(draw: st.DrawFn) -> bytes:
    """Fields of the message's own numbers with any wire type and content, maybe cut short or
    followed by a broken tag: decodable or not, the client finds out as the server does."""
    data = draw(wire_fields(st.integers(1, 12)))
    cut = draw(st.one_of(st.none(), st.integers(0, len(data))))
    if cut is not None:
        data = data[:cut]
    tail = draw(st.sampled_from([b"", b"\x80", b"\x07", b"\x0b", b"\x0f\x00", b"\x0a\x7f"]))
    return data + tail


GARBAGE = st.one_of(st.binary(max_size=96), malformed())
RAW = "raw bytes"
Case = tuple[bytes, tuple[str, ...]]  # a request's bytes, and what was done to it


@st.composite
def or_raw(draw: st.DrawFn, structured: st.SearchStrategy[Case]) -> Case:
    """Mostly ``structured``; one case in four raw bytes."""
    if draw(st.integers(0, 3)) == 0:
        return draw(GARBAGE), (RAW,)
    return draw(structured)


def examples(cases: list[Case]) -> Callable[[Any], Any]:
    """``@example`` for each case: explicit cases hypothesis runs before generating."""

    def decorate(test: Any) -> Any:
        for payload, labels in reversed(cases):
            test = example(case=(payload, labels))(test)
        return test

    return decorate


# --- The replay shard -----------------------------------------------------------------------

CAPACITY = 64
STORED = 48  # items inserted before the runs: the shard holds them, unevicted
ITEM_SHAPE = (6,)  # of the encoded column
ENCODED = "frames"
DENSE = ("observation", "action", "reward", "discount", "next_observation")
COLUMNS = (*DENSE, ENCODED)
WIRE_DTYPES = list(range(1, 10))


def batch_columns(first: int, count: int) -> dict[str, Any]:
    """The shard's signature: W1-shaped dense columns and one encoded uint8 column."""
    columns: dict[str, Any] = dict(transitions(first, count))
    frames = (np.arange(first, first + count)[:, None] + np.arange(6)).astype(np.uint8)
    columns[ENCODED] = compress(frames)
    return columns


def insert_request(count: int, first: int = 0) -> replay_pb2.InsertTransitionsRequest:
    """A valid insert of ``count`` items (the defects below spoil it)."""
    request = replay_pb2.InsertTransitionsRequest(max_wait_s=0.5)
    tensor_codec.encode_columns_into(request.batch, batch_columns(first, count))
    priorities = (1.0 + np.arange(first, first + count) % 7).astype(np.float32)
    tensor_codec.encode_into(request.priorities, priorities)
    return request


def _array(tensor: tensor_pb2.Tensor) -> NDArray[Any]:
    return tensor_codec.decode(tensor).copy()


@dataclass
class Spoilt:
    """A valid request being spoilt, and the arrays it was made of (defects start from those)."""

    request: Any
    count: int
    priorities: NDArray[Any]


@dataclass
class Batch(Spoilt):
    columns: dict[str, Any]

    @property
    def frames(self) -> EncodedItems:
        frames: EncodedItems = self.columns[ENCODED]
        return frames


def _shape_other_than(original: list[int]) -> st.SearchStrategy[list[int]]:
    dimension = st.one_of(
        st.integers(0, 5),
        INT64,
        st.sampled_from([-1, 2**31, 2**32 - 1, 2**61, 2**62, 2**63 - 1]),
    )
    shapes = st.one_of(st.lists(dimension, max_size=5), st.lists(st.integers(0, 2), min_size=64, max_size=70))
    return shapes.filter(lambda shape: shape != original)


def _dense_column(draw: st.DrawFn, batch: Batch) -> tuple[str, tensor_pb2.Tensor]:
    name = draw(st.sampled_from(DENSE))
    tensor: tensor_pb2.Tensor = batch.request.batch.columns[name]
    return name, tensor


def column_dtype_out_of_range(draw: st.DrawFn, batch: Batch) -> None:
    _, tensor = _dense_column(draw, batch)
    tensor.dtype = draw(st.one_of(st.just(0), ENUM_OUT_OF_RANGE))  # type: ignore[assignment]


def column_dtype_changed(draw: st.DrawFn, batch: Batch) -> None:
    _, tensor = _dense_column(draw, batch)
    other = [value for value in WIRE_DTYPES if value != tensor.dtype]
    tensor.dtype = draw(st.sampled_from(other))  # type: ignore[assignment]


def column_shape_changed(draw: st.DrawFn, batch: Batch) -> None:
    _, tensor = _dense_column(draw, batch)
    tensor.shape[:] = draw(_shape_other_than(list(tensor.shape)))


def column_bytes_cut_or_padded(draw: st.DrawFn, batch: Batch) -> None:
    name, tensor = _dense_column(draw, batch)
    data = batch.columns[name].tobytes()
    if draw(st.booleans()):
        tensor.data = data[: draw(st.integers(0, len(data) - 1))]
    else:
        tensor.data = data + draw(st.binary(min_size=1, max_size=9))


def column_missing(draw: st.DrawFn, batch: Batch) -> None:
    name = draw(st.sampled_from(COLUMNS))
    columns = batch.request.batch.encoded_columns if name == ENCODED else batch.request.batch.columns
    if name in columns:
        del columns[name]


def column_unknown(draw: st.DrawFn, batch: Batch) -> None:
    name = draw(NAMES.filter(lambda name: name not in COLUMNS))
    columns = batch.request.batch
    if draw(st.booleans()):
        tensor_codec.encode_into(columns.columns[name], np.zeros(batch.count, np.float32))
    else:
        tensor_codec.encode_encoded_into(columns.encoded_columns[name], compress(np.zeros((batch.count, 3))))


def columns_ragged(draw: st.DrawFn, batch: Batch) -> None:
    name, tensor = _dense_column(draw, batch)
    rows = draw(st.integers(0, batch.count + 3).filter(lambda rows: rows != batch.count))
    array = batch.columns[name]
    tensor_codec.encode_into(tensor, np.resize(array, (rows, *array.shape[1:])))


def column_raw_and_encoded(draw: st.DrawFn, batch: Batch) -> None:
    name = draw(st.sampled_from(DENSE))
    tensor_codec.encode_encoded_into(batch.request.batch.encoded_columns[name], compress(batch.columns[name]))


def batch_missing(draw: st.DrawFn, batch: Batch) -> None:
    batch.request.ClearField("batch")


def batch_empty(draw: st.DrawFn, batch: Batch) -> None:
    request = batch.request
    request.ClearField("batch")
    for name in DENSE:
        tensor_codec.encode_into(request.batch.columns[name], batch.columns[name][:0])
    encoded = request.batch.encoded_columns[ENCODED]
    encoded.codec = tensor_pb2.CODEC_ZSTD
    encoded.item_spec.CopyFrom(tensor_codec.encode_spec(np.dtype(np.uint8), ITEM_SHAPE))
    tensor_codec.encode_into(encoded.sizes, np.zeros(0, np.int64))
    tensor_codec.encode_into(request.priorities, np.zeros(0, np.float32))


# Priorities (of InsertTransitions and UpdatePriorities alike).
BAD_PRIORITY = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf, -1.0, -5e-324, -1e308]),
    st.floats(max_value=0.0, exclude_max=True),
)


def priority_not_finite_or_negative(draw: st.DrawFn, spoilt: Spoilt) -> None:
    values = spoilt.priorities.astype(np.float64)
    values[draw(st.integers(0, spoilt.count - 1))] = draw(BAD_PRIORITY)
    tensor_codec.encode_into(spoilt.request.priorities, values)  # float64: a tiny negative stays negative


def priorities_wrong_length(draw: st.DrawFn, spoilt: Spoilt) -> None:
    length = draw(st.integers(0, spoilt.count + 3).filter(lambda length: length != spoilt.count))
    tensor_codec.encode_into(spoilt.request.priorities, np.ones(length, np.float32))


def priorities_wrong_dtype(draw: st.DrawFn, spoilt: Spoilt) -> None:
    dtype = draw(st.sampled_from(["int8", "int16", "int32", "int64", "uint8", "bool"]))
    tensor_codec.encode_into(spoilt.request.priorities, np.ones(spoilt.count, dtype))


def _tensor_spoilt(draw: st.DrawFn, owner: Message, field: str, array: NDArray[Any]) -> None:
    """The tensor ``field`` of ``owner``: missing, of a bad dtype, shape or byte length."""
    tensor = getattr(owner, field)
    choice = draw(st.sampled_from(["missing", "dtype", "2-D", "shape", "bytes"]))
    if choice == "missing":
        owner.ClearField(field)
    elif choice == "dtype":
        tensor.dtype = draw(st.one_of(st.just(0), ENUM_OUT_OF_RANGE))
    elif choice == "2-D":
        tensor_codec.encode_into(tensor, array[:, None])
    elif choice == "shape":
        tensor.shape[:] = draw(_shape_other_than(list(array.shape)))
    else:
        data = array.tobytes()
        tensor.data = data[:-1] if draw(st.booleans()) else data + draw(st.binary(min_size=1, max_size=7))


def priorities_bad_tensor(draw: st.DrawFn, spoilt: Spoilt) -> None:
    _tensor_spoilt(draw, spoilt.request, "priorities", spoilt.priorities)


# The encoded column.
def _encoded(batch: Batch) -> tensor_pb2.EncodedColumn:
    column: tensor_pb2.EncodedColumn = batch.request.batch.encoded_columns[ENCODED]
    return column


def encoded_codec_out_of_range(draw: st.DrawFn, batch: Batch) -> None:
    _encoded(batch).codec = draw(st.one_of(st.just(0), ENUM_OUT_OF_RANGE))  # type: ignore[assignment]


def encoded_item_spec_changed(draw: st.DrawFn, batch: Batch) -> None:
    spec = _encoded(batch).item_spec
    if draw(st.booleans()):
        spec.shape[:] = draw(_shape_other_than(list(ITEM_SHAPE)))
    else:
        other = st.sampled_from([value for value in WIRE_DTYPES if value != tensor_pb2.DATA_TYPE_UINT8])
        spec.dtype = draw(st.one_of(other, st.just(0), ENUM_OUT_OF_RANGE))  # type: ignore[assignment]


def encoded_sizes_wrong(draw: st.DrawFn, batch: Batch) -> None:
    column, frames, count = _encoded(batch), batch.frames, batch.count
    sizes = frames.sizes.copy()
    choice = draw(st.sampled_from(["bad tensor", "int32", "not positive", "sum", "overflow"]))
    if choice == "bad tensor":
        _tensor_spoilt(draw, column, "sizes", sizes)
        return
    if choice == "int32":
        tensor_codec.encode_into(column.sizes, sizes.astype(np.int32))
        return
    index = draw(st.integers(0, count - 1))
    if choice == "not positive":
        sizes[index] = draw(st.integers(-(2**63), 0))
    elif choice == "sum":
        sizes[index] = draw(st.integers(1, 2**63 - 1).filter(lambda new: new != int(sizes[index])))
    else:  # sizes whose int64 sum wraps round to the data's length exactly (three items or more)
        sizes[:] = 1
        sizes[:2] = 2**63 - 1
        sizes[-1] = len(frames.data) + 2 - (count - 3) if count >= 3 else sizes[-1]
    tensor_codec.encode_into(column.sizes, sizes)


def encoded_data_cut(draw: st.DrawFn, batch: Batch) -> None:
    column, frames = _encoded(batch), batch.frames
    sizes = frames.sizes.copy()
    cut = draw(st.integers(1, int(sizes[-1])))
    column.data = frames.data.tobytes()[:-cut]
    if draw(st.booleans()) and sizes[-1] > cut:  # keep the framing consistent: the last frame is short
        sizes[-1] -= cut
        tensor_codec.encode_into(column.sizes, sizes)


def _still_decodes(column: tensor_pb2.EncodedColumn) -> bool:
    try:
        check_encoded(tensor_codec.decode_encoded(column, ENCODED))
    except InvalidInputError:
        return False
    return True


def encoded_data_corrupt(draw: st.DrawFn, batch: Batch) -> None:
    column, frames = _encoded(batch), batch.frames
    data = bytearray(frames.data.tobytes())
    if draw(st.booleans()):
        position = draw(st.integers(0, len(data) - 1))
        data[position] ^= draw(st.integers(1, 255))
    else:
        data[:] = draw(st.binary(min_size=len(data), max_size=len(data)))
    column.data = bytes(data)
    if _still_decodes(column):  # a bit the frame does not notice (a header flag): spoil the sizes too
        tensor_codec.encode_into(column.sizes, np.zeros(batch.count, np.int64))


def encoded_item_of_another_size(draw: st.DrawFn, batch: Batch) -> None:
    column, frames, count = _encoded(batch), batch.frames, batch.count
    index = draw(st.integers(0, count - 1))
    length = draw(st.integers(0, 24).filter(lambda length: length != math.prod(ITEM_SHAPE)))
    bounds = zip(frames.offsets().tolist(), frames.sizes.tolist(), strict=True)
    items = [frames.data[start : start + size].tobytes() for start, size in bounds]
    # Another number of bytes, or none at all (a bare magic number, then nothing).
    items[index] = compress(np.zeros((1, length), np.uint8)).data.tobytes() if length else b"\x28\xb5\x2f\xfd"
    tensor_codec.encode_into(column.sizes, np.array([len(item) for item in items], np.int64))
    column.data = b"".join(items)


# Applied in this order, each to the pristine arrays: whatever two of them do, the batch stays spoilt.
INSERT_DEFECTS: dict[str, Callable[[st.DrawFn, Batch], None]] = {
    defect.__name__: defect
    for defect in (
        columns_ragged,
        column_raw_and_encoded,
        column_unknown,
        column_dtype_out_of_range,
        column_dtype_changed,
        column_shape_changed,
        column_bytes_cut_or_padded,
        priority_not_finite_or_negative,
        priorities_wrong_length,
        priorities_wrong_dtype,
        priorities_bad_tensor,
        encoded_codec_out_of_range,
        encoded_item_spec_changed,
        encoded_sizes_wrong,
        encoded_data_cut,
        encoded_data_corrupt,
        encoded_item_of_another_size,
        column_missing,
        batch_missing,
        batch_empty,
    )
}
_INSERT_ORDER = list(INSERT_DEFECTS)


@st.composite
def hostile_inserts(draw: st.DrawFn) -> Case:
    """A valid insert spoilt by one or two defects, or one of more items than the shard holds."""
    if draw(st.integers(0, 19)) == 0:
        count = draw(st.integers(CAPACITY + 1, 4 * CAPACITY))
        request = insert_request(count)
        request.max_wait_s = draw(ANY_FLOAT)
        return serialized(request), ("batch_over_capacity",)
    count, first = draw(st.integers(1, 4)), draw(st.integers(0, 200))
    request = insert_request(count, first)
    request.max_wait_s = draw(ANY_FLOAT)
    batch = Batch(request, count, _array(request.priorities), batch_columns(first, count))
    names = draw(st.lists(st.sampled_from(_INSERT_ORDER), min_size=1, max_size=2, unique=True))
    names.sort(key=_INSERT_ORDER.index)
    for name in names:
        INSERT_DEFECTS[name](draw, batch)
    return serialized(request), tuple(names)


Spoil = Callable[[replay_pb2.InsertTransitionsRequest], None]


def explicit_inserts() -> list[Case]:
    """Requests of more than the 65,536 items an insert takes and of more bytes than the limit,
    and the inserts the fuzzing found answered with INTERNAL before the shard checked for them."""
    count = 65_537
    many = replay_pb2.InsertTransitionsRequest(max_wait_s=0.1)  # small items: under the byte limit
    tensor_codec.encode_into(many.batch.columns["action"], np.zeros(count, np.int8))
    tensor_codec.encode_into(many.priorities, np.ones(count, np.float32))
    big = insert_request(2)
    tensor_codec.encode_into(big.batch.columns["padding"], np.zeros((2, 140_000), np.float32))
    cases: list[Case] = [
        (serialized(many), ("over_insert_limit",)),
        (serialized(big), ("over_message_limit",)),
    ]

    def spoilt(label: str, spoil: Spoil, count: int = 2) -> None:
        request = insert_request(count)
        spoil(request)
        cases.append((serialized(request), (f"regression: {label}",)))

    def shape(name: str, dimensions: list[int], data: bytes = b"") -> Spoil:
        def spoil(request: replay_pb2.InsertTransitionsRequest) -> None:
            request.batch.columns[name].shape[:] = dimensions
            request.batch.columns[name].data = data

        return spoil

    def item_shape(dimensions: list[int], dtype: int) -> Spoil:
        def spoil(request: replay_pb2.InsertTransitionsRequest) -> None:
            request.batch.encoded_columns[ENCODED].item_spec.shape[:] = dimensions
            request.batch.encoded_columns[ENCODED].item_spec.dtype = dtype  # type: ignore[assignment]

        return spoil

    def wrapping_sizes(request: replay_pb2.InsertTransitionsRequest) -> None:
        column = request.batch.encoded_columns[ENCODED]
        sizes = [2**63 - 1, 2**63 - 1, len(column.data) + 2]  # int64 sum: exactly the data's length
        tensor_codec.encode_into(column.sizes, np.array(sizes, np.int64))

    # numpy refuses these shapes (ValueError); the bytes match their element count.
    spoilt("a zero dimension beside a huge one", shape("observation", [0, 2**62]))
    spoilt("65 dimensions", shape("observation", [*[1] * 63, 2, 4], bytes(32)))
    # An item size above uint64 (OverflowError), and one of a terabyte (MemoryError).
    spoilt("items above 2**64 bytes", item_shape([2**62, 4], tensor_pb2.DATA_TYPE_FLOAT64))
    spoilt("items of a terabyte", item_shape([2**40], tensor_pb2.DATA_TYPE_UINT8))
    spoilt("sizes whose int64 sum wraps round", wrapping_sizes, count=3)
    return cases


@dataclass(frozen=True)
class TableSnapshot:
    """What a request could change in the table: counters, rows and priorities."""

    info: TableInfo
    rows: dict[str, bytes]
    priority_masses: bytes


def table_state(table: PrioritizedTable) -> TableSnapshot:
    info = table.info()
    state = table.export_state()
    rows: dict[str, bytes] = {}
    for name, column in state.columns.items():
        if isinstance(column, EncodedItems):
            rows[name] = column.sizes.tobytes() + column.data.tobytes()
        else:
            rows[name] = np.ascontiguousarray(column).tobytes()
    return TableSnapshot(info, rows, state.priority_masses.tobytes())


def without_samples(state: TableSnapshot) -> TableSnapshot:
    return dataclasses.replace(state, info=dataclasses.replace(state.info, samples=0))


@dataclass
class ReplayUnderTest:
    shard: ReplayShard
    channel: grpc.Channel
    keys: NDArray[np.int64]  # of the items stored

    def method(
        self, name: str, request: type[Message], service: str = REPLAY_SERVICE, bidi: bool = False
    ) -> Method:
        return Method(self.channel, service, name, request, bidi=bidi)


@pytest.fixture(scope="module")
def replay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReplayUnderTest]:
    """A shard with a 1 MiB message limit, a snapshot path and ``STORED`` items; no rate limit."""
    path = tmp_path_factory.mktemp("hostile_replay") / "shard.snapshot"
    shard = ReplayShard(ReplayShardSettings(capacity=CAPACITY, seed=7, max_message_mib=1, snapshot_path=path))
    channel = create_channel(shard.address)
    insert = Method(channel, REPLAY_SERVICE, "InsertTransitions", replay_pb2.InsertTransitionsRequest)
    keys = []
    for first in range(0, STORED, 16):  # the same builder the hostile inserts start from: valid as it is
        reply = insert.call(serialized(insert_request(16, first)))
        assert reply.code == OK, reply.details
        assert reply.body is not None
        keys.append(_array(replay_pb2.InsertTransitionsResponse.FromString(reply.body).keys))
    yield ReplayUnderTest(shard, channel, np.concatenate(keys))
    channel.close()
    shard.stop(snapshot=False)


def assert_replay_serves(replay: ReplayUnderTest, before: TableSnapshot) -> None:
    """The shard still answers, is SERVING, and GetInfo reports the stored data unchanged."""
    info = replay.method("GetInfo", replay_pb2.GetInfoRequest).call(b"")
    assert info.code == OK
    assert info.body is not None
    reply = replay_pb2.GetInfoResponse.FromString(info.body)
    expected = before.info
    assert (reply.size, reply.inserts, reply.priority_updates) == (
        expected.size,
        expected.inserts,
        expected.priority_updates,
    )
    assert reply.total_priority_mass == pytest.approx(expected.total_priority_mass, rel=1e-12)
    assert set(reply.signature) == set(COLUMNS)
    assert dict(reply.column_codecs) == {ENCODED: tensor_pb2.CODEC_ZSTD}
    health = replay.method("Check", health_pb2.HealthCheckRequest, HEALTH_SERVICE)
    for service in ("", REPLAY_SERVICE):
        answer = health.call(serialized(health_pb2.HealthCheckRequest(service=service)))
        assert answer.code == OK
        assert answer.body is not None
        assert (
            health_pb2.HealthCheckResponse.FromString(answer.body).status
            == health_pb2.HealthCheckResponse.SERVING
        )


@pytest.mark.parametrize("rpc", ["InsertTransitions", "InsertStream"])
def test_hostile_inserts_store_nothing(replay: ReplayUnderTest, rpc: str) -> None:
    streamed = rpc == "InsertStream"
    request = replay_pb2.InsertStreamRequest if streamed else replay_pb2.InsertTransitionsRequest
    method = replay.method(rpc, request, bidi=streamed)
    table = replay.shard.table
    before = table_state(table)

    @FUZZ
    @examples(explicit_inserts())
    @given(case=or_raw(hostile_inserts()))
    def run(case: Case) -> None:
        payload, defects = case
        reply = method.call(_as_field_1(payload) if streamed else payload)
        assert reply.code != OK, f"an insert with {defects} was stored"
        assert table_state(table) == before, f"a refused insert ({defects}) changed the table"

    run()
    assert_sent(method, EXAMPLES)
    assert_replay_serves(replay, before)


@dataclass
class Update(Spoilt):
    keys: NDArray[np.int64]
    end: int  # keys from here on were never issued


def key_never_issued(draw: st.DrawFn, update: Update) -> None:
    keys = update.keys.copy()
    keys[draw(st.integers(0, update.count - 1))] = draw(
        st.one_of(st.integers(update.end, 2**63 - 1), st.integers(-(2**63), -1))
    )
    tensor_codec.encode_into(update.request.keys, keys)


def keys_wrong_dtype(draw: st.DrawFn, update: Update) -> None:
    dtype = draw(st.sampled_from(["int32", "float64", "uint8", "int16", "bool"]))
    keys = update.keys % 2 if dtype == "bool" else update.keys
    tensor_codec.encode_into(update.request.keys, keys.astype(dtype))


def keys_bad_tensor(draw: st.DrawFn, update: Update) -> None:
    _tensor_spoilt(draw, update.request, "keys", update.keys)


UPDATE_DEFECTS: dict[str, Callable[[st.DrawFn, Update], None]] = {
    defect.__name__: defect
    for defect in (
        key_never_issued,
        keys_wrong_dtype,
        keys_bad_tensor,
        priority_not_finite_or_negative,
        priorities_wrong_length,
        priorities_wrong_dtype,
        priorities_bad_tensor,
    )
}
_UPDATE_ORDER = list(UPDATE_DEFECTS)
HARMLESS = (("empty",), ("stale",))


@st.composite
def hostile_updates(draw: st.DrawFn, keys: NDArray[np.int64], first_live: int, end: int) -> Case:
    """Updates that must change no priority: spoilt ones, and valid ones of no live key."""
    count = draw(st.integers(1, 6))
    live = np.array(draw(st.lists(st.sampled_from(keys.tolist()), min_size=count, max_size=count)), np.int64)
    priorities = np.full(count, 0.25, np.float32)
    request = replay_pb2.UpdatePrioritiesRequest()
    tensor_codec.encode_into(request.keys, live)
    tensor_codec.encode_into(request.priorities, priorities)
    harmless = draw(st.sampled_from(["", "", "", "", "empty", "stale"]))
    if harmless == "empty":
        tensor_codec.encode_into(request.keys, np.zeros(0, np.int64))
        tensor_codec.encode_into(request.priorities, np.zeros(0, np.float64))
        return serialized(request), ("empty",)
    if harmless == "stale":  # keys of earlier incarnations (below the oldest live key)
        stale = draw(st.lists(st.integers(0, first_live - 1), min_size=count, max_size=count))
        tensor_codec.encode_into(request.keys, np.array(stale, np.int64))
        return serialized(request), ("stale",)
    update = Update(request, count, priorities, live, end)
    names = draw(st.lists(st.sampled_from(_UPDATE_ORDER), min_size=1, max_size=2, unique=True))
    names.sort(key=_UPDATE_ORDER.index)
    for name in names:
        UPDATE_DEFECTS[name](draw, update)
    return serialized(request), tuple(names)


def test_hostile_priority_updates_change_no_priority(replay: ReplayUnderTest) -> None:
    method = replay.method("UpdatePriorities", replay_pb2.UpdatePrioritiesRequest)
    table = replay.shard.table
    before = table_state(table)
    info = before.info
    first_live, end = info.incarnation, info.incarnation + info.inserts

    @FUZZ
    @given(case=or_raw(hostile_updates(replay.keys, first_live, end)))
    def run(case: Case) -> None:
        payload, defects = case
        reply = method.call(payload)
        if defects in HARMLESS:
            assert reply.code == OK, f"a valid update of no live key ({defects}) failed: {reply.details}"
            assert reply.body is not None
            assert replay_pb2.UpdatePrioritiesResponse.FromString(reply.body).updated == 0
        elif defects != (RAW,):
            assert reply.code != OK, f"an update with {defects} was applied"
        assert table_state(table) == before, f"an update ({defects}) changed the table"

    run()
    assert_sent(method, EXAMPLES)
    assert_replay_serves(replay, before)


BATCH_SIZES = st.one_of(
    st.integers(0, 2**32 - 1),
    st.sampled_from([0, 1, 16_384, 16_385, 2**31, 2**32 - 1]),
    st.integers(1, 64),
    st.integers(11_000, 16_384),  # replies near the 1 MiB limit
)


@st.composite
def hostile_samples(draw: st.DrawFn) -> Case:
    request = replay_pb2.SampleTransitionsRequest(batch_size=draw(BATCH_SIZES), max_wait_s=draw(ANY_FLOAT))
    extra = draw(st.one_of(st.just(b""), UNKNOWN_FIELDS))
    return serialized(request) + extra, ("sample",)


def _as_field_1(payload: bytes) -> bytes:
    """``payload`` as field 1 of a message (a SampleStreamRequest's ``sample``, an
    InsertStreamRequest's ``insert``), whatever its bytes."""
    return _varint(1 << 3 | 2) + _varint(len(payload)) + payload


@pytest.mark.parametrize("rpc", ["SampleTransitions", "SampleStream"])
def test_hostile_samples_answer_a_documented_status_and_change_no_item(
    replay: ReplayUnderTest, rpc: str
) -> None:
    streamed = rpc == "SampleStream"
    request = replay_pb2.SampleStreamRequest if streamed else replay_pb2.SampleTransitionsRequest
    method = replay.method(rpc, request, bidi=streamed)
    table = replay.shard.table
    live = set(replay.keys.tolist())
    before = table_state(table)

    @FUZZ
    @example(case=(serialized(replay_pb2.SampleTransitionsRequest(batch_size=12_500)), ("sample",)))
    @given(case=or_raw(hostile_samples()))
    def run(case: Case) -> None:
        payload, _labels = case
        counted = table_state(table)
        reply = method.call(_as_field_1(payload) if streamed else payload)
        if reply.code != OK:  # a failed sample draws nothing, so counts nothing
            assert table_state(table) == counted, f"a failed sample ({reply.code.name}) changed the table"
            return
        assert without_samples(table_state(table)) == without_samples(before)
        assert reply.body is not None
        sampled = (
            replay_pb2.SampleStreamResponse.FromString(reply.body).sample
            if streamed
            else replay_pb2.SampleTransitionsResponse.FromString(reply.body)
        )
        size = replay_pb2.SampleTransitionsRequest.FromString(payload).batch_size
        keys = _array(sampled.keys)
        assert len(keys) == size
        assert set(keys.tolist()) <= live
        assert set(sampled.batch.columns) | set(sampled.batch.encoded_columns) == set(COLUMNS)

    run()
    assert_sent(method, EXAMPLES)
    assert_replay_serves(replay, before)


def test_get_info_answers_whatever_comes(replay: ReplayUnderTest) -> None:
    method = replay.method("GetInfo", replay_pb2.GetInfoRequest)
    table = replay.shard.table
    before = table_state(table)

    @FUZZ
    @given(payload=st.one_of(UNKNOWN_FIELDS, GARBAGE))
    def run(payload: bytes) -> None:
        reply = method.call(payload)
        if reply.code == OK:
            assert reply.body is not None
            assert replay_pb2.GetInfoResponse.FromString(reply.body).size == STORED
        assert table_state(table) == before

    run()
    assert_sent(method, EXAMPLES)
    assert_replay_serves(replay, before)


def test_save_snapshot_keeps_the_table_and_writes_it_whole(replay: ReplayUnderTest) -> None:
    method = replay.method("SaveSnapshot", replay_pb2.SaveSnapshotRequest)
    table = replay.shard.table
    before = table_state(table)

    @FUZZ
    @given(payload=st.one_of(UNKNOWN_FIELDS, GARBAGE))
    def run(payload: bytes) -> None:
        reply = method.call(payload)
        if reply.code == OK:
            assert reply.body is not None
            assert replay_pb2.SaveSnapshotResponse.FromString(reply.body).size == STORED
        assert table_state(table) == before

    run()
    assert_sent(method, EXAMPLES)
    assert_replay_serves(replay, before)
    path = replay.shard.settings.snapshot_path
    assert path is not None
    saved = load_snapshot(path)
    assert saved.rows == STORED
    assert saved.priority_masses.tobytes() == before.priority_masses


HEALTH_NAMES = st.one_of(
    NAMES,
    st.text(min_size=200, max_size=2000),
    st.sampled_from(
        ["", REPLAY_SERVICE, LEARNER_SERVICE, HEALTH_SERVICE, "grpc.reflection.v1alpha.ServerReflection"]
    ),
    st.sampled_from([REPLAY_SERVICE, LEARNER_SERVICE]).map(lambda name: name + "\x00"),
)


def check_health_names(method: Method, serving: set[str]) -> None:
    """Health checks of any service name: SERVING for the server's own, NOT_FOUND otherwise."""

    @FUZZ
    @given(service=HEALTH_NAMES, extra=st.one_of(st.just(b""), UNKNOWN_FIELDS))
    def run(service: str, extra: bytes) -> None:
        reply = method.call(serialized(health_pb2.HealthCheckRequest(service=service)) + extra)
        if service in serving:
            assert reply.code == OK
            assert reply.body is not None
            status = health_pb2.HealthCheckResponse.FromString(reply.body).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        else:
            assert reply.code == Code.NOT_FOUND, f"health of {service!r}: {reply.code.name}"

    run()
    assert_sent(method, EXAMPLES)


def test_health_checks_of_hostile_service_names_on_the_shard(replay: ReplayUnderTest) -> None:
    before = table_state(replay.shard.table)
    check_health_names(
        replay.method("Check", health_pb2.HealthCheckRequest, HEALTH_SERVICE), {"", REPLAY_SERVICE}
    )
    assert_replay_serves(replay, before)


# --- The learner ----------------------------------------------------------------------------


@dataclass
class LearnerUnderTest:
    learner: Learner
    channel: grpc.Channel
    known_actors: list[int]

    def method(
        self, name: str, request: type[Message], stream: bool = False, service: str = LEARNER_SERVICE
    ) -> Method:
        return Method(self.channel, service, name, request, stream)

    @property
    def current(self) -> tuple[str, int]:
        store = self.learner.store
        return store.lineage, store.version

    def registered(self) -> list[int]:
        return [record.actor_id for record in self.learner.registry.active()]

    def evaluations(self) -> tuple[object, object, tuple[int, int] | None]:
        """The latest and best evaluations and the best model file's (mtime, size)."""
        progress = self.learner.progress
        path = self.learner.settings.run_dir / BEST_MODEL
        stat = path.stat() if path.exists() else None
        return progress.latest, progress.best, None if stat is None else (stat.st_mtime_ns, stat.st_size)


@pytest.fixture(scope="module")
def learner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LearnerUnderTest]:
    """A learner on an empty shard: it never trains, so it publishes one version only; a
    registration lasts the whole module."""
    shard = ReplayShard(ReplayShardSettings(capacity=1000, seed=11))
    run_dir = tmp_path_factory.mktemp("hostile_learner") / "run"
    learner = Learner(small_config(), LearnerSettings((shard.address,), run_dir, client_expiry_s=3600.0))
    channel = create_channel(learner.address)
    register = Method(channel, LEARNER_SERVICE, "RegisterActor", learner_pb2.RegisterActorRequest)
    known = []
    for role in (
        learner_pb2.CLIENT_ROLE_ACTOR,
        learner_pb2.CLIENT_ROLE_EVALUATOR,
        learner_pb2.CLIENT_ROLE_OBSERVER,
    ):
        reply = register.call(serialized(learner_pb2.RegisterActorRequest(role=role, client_name="known")))
        assert reply.code == OK
        assert reply.body is not None
        known.append(learner_pb2.RegisterActorResponse.FromString(reply.body).actor_id)
    yield LearnerUnderTest(learner, channel, known)
    channel.close()
    learner.stop()
    shard.stop(snapshot=False)


def assert_learner_serves(under_test: LearnerUnderTest, current: tuple[str, int]) -> None:
    """Same lineage and version, the trainer alive, GetStatus answering, health SERVING."""
    learner = under_test.learner
    assert under_test.current == current
    status = under_test.method("GetStatus", learner_pb2.GetStatusRequest).call(b"")
    assert status.code == OK, status.details
    assert status.body is not None
    reply = learner_pb2.GetStatusResponse.FromString(status.body)
    assert (reply.parameter_lineage, reply.parameter_version) == current
    # The trainer refreshes its totals every log interval; one that died never does again.
    trainer = learner.trainer._thread  # the trainer's thread: no public way to see it is alive
    wait_for(
        lambda: (
            not trainer.is_alive()
            or learner.trainer.snapshot.environment_steps == learner.registry.environment_steps()
        ),
        30.0,
        "the trainer to refresh its totals",
    )
    assert trainer.is_alive(), "the trainer stopped"
    health = under_test.method("Check", health_pb2.HealthCheckRequest, service=HEALTH_SERVICE)
    for service in ("", LEARNER_SERVICE):
        answer = health.call(serialized(health_pb2.HealthCheckRequest(service=service)))
        assert answer.code == OK
        assert answer.body is not None
        assert (
            health_pb2.HealthCheckResponse.FromString(answer.body).status
            == health_pb2.HealthCheckResponse.SERVING
        )


ROLES = st.one_of(
    st.just(learner_pb2.CLIENT_ROLE_UNSPECIFIED),
    ENUM_OUT_OF_RANGE,
    st.integers(4, 9),
    INT32,
    st.sampled_from(
        [learner_pb2.CLIENT_ROLE_ACTOR, learner_pb2.CLIENT_ROLE_EVALUATOR, learner_pb2.CLIENT_ROLE_OBSERVER]
    ),
)


def test_refused_registrations_register_nobody(learner: LearnerUnderTest) -> None:
    method = learner.method("RegisterActor", learner_pb2.RegisterActorRequest)
    registry = learner.learner.registry
    current = learner.current
    accepted = 0

    @STRUCTURED_SHARE
    @example(role=learner_pb2.CLIENT_ROLE_ACTOR, name="n" * 200_000, extra=b"")
    @given(
        role=ROLES,
        name=st.one_of(NAMES, st.text(min_size=500, max_size=5000)),
        extra=st.one_of(st.just(b""), UNKNOWN_FIELDS),
    )
    def run(role: int, name: str, extra: bytes) -> None:
        nonlocal accepted
        next_id = registry.next_actor_id
        request = learner_pb2.RegisterActorRequest(role=role, client_name=name)  # type: ignore[arg-type]
        reply = method.call(serialized(request) + extra)
        if role in (1, 2, 3):
            assert reply.code == OK, reply.details
            accepted += 1
            assert reply.body is not None
            response = learner_pb2.RegisterActorResponse.FromString(reply.body)
            assert response.actor_id == next_id
            assert (response.parameter_lineage, response.parameter_version) == current
        else:
            assert reply.code == Code.INVALID_ARGUMENT, f"role {role}: {reply.code.name}"
            assert registry.next_actor_id == next_id, "a refused registration took an id"

    @RAW_SHARE
    @given(payload=GARBAGE)
    def run_raw(payload: bytes) -> None:
        nonlocal accepted
        next_id = registry.next_actor_id
        reply = method.call(payload)
        accepted += reply.code == OK
        if reply.code != OK:
            assert registry.next_actor_id == next_id, "a refused registration took an id"

    first_id = registry.next_actor_id
    run()
    run_raw()
    assert_sent(method, EXAMPLES)
    assert registry.next_actor_id == first_id + accepted
    assert_learner_serves(learner, current)


@st.composite
def parameter_pulls(draw: st.DrawFn, learner: LearnerUnderTest) -> learner_pb2.GetParametersRequest:
    lineage, version = learner.current
    return learner_pb2.GetParametersRequest(
        known_version=draw(
            st.one_of(UINT64, st.sampled_from([0, version - 1, version, version + 1, 2**64 - 1]))
        ),
        actor_id=draw(st.one_of(st.sampled_from([0, *learner.known_actors]), UINT64, st.integers(1, 10_000))),
        progress=learner_pb2.ActorProgress(
            environment_steps=draw(st.one_of(UINT64, st.integers(0, 1000))),
            episodes=draw(st.one_of(UINT64, st.integers(0, 1000))),
            last_episode_return=draw(ANY_FLOAT),
        ),
        parameter_set=draw(st.one_of(st.integers(0, 2), ENUM_OUT_OF_RANGE)),  # type: ignore[arg-type]
        known_lineage=draw(st.one_of(NAMES, st.just(lineage), st.just(lineage.upper()), st.just(""))),
    )


def check_parameters(
    reply: bytes, request: learner_pb2.GetParametersRequest, current: tuple[str, int]
) -> None:
    response = learner_pb2.GetParametersResponse.FromString(reply)
    assert (response.lineage, response.version) == current
    up_to_date = (request.known_lineage, request.known_version) == current
    assert response.up_to_date == up_to_date
    assert bool(response.parameters.tensors) != up_to_date


def test_hostile_parameter_pulls_leave_the_parameters_and_the_registry(learner: LearnerUnderTest) -> None:
    method = learner.method("GetParameters", learner_pb2.GetParametersRequest)
    registry = learner.learner.registry
    current = learner.current
    registered = learner.registered()
    next_id = registry.next_actor_id

    @STRUCTURED_SHARE
    # A heartbeat of 2**64 - 1 steps: the trainer's run log refused the total and the trainer died.
    @example(
        request=learner_pb2.GetParametersRequest(
            actor_id=learner.known_actors[0],
            progress=learner_pb2.ActorProgress(environment_steps=2**64 - 1, episodes=2**64 - 1),
        )
    )
    @given(request=parameter_pulls(learner))
    def run(request: learner_pb2.GetParametersRequest) -> None:
        reply = method.call(serialized(request))
        if request.actor_id and request.actor_id not in registered:
            assert reply.code == Code.NOT_FOUND, f"actor {request.actor_id}: {reply.code.name}"
        else:
            assert reply.code == OK, reply.details
            assert reply.body is not None
            check_parameters(reply.body, request, current)
        assert learner.current == current

    @RAW_SHARE
    @given(payload=GARBAGE)
    def run_raw(payload: bytes) -> None:
        method.call(payload)
        assert learner.current == current

    run()
    run_raw()
    assert_sent(method, EXAMPLES)
    assert learner.registered() == registered
    assert registry.next_actor_id == next_id
    assert_learner_serves(learner, current)


def test_hostile_watches_leave_the_parameters_and_the_registry(learner: LearnerUnderTest) -> None:
    method = learner.method("WatchParameters", learner_pb2.WatchParametersRequest, stream=True)
    registry = learner.learner.registry
    current = learner.current
    registered = learner.registered()
    next_id = registry.next_actor_id

    @STRUCTURED_SHARE
    @given(pull=parameter_pulls(learner))
    def run(pull: learner_pb2.GetParametersRequest) -> None:
        if (pull.known_lineage, pull.known_version) == current:
            pull.known_version = current[1] + 1  # a watch of the current version waits: none comes here
        request = learner_pb2.WatchParametersRequest(
            known_version=pull.known_version,
            actor_id=pull.actor_id,
            parameter_set=pull.parameter_set,
            known_lineage=pull.known_lineage,
        )
        reply = method.call(serialized(request))
        if reply.code == OK:
            assert reply.body is not None
            pushed = learner_pb2.WatchParametersResponse.FromString(reply.body)
            assert (pushed.lineage, pushed.version) == current
            assert pushed.parameters.tensors
        assert learner.current == current

    @RAW_SHARE
    @given(payload=GARBAGE)
    def run_raw(payload: bytes) -> None:
        method.call(payload)  # never of the current (lineage, version): random bytes hold no uuid
        assert learner.current == current

    run()
    run_raw()
    assert_sent(method, EXAMPLES)
    assert learner.registered() == registered
    assert registry.next_actor_id == next_id
    assert_learner_serves(learner, current)


def test_get_status_answers_whatever_comes(learner: LearnerUnderTest) -> None:
    method = learner.method("GetStatus", learner_pb2.GetStatusRequest)
    current = learner.current

    @FUZZ
    @given(payload=st.one_of(UNKNOWN_FIELDS, GARBAGE))
    def run(payload: bytes) -> None:
        reply = method.call(payload)
        if reply.code == OK:
            assert reply.body is not None
            status = learner_pb2.GetStatusResponse.FromString(reply.body)
            assert (status.parameter_lineage, status.parameter_version) == current

    run()
    assert_sent(method, EXAMPLES)
    assert_learner_serves(learner, current)


RETURNS: st.SearchStrategy[list[float]] = st.one_of(
    st.lists(ANY_FLOAT, max_size=6),
    st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=6),
    st.lists(st.sampled_from([1e308, -1e308, 1.7e308, 5e307]), min_size=1, max_size=4),
    st.just([]),
)


def refused_evaluation(request: learner_pb2.ReportEvaluationRequest, current: tuple[str, int]) -> bool:
    """Whether the learner must refuse the report (no, non-finite or overflowing returns, a
    version it did not publish or of another lineage)."""
    lineage, version = current
    returns = np.asarray(request.episode_returns, dtype=np.float64)
    if not len(returns) or not np.isfinite(returns).all():
        return True
    with np.errstate(over="ignore", invalid="ignore"):
        if not (np.isfinite(returns.mean()) and np.isfinite(returns.std())):
            return True
    return request.parameter_lineage not in ("", lineage) or not 0 < request.parameter_version <= version


def test_refused_evaluations_record_nothing(learner: LearnerUnderTest) -> None:
    method = learner.method("ReportEvaluation", learner_pb2.ReportEvaluationRequest)
    current = learner.current
    ours, published = current

    @STRUCTURED_SHARE
    # Finite returns whose mean overflows: recorded as a best of inf (which finished the run).
    @example(returns=[1e308, 1e308], version=published, lineage="")
    @example(returns=[-1e308, 1e308, 1.0], version=published, lineage=ours)
    @given(
        returns=RETURNS,
        version=st.one_of(UINT64, st.sampled_from([0, published, published + 1, 2**63, 2**64 - 1])),
        lineage=st.one_of(NAMES, st.sampled_from(["", ours, ours[:-1], ours + " "])),
    )
    def run(returns: list[float], version: int, lineage: str) -> None:
        request = learner_pb2.ReportEvaluationRequest(
            parameter_version=version, episode_returns=returns, parameter_lineage=lineage
        )
        before = learner.evaluations()
        reply = method.call(serialized(request))
        if refused_evaluation(request, current):
            assert reply.code != OK, (
                f"an evaluation of {returns} (version {version}, {lineage!r}) was recorded"
            )
            assert learner.evaluations() == before, "a refused evaluation changed the evaluations"
        else:
            assert reply.code == OK, reply.details
            latest = learner.learner.progress.latest
            assert latest is not None
            assert latest.parameter_version == version

    @RAW_SHARE
    @given(payload=GARBAGE)
    def run_raw(payload: bytes) -> None:
        before = learner.evaluations()
        if method.call(payload).code != OK:
            assert learner.evaluations() == before

    run()
    run_raw()
    assert_sent(method, EXAMPLES)
    assert_learner_serves(learner, current)


def test_health_checks_of_hostile_service_names_on_the_learner(learner: LearnerUnderTest) -> None:
    current = learner.current
    check_health_names(
        learner.method("Check", health_pb2.HealthCheckRequest, service=HEALTH_SERVICE), {"", LEARNER_SERVICE}
    )
    assert_learner_serves(learner, current)


def test_every_rpc_of_both_services_is_fuzzed() -> None:
    """A new RPC in a proto needs its row in ALLOWED and a test here."""
    rpcs = {
        method.name
        for proto in (replay_pb2, learner_pb2)
        for service in proto.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }
    assert rpcs | {"Check"} == set(ALLOWED)
