"""Client channels: explicit message limits, a default deadline, retries on UNAVAILABLE, the process's
token and TLS (services/common/security.py), keepalive."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import grpc

from services.common.security import SecuritySettings, current, token_metadata
from services.common.serving import CLIENT_KEEPALIVE_S, DEFAULT_MAX_MESSAGE_BYTES, message_size_options

# gRPC retries transparently, with exponential backoff, any call that fails with
# UNAVAILABLE (a server restarting, a connection refused). Every call still
# carries a deadline, so a retrying call never outlives it.
_RETRY_SERVICE_CONFIG = {
    "methodConfig": [
        {
            "name": [{}],
            "retryPolicy": {
                "maxAttempts": 5,
                "initialBackoff": "0.05s",
                "maxBackoff": "1s",
                "backoffMultiplier": 2.0,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ]
}

DEFAULT_TIMEOUT_S = 30.0


class _ClientCallDetails(grpc.ClientCallDetails):
    def __init__(self, details: grpc.ClientCallDetails, timeout: float | None, metadata: Any) -> None:
        self.method = details.method
        self.timeout = timeout
        self.metadata = metadata
        self.credentials = details.credentials
        self.wait_for_ready = getattr(details, "wait_for_ready", None)
        self.compression = getattr(details, "compression", None)


class _DefaultDeadline(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Gives every call that names no timeout a default one, so no call can hang forever, and
    adds the token to its metadata."""

    def __init__(self, timeout_s: float, metadata: tuple[tuple[str, str], ...]) -> None:
        self._timeout_s = timeout_s
        self._metadata = metadata

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        if details.timeout is not None and not self._metadata:
            return details
        timeout = self._timeout_s if details.timeout is None else details.timeout
        metadata = (*(details.metadata or ()), *self._metadata)
        return _ClientCallDetails(details, timeout, metadata or None)

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Callable[..., Any], details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation: Callable[..., Any], details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)


def create_channel(
    target: str,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    default_timeout_s: float = DEFAULT_TIMEOUT_S,
    security: SecuritySettings | None = None,
) -> grpc.Channel:
    """A channel to ``target`` (host:port) with retries, a default deadline and limits.

    ``security``: the process's (:func:`services.common.security.current`) unless given;
    with TLS the channel is secure, with a token every call carries it.
    """
    security = security if security is not None else current()
    options: list[tuple[str, int | str]] = [
        *message_size_options(max_message_bytes),
        ("grpc.enable_retries", 1),
        ("grpc.service_config", json.dumps(_RETRY_SERVICE_CONFIG)),
        # Large batches must fit the retry buffer or they are not retried.
        ("grpc.per_rpc_retry_buffer_size", max_message_bytes),
        ("grpc.retry_buffer_size", 4 * max_message_bytes),
        # Reconnect quickly after a peer restarts.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
        # Pings a connection idle this long, so a dead peer is found (servers allow it).
        ("grpc.keepalive_time_ms", round(CLIENT_KEEPALIVE_S * 1000)),
        ("grpc.keepalive_timeout_ms", 20_000),
        # A server that moved (a pod rescheduled, a container replaced) is looked up again at
        # most this soon after its connection fails; gRPC waits 30 s by default.
        ("grpc.dns_min_time_between_resolutions_ms", 1000),
    ]
    credentials = security.channel_credentials()
    channel = (
        grpc.insecure_channel(target, options=options)
        if credentials is None
        else grpc.secure_channel(target, credentials, options=options)
    )
    return grpc.intercept_channel(channel, _DefaultDeadline(default_timeout_s, token_metadata(security)))
