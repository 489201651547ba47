"""Client side of the standard gRPC health check, for tests, supervisors and container HEALTHCHECKs."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.channels import create_channel
from services.common.security import SecuritySettings


def health_status(
    target: str, service: str = "", timeout_s: float = 2.0, security: SecuritySettings | None = None
) -> str:
    """The status (SERVING, NOT_SERVING, ...) of ``service`` at ``target``, or the RPC error code.

    ``security``: the process's unless given (with TLS the check is made over TLS; the
    health service needs no token).
    """
    channel = create_channel(target, security=security)
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        # The typeshed stub for HealthStub declares no methods; the generated class has them.
        check = stub.Check  # type: ignore[attr-defined]
        reply: health_pb2.HealthCheckResponse = check(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
        )
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    except grpc.RpcError as error:
        return str(error.code().name)
    finally:
        channel.close()


def is_serving(target: str, service: str = "", timeout_s: float = 2.0) -> bool:
    return health_status(target, service, timeout_s) == "SERVING"
