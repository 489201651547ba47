"""Client channels with explicit message limits and retries on UNAVAILABLE declared in service config."""

from __future__ import annotations

import json

import grpc

from services.common.serving import DEFAULT_MAX_MESSAGE_BYTES, message_size_options

# gRPC retries transparently, with exponential backoff, any call that fails with
# UNAVAILABLE (a server restarting, a connection refused). Every call still
# carries its own deadline, so a retrying call never outlives it.
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


def create_channel(target: str, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> grpc.Channel:
    """An insecure channel to ``target`` (host:port) with retries and the shared message limits."""
    options: list[tuple[str, int | str]] = [
        *message_size_options(max_message_bytes),
        ("grpc.enable_retries", 1),
        ("grpc.service_config", json.dumps(_RETRY_SERVICE_CONFIG)),
        # Large batches must fit the retry buffer or they are not retried.
        ("grpc.per_rpc_retry_buffer_size", max_message_bytes),
        ("grpc.retry_buffer_size", 4 * max_message_bytes),
        # Reconnect quickly after a peer restarts.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 2000),
    ]
    return grpc.insecure_channel(target, options=options)
