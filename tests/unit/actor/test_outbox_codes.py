"""Which statuses of a refused insert the actor's outbox retries, and which drop the batch."""

from __future__ import annotations

import grpc
import pytest

from services.actor import actor
from services.actor.actor import insert_refusal_is_transient

# The shard's state is the cause: the same batch goes through later.
TRANSIENT = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,  # the samples-per-insert limiter (replay.proto)
    grpc.StatusCode.ABORTED,
}
ERRORS: list[grpc.StatusCode] = [code for code in grpc.StatusCode if code is not grpc.StatusCode.OK]


def test_every_error_status_is_either_transient_or_permanent() -> None:
    errors = set(grpc.StatusCode) - {grpc.StatusCode.OK}
    assert errors == actor._TRANSIENT_INSERT_CODES | actor._PERMANENT_INSERT_CODES
    assert not actor._TRANSIENT_INSERT_CODES & actor._PERMANENT_INSERT_CODES


@pytest.mark.parametrize("code", ERRORS)
def test_a_refusal_is_retried_only_when_transient(code: grpc.StatusCode) -> None:
    assert insert_refusal_is_transient(code) == (code in TRANSIENT)


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.INVALID_ARGUMENT,  # a malformed batch (replay.proto)
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
    ],
)
def test_the_batch_is_dropped_for(code: grpc.StatusCode) -> None:
    assert not insert_refusal_is_transient(code)
