"""One replay shard over gRPC: the happy path, health, metrics and every kind of bad input."""

from __future__ import annotations

import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf.message import Message
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from apexrl.common.v1 import tensor_pb2
from apexrl.replay.v1 import replay_pb2, replay_pb2_grpc
from services.common import tensor_codec
from services.common.channels import create_channel
from services.common.encoded import compress, dense
from services.common.health_probe import health_status
from services.replay.shard import SERVICE_NAME, ReplayShard
from tests.integration.conftest import ShardFactory, stub_for, transitions

TIMEOUT_S = 10


def insert_request(first: int, count: int, priorities: Any = None) -> replay_pb2.InsertTransitionsRequest:
    values = np.ones(count) if priorities is None else np.asarray(priorities, dtype=np.float64)
    return replay_pb2.InsertTransitionsRequest(
        batch=tensor_codec.encode_columns(transitions(first, count)),
        priorities=tensor_codec.encode(values),
    )


@pytest.fixture
def shard(start_shard: ShardFactory) -> ReplayShard:
    return start_shard(capacity=100, metrics_port=0, min_size_to_sample=2)


@pytest.fixture
def stub(shard: ReplayShard) -> replay_pb2_grpc.ReplayServiceStub:
    stub = stub_for(shard)
    stub.InsertTransitions(insert_request(0, 10, np.arange(1, 11)), timeout=TIMEOUT_S)
    return stub


def state(stub: replay_pb2_grpc.ReplayServiceStub) -> tuple[int, int, float, int]:
    info = stub.GetInfo(replay_pb2.GetInfoRequest(), timeout=TIMEOUT_S)
    return info.size, info.inserts, info.total_priority_mass, info.priority_updates


def assert_rejected(call: Any, request: Any, code: grpc.StatusCode, message: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=TIMEOUT_S)
    assert caught.value.code() == code
    assert message in (caught.value.details() or "")


def test_inserted_transitions_are_sampled_with_keys_that_update_their_priority(
    stub: replay_pb2_grpc.ReplayServiceStub,
) -> None:
    reply = stub.SampleTransitions(replay_pb2.SampleTransitionsRequest(batch_size=64), timeout=TIMEOUT_S)
    columns = {name: dense(column) for name, column in tensor_codec.decode_columns(reply.batch).items()}
    assert set(columns) == {"observation", "action", "reward", "discount", "next_observation"}
    assert columns["observation"].shape == (64, 4)
    np.testing.assert_array_equal(columns["observation"][:, 0], columns["action"])
    masses = tensor_codec.decode(reply.priority_masses)
    np.testing.assert_allclose(masses, (columns["action"] + 1.0) ** 0.6)
    assert reply.size == 10
    assert reply.total_priority_mass == pytest.approx(np.sum(np.arange(1, 11) ** 0.6))
    keys = tensor_codec.decode(reply.keys)
    update = replay_pb2.UpdatePrioritiesRequest(
        keys=tensor_codec.encode(keys[:1]), priorities=tensor_codec.encode(np.zeros(1))
    )
    assert stub.UpdatePriorities(update, timeout=TIMEOUT_S).updated == 1
    resampled = stub.SampleTransitions(replay_pb2.SampleTransitionsRequest(batch_size=500), timeout=TIMEOUT_S)
    assert columns["action"][0] not in dense(tensor_codec.decode_columns(resampled.batch)["action"])


def test_health_reflection_and_http_endpoints_report_a_serving_shard(
    shard: ReplayShard, stub: replay_pb2_grpc.ReplayServiceStub
) -> None:
    channel = create_channel(shard.address)
    for service in ("", SERVICE_NAME):
        assert health_status(shard.address, service) == "SERVING"
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    # The typeshed stub for the reflection service declares no methods; the generated class has them.
    answers: Iterator[reflection_pb2.ServerReflectionResponse] = reflection.ServerReflectionInfo(  # type: ignore[operator]
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=TIMEOUT_S
    )
    listed = {service.name for answer in answers for service in answer.list_services_response.service}
    assert {SERVICE_NAME, "grpc.health.v1.Health"} <= listed
    base = f"http://127.0.0.1:{shard.metrics_port}"
    metrics = urllib.request.urlopen(base + "/metrics", timeout=TIMEOUT_S).read().decode()
    for line in (
        "apexrl_replay_size 10.0",
        "apexrl_replay_inserts_total 10.0",
        "apexrl_replay_capacity 100.0",
    ):
        assert line in metrics
    assert 'apexrl_replay_request_seconds_count{method="InsertTransitions"} 1.0' in metrics
    assert urllib.request.urlopen(base + "/healthz", timeout=TIMEOUT_S).status == 200
    assert urllib.request.urlopen(base + "/readyz", timeout=TIMEOUT_S).status == 200


def test_a_stopped_shard_reports_not_serving_and_not_ready(start_shard: ShardFactory) -> None:
    shard = start_shard(capacity=10, metrics_port=0)
    shard._server.set_serving(False)  # the first step of stop(): what a draining shard reports
    shard._stopping.set()
    assert health_status(shard.address, SERVICE_NAME) == "NOT_SERVING"
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(f"http://127.0.0.1:{shard.metrics_port}/readyz", timeout=TIMEOUT_S)
    assert caught.value.code == 503


def test_sampling_an_empty_shard_is_failed_precondition(start_shard: ShardFactory) -> None:
    stub = stub_for(start_shard(capacity=10, min_size_to_sample=3))
    request = replay_pb2.SampleTransitionsRequest(batch_size=1)
    assert_rejected(
        stub.SampleTransitions,
        request,
        grpc.StatusCode.FAILED_PRECONDITION,
        "holds 0 items, needs 3",
    )


def _column(name: str, array: np.ndarray) -> replay_pb2.InsertTransitionsRequest:
    request = insert_request(100, 3)
    request.batch.columns[name].CopyFrom(tensor_codec.encode(array))
    return request


BAD_INSERTS = {
    "wrong dtype": (
        _column("action", np.zeros(3, np.int32)),
        "column 'action' is int32[] but the table",
    ),
    "wrong shape": (
        _column("observation", np.zeros((3, 5), np.float32)),
        "column 'observation' is float32[5] but the table signature has float32[4]",
    ),
    "ragged columns": (
        _column("reward", np.zeros(4, np.float32)),
        "ragged batch: columns have different lengths ('action': 3, 'discount': 3, 'next_observation': 3, "
        "'observation': 3, 'reward': 4)",
    ),
    "extra column": (
        _column("bonus", np.zeros(3, np.float32)),
        "column(s) ['bonus'] not in the table signature",
    ),
    "NaN priority": (insert_request(100, 3, [1.0, np.nan, 1.0]), "priority[1] = nan"),
    "infinite priority": (insert_request(100, 3, [1.0, 1.0, np.inf]), "priority[2] = inf"),
    "negative priority": (insert_request(100, 3, [-1.0, 1.0, 1.0]), "priority[0] = -1.0"),
    "priorities of another length": (
        insert_request(100, 3, [1.0, 1.0]),
        "priorities have shape [2], expected [3]",
    ),
    "empty batch": (replay_pb2.InsertTransitionsRequest(), "batch has no columns"),
    "unknown dtype": (
        _column("reward", np.zeros(3, np.float32)),
        "column 'reward': unknown or unspecified dtype 42",
    ),
    "bytes not matching the shape": (
        _column("reward", np.zeros(3, np.float32)),
        "column 'reward': 11 bytes do not match float32[3]",
    ),
}
BAD_INSERTS["unknown dtype"][0].batch.columns["reward"].dtype = 42  # type: ignore[assignment]
BAD_INSERTS["bytes not matching the shape"][0].batch.columns["reward"].data = b"\0" * 11
_missing = insert_request(100, 3)
del _missing.batch.columns["discount"]
BAD_INSERTS["missing column"] = (_missing, "lacks column(s) ['discount']")
_undecodable = insert_request(100, 3)
del _undecodable.batch.columns["observation"]
_items = compress(transitions(100, 3)["observation"])
tensor_codec.encode_encoded_into(_undecodable.batch.encoded_columns["observation"], _items)
_undecodable.batch.encoded_columns["observation"].data = b"\0" * len(_items.data)
BAD_INSERTS["encoded items that do not decompress"] = (
    _undecodable,
    "column 'observation': encoded items (zstd:float32[4]) do not decompress to 16 bytes each",
)
BAD_INSERTS["more items than the table holds"] = (
    insert_request(100, 101),
    "batch of 101 items exceeds the table capacity 100",
)
BAD_INSERTS["more items than an insert may carry"] = (
    insert_request(100, 65_537),
    "insert of 65537 items exceeds the maximum of 65536",
)


@pytest.mark.parametrize("case", sorted(BAD_INSERTS))
def test_a_malformed_insert_is_invalid_argument_and_changes_nothing(
    stub: replay_pb2_grpc.ReplayServiceStub, case: str
) -> None:
    request, message = BAD_INSERTS[case]
    before = state(stub)
    assert_rejected(stub.InsertTransitions, request, grpc.StatusCode.INVALID_ARGUMENT, message)
    assert state(stub) == before


@pytest.mark.parametrize(
    ("batch_size", "message"), [(0, "batch_size must be in 1..16384, got 0"), (16385, "got 16385")]
)
def test_a_sample_batch_size_outside_the_documented_range_is_invalid_argument(
    stub: replay_pb2_grpc.ReplayServiceStub, batch_size: int, message: str
) -> None:
    before = state(stub)
    request = replay_pb2.SampleTransitionsRequest(batch_size=batch_size)
    assert_rejected(stub.SampleTransitions, request, grpc.StatusCode.INVALID_ARGUMENT, message)
    assert state(stub) == before


def test_priority_updates_with_bad_values_or_unknown_keys_are_invalid_argument_and_change_nothing(
    stub: replay_pb2_grpc.ReplayServiceStub,
) -> None:
    reply = stub.SampleTransitions(replay_pb2.SampleTransitionsRequest(batch_size=4), timeout=TIMEOUT_S)
    keys = tensor_codec.decode(reply.keys)
    cases = [
        (keys, np.array([1.0, np.nan, 1.0, 1.0]), "priority[1] = nan"),
        (keys, np.array([1.0, 1.0, -2.0, 1.0]), "priority[2] = -2.0"),
        (keys, np.ones(3), "priorities have shape [3], expected [4]"),
        (np.append(keys[:3], keys.max() + 1000), np.ones(4), "key[3] = "),
        (np.append(keys[:1], keys[1:] + 10**12), np.ones(4), "key[1] = "),  # of a start 1000 s later
        (keys.astype(np.int32), np.ones(4), "keys must be int64"),
    ]
    before = state(stub)
    for bad_keys, priorities, message in cases:
        request = replay_pb2.UpdatePrioritiesRequest(
            keys=tensor_codec.encode(bad_keys), priorities=tensor_codec.encode(priorities)
        )
        assert_rejected(stub.UpdatePriorities, request, grpc.StatusCode.INVALID_ARGUMENT, message)
    assert state(stub) == before


def _sample_request() -> replay_pb2.SampleTransitionsRequest:
    return replay_pb2.SampleTransitionsRequest(batch_size=4)


def _update_request() -> replay_pb2.UpdatePrioritiesRequest:
    return replay_pb2.UpdatePrioritiesRequest(
        keys=tensor_codec.encode(np.zeros(1, np.int64)), priorities=tensor_codec.encode(np.ones(1))
    )


# A bug inside the shard raising ValueError or TypeError: in the table, or while a reply is
# serialized under the table's lock.
# (patched in the table or the servicer's module, attribute, RPC, request, error raised)
INTERNAL_FAILURES: dict[str, tuple[str, str, str, Callable[[], Message], type[Exception]]] = {
    "insert": ("table", "insert", "InsertTransitions", lambda: insert_request(100, 3), ValueError),
    "sample": ("table", "sample_into", "SampleTransitions", _sample_request, TypeError),
    "update": ("table", "update_priorities", "UpdatePriorities", _update_request, ValueError),
    "info": ("table", "info", "GetInfo", replay_pb2.GetInfoRequest, TypeError),
    "serializing a sample": ("module", "serialize_sample", "SampleTransitions", _sample_request, ValueError),
}


@pytest.mark.parametrize("case", sorted(INTERNAL_FAILURES))
def test_an_internal_value_or_type_error_is_internal_and_logged_with_its_traceback(
    shard: ReplayShard,
    stub: replay_pb2_grpc.ReplayServiceStub,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    case: str,
) -> None:
    where, attribute, method, request, error_type = INTERNAL_FAILURES[case]

    def broken(*args: object, **kwargs: object) -> None:
        raise error_type(f"{attribute} is broken")

    if where == "table":
        monkeypatch.setattr(shard.table, attribute, broken)
    else:
        monkeypatch.setattr(f"services.replay.servicer.{attribute}", broken)
    caplog.set_level(logging.ERROR, logger="services.replay.servicer")
    message = f"internal error of the replay shard: {error_type.__name__}: {attribute} is broken"
    assert_rejected(getattr(stub, method), request(), grpc.StatusCode.INTERNAL, message)
    records = [record for record in caplog.records if record.name == "services.replay.servicer"]
    assert [(record.levelno, record.getMessage()) for record in records] == [
        (logging.ERROR, f"rpc failed method={method} code=INTERNAL")
    ]
    assert records[0].exc_info is not None
    assert isinstance(records[0].exc_info[1], error_type)
    assert "Traceback (most recent call last)" in caplog.text
    assert 'in broken\n    raise error_type(f"{attribute} is broken")' in caplog.text
    monkeypatch.undo()  # a scrape reads the table's info
    errors = shard.metrics.registry.get_sample_value(
        "apexrl_replay_request_errors_total", {"method": method, "code": "INTERNAL"}
    )
    assert errors == 1.0
    # The shard goes on serving: nothing was held (the table's lock included).
    assert stub.SampleTransitions(_sample_request(), timeout=TIMEOUT_S).size == 10


def test_a_malformed_request_is_not_logged_as_a_failure_of_the_shard(
    stub: replay_pb2_grpc.ReplayServiceStub, shard: ReplayShard, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="services.replay.servicer")
    request, message = BAD_INSERTS["NaN priority"]
    assert_rejected(stub.InsertTransitions, request, grpc.StatusCode.INVALID_ARGUMENT, message)
    assert [record for record in caplog.records if record.name == "services.replay.servicer"] == []
    errors = shard.metrics.registry.get_sample_value(
        "apexrl_replay_request_errors_total", {"method": "InsertTransitions", "code": "INVALID_ARGUMENT"}
    )
    assert errors == 1.0


def test_stale_keys_are_skipped_and_counted_not_applied(start_shard: ShardFactory) -> None:
    stub = stub_for(start_shard(capacity=4))
    old = tensor_codec.decode(stub.InsertTransitions(insert_request(0, 4), timeout=TIMEOUT_S).keys)
    stub.InsertTransitions(insert_request(4, 4), timeout=TIMEOUT_S)  # evicts all four
    request = replay_pb2.UpdatePrioritiesRequest(
        keys=tensor_codec.encode(old), priorities=tensor_codec.encode(np.full(4, 50.0))
    )
    reply = stub.UpdatePriorities(request, timeout=TIMEOUT_S)
    assert (reply.updated, reply.stale) == (0, 4)
    assert state(stub)[2] == pytest.approx(4.0)


def test_an_oversize_request_is_resource_exhausted_and_the_shard_stays_up(
    start_shard: ShardFactory,
) -> None:
    shard = start_shard(capacity=10, max_message_mib=1)
    stub = stub_for(shard)
    request = replay_pb2.InsertTransitionsRequest(
        batch=tensor_codec.encode_columns({"observation": np.zeros((2, 600_000), np.uint8)}),
        priorities=tensor_codec.encode(np.ones(2)),
    )
    assert_rejected(stub.InsertTransitions, request, grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than max")
    assert state(stub) == (0, 0, 0.0, 0)


def test_a_sample_whose_reply_would_exceed_the_message_limit_is_resource_exhausted(
    start_shard: ShardFactory,
) -> None:
    stub = stub_for(start_shard(capacity=10, max_message_mib=1))
    request = replay_pb2.InsertTransitionsRequest(
        batch=tensor_codec.encode_columns({"observation": np.zeros((2, 100_000), np.uint8)}),
        priorities=tensor_codec.encode(np.ones(2)),
    )
    stub.InsertTransitions(request, timeout=TIMEOUT_S)
    before = state(stub)
    sample = replay_pb2.SampleTransitionsRequest(batch_size=20)
    assert_rejected(stub.SampleTransitions, sample, grpc.StatusCode.RESOURCE_EXHAUSTED, "message limit")
    assert state(stub) == before


def test_a_rate_limited_sample_is_resource_exhausted_after_its_wait(
    start_shard: ShardFactory,
) -> None:
    shard = start_shard(
        capacity=100, min_size_to_sample=2, samples_per_insert=1.0, samples_per_insert_tolerance=2.0
    )
    stub = stub_for(shard)
    stub.InsertTransitions(insert_request(0, 2), timeout=TIMEOUT_S)
    stub.SampleTransitions(replay_pb2.SampleTransitionsRequest(batch_size=2), timeout=TIMEOUT_S)
    request = replay_pb2.SampleTransitionsRequest(batch_size=1, max_wait_s=0.1)
    assert_rejected(stub.SampleTransitions, request, grpc.StatusCode.RESOURCE_EXHAUSTED, "rate limiter")
    info = stub.GetInfo(replay_pb2.GetInfoRequest(), timeout=TIMEOUT_S)
    assert (info.samples, info.rate_limiter_waits) == (2, 1)


def test_snapshot_without_a_path_is_failed_precondition(
    stub: replay_pb2_grpc.ReplayServiceStub,
) -> None:
    request = replay_pb2.SaveSnapshotRequest()
    assert_rejected(
        stub.SaveSnapshot, request, grpc.StatusCode.FAILED_PRECONDITION, "without --snapshot-path"
    )


def test_a_shard_restarted_from_its_snapshot_holds_the_same_items(
    start_shard: ShardFactory, tmp_path: Any
) -> None:
    path = tmp_path / "shard-0.snapshot"
    first = start_shard(capacity=50, snapshot_path=path)
    stub = stub_for(first)
    stub.InsertTransitions(insert_request(0, 30, np.linspace(0.5, 2.0, 30)), timeout=TIMEOUT_S)
    saved = stub.SaveSnapshot(replay_pb2.SaveSnapshotRequest(), timeout=TIMEOUT_S)
    assert (saved.path, saved.size) == (str(path), 30)
    before = state(stub)
    first_incarnation = stub.GetInfo(replay_pb2.GetInfoRequest(), timeout=TIMEOUT_S).incarnation
    first.stop(snapshot=False)
    second = stub_for(start_shard(capacity=50, snapshot_path=path))
    assert state(second) == before
    info = second.GetInfo(replay_pb2.GetInfoRequest(), timeout=TIMEOUT_S)
    assert info.incarnation > first_incarnation
    assert info.signature["observation"] == tensor_pb2.TensorSpec(
        dtype=tensor_pb2.DATA_TYPE_FLOAT32, shape=[4]
    )


def test_a_call_without_a_timeout_gets_the_channel_default_deadline(start_shard: ShardFactory) -> None:
    shard = start_shard(
        capacity=100, min_size_to_sample=2, samples_per_insert=1.0, samples_per_insert_tolerance=2.0
    )
    stub = replay_pb2_grpc.ReplayServiceStub(create_channel(shard.address, default_timeout_s=0.5))
    stub.InsertTransitions(insert_request(0, 2))
    stub.SampleTransitions(replay_pb2.SampleTransitionsRequest(batch_size=2))
    # The caller would wait 30 s; the server caps the wait at the propagated 0.5 s deadline.
    request = replay_pb2.SampleTransitionsRequest(batch_size=1, max_wait_s=30.0)
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as caught:
        stub.SampleTransitions(request)
    assert time.monotonic() - started < 15.0  # a behaviour bound: without the deadline it takes 30 s
    assert caught.value.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED)
    assert stub.GetInfo(replay_pb2.GetInfoRequest()).samples == 2


def _stream_sample(
    shard: ReplayShard, requests: list[int | bytes]
) -> tuple[list[replay_pb2.SampleTransitionsResponse], grpc.RpcError | None]:
    """The samples answering ``requests`` (batch sizes, or bytes as they are) sent on one
    SampleStream, and the error that ended it, if any."""
    payloads = [
        request if isinstance(request, bytes) else _stream_request(request).SerializeToString()
        for request in requests
    ]
    replies: list[bytes] = []
    with create_channel(shard.address) as channel:
        call: grpc.StreamStreamMultiCallable[bytes, bytes] = channel.stream_stream(
            "/apexrl.replay.v1.ReplayService/SampleStream"
        )
        try:
            replies.extend(call(iter(payloads), timeout=TIMEOUT_S))
        except grpc.RpcError as error:
            return _samples(replies), error
    return _samples(replies), None


def _stream_request(batch_size: int) -> replay_pb2.SampleStreamRequest:
    return replay_pb2.SampleStreamRequest(sample=replay_pb2.SampleTransitionsRequest(batch_size=batch_size))


def _samples(replies: list[bytes]) -> list[replay_pb2.SampleTransitionsResponse]:
    return [replay_pb2.SampleStreamResponse.FromString(reply).sample for reply in replies]


def test_a_sample_stream_answers_each_request_in_order_as_its_unary_call_would(
    shard: ReplayShard, stub: replay_pb2_grpc.ReplayServiceStub
) -> None:
    sizes = [1, 5, 64, 3]
    replies, error = _stream_sample(shard, list(sizes))
    assert error is None
    assert [len(tensor_codec.decode(reply.keys)) for reply in replies] == sizes
    inserted = tensor_codec.decode(stub.InsertTransitions(insert_request(10, 1), timeout=TIMEOUT_S).keys)
    for reply in replies:
        columns = {name: dense(column) for name, column in tensor_codec.decode_columns(reply.batch).items()}
        masses = tensor_codec.decode(reply.priority_masses)
        np.testing.assert_allclose(masses, (columns["action"] + 1.0) ** 0.6)
        # Keys are the sequence numbers of the items they name, like the key inserted after them.
        np.testing.assert_array_equal(tensor_codec.decode(reply.keys), inserted[0] - 10 + columns["action"])
        assert reply.size == 10
    assert stub.GetInfo(replay_pb2.GetInfoRequest(), timeout=TIMEOUT_S).samples == sum(sizes)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (0, "batch_size must be in 1..16384, got 0"),
        (b"\xff\xff\xff", "the request is not a valid apexrl.replay.v1.SampleStreamRequest"),
        # A well-framed SampleStreamRequest whose sample does not parse.
        (b"\x0a\x03\xff\xff\xff", "the request is not a valid apexrl.replay.v1.SampleStreamRequest"),
    ],
    ids=["batch size 0", "undecodable bytes", "undecodable sample"],
)
def test_a_bad_request_ends_a_sample_stream_after_the_replies_before_it(
    shard: ReplayShard, stub: replay_pb2_grpc.ReplayServiceStub, bad: int | bytes, message: str
) -> None:
    replies, error = _stream_sample(shard, [4, bad, 4])
    assert len(replies) == 1
    assert error is not None
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (error.details() or "")
    assert stub.GetInfo(replay_pb2.GetInfoRequest(), timeout=TIMEOUT_S).samples == 4


def test_a_sample_stream_on_a_shard_below_its_minimum_is_failed_precondition(
    start_shard: ShardFactory,
) -> None:
    shard = start_shard(capacity=100, min_size_to_sample=5)
    stub_for(shard).InsertTransitions(insert_request(0, 2), timeout=TIMEOUT_S)
    replies, error = _stream_sample(shard, [1])
    assert replies == []
    assert error is not None
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
