"""The actor side of apexrl.learner.v1: registration and parameter pulls, retried with backoff."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import grpc
import torch

from apexrl.learner.v1 import learner_pb2, learner_pb2_grpc
from services.common import parameter_codec
from services.common.channels import create_channel
from services.common.security import SecuritySettings, current

logger = logging.getLogger(__name__)


class NotRegisteredError(Exception):
    """The learner does not know this actor (it restarted, or the registration expired)."""


@dataclass(frozen=True)
class Parameters:
    version: int
    state_dict: dict[str, torch.Tensor]
    # The learner incarnation that numbered ``version`` (numbers repeat after a crash).
    lineage: str = ""


def parameters_request(
    known_version: int,
    actor_id: int,
    progress: learner_pb2.ActorProgress | None = None,
    parameter_set: learner_pb2.ParameterSet.ValueType = learner_pb2.PARAMETER_SET_ACTOR,
    known_lineage: str = "",
) -> learner_pb2.GetParametersRequest:
    """The GetParameters request of :meth:`LearnerClient.get_parameters`."""
    return learner_pb2.GetParametersRequest(
        known_version=known_version,
        known_lineage=known_lineage,
        actor_id=actor_id,
        progress=progress,
        parameter_set=parameter_set,
    )


def parameters_from(reply: learner_pb2.GetParametersResponse) -> Parameters | None:
    """The parameters a GetParameters reply carries; None when the version held is current."""
    if reply.up_to_date:
        return None
    return Parameters(reply.version, parameter_codec.from_wire(reply.parameters), reply.lineage)


def not_registered_or(error: grpc.RpcError) -> Exception:
    """A GetParameters failure as the caller sees it: NotRegisteredError for NOT_FOUND, else ``error``."""
    if error.code() == grpc.StatusCode.NOT_FOUND:
        return NotRegisteredError(error.details())
    return error


class LearnerClient:
    """Calls the learner; :meth:`register` keeps retrying until it succeeds or ``stop`` is set."""

    def __init__(
        self,
        address: str,
        timeout_s: float = 10.0,
        max_backoff_s: float = 5.0,
        security: SecuritySettings | None = None,
    ) -> None:
        """``security``: the process's (services/common/security.py) unless given."""
        self.address = address
        self.security = security if security is not None else current()
        self._channel = create_channel(address, default_timeout_s=timeout_s, security=security)
        self._stub = learner_pb2_grpc.LearnerServiceStub(self._channel)
        self.timeout_s = timeout_s
        self._max_backoff_s = max_backoff_s

    def register(
        self, role: learner_pb2.ClientRole.ValueType, client_name: str, stop: threading.Event
    ) -> learner_pb2.RegisterActorResponse | None:
        """Registers, retrying with exponential backoff while the learner is unreachable; None if stopped."""
        backoff_s = 0.2
        while not stop.is_set():
            try:
                request = learner_pb2.RegisterActorRequest(role=role, client_name=client_name)
                # Waits for the learner to come up (within the deadline) instead of failing at once.
                return self._stub.RegisterActor(request, timeout=self.timeout_s, wait_for_ready=True)
            except grpc.RpcError as error:
                logger.warning(
                    "registration failed learner=%s code=%s retry_in_s=%.1f",
                    self.address,
                    error.code().name,
                    backoff_s,
                )
                stop.wait(backoff_s)
                backoff_s = min(self._max_backoff_s, backoff_s * 2)
        return None

    def get_parameters(
        self,
        known_version: int,
        actor_id: int,
        progress: learner_pb2.ActorProgress | None = None,
        parameter_set: learner_pb2.ParameterSet.ValueType = learner_pb2.PARAMETER_SET_ACTOR,
        known_lineage: str = "",
    ) -> Parameters | None:
        """Newer parameters of the set named (the actors'), or None when the version held is current.

        The version held is ``known_version`` of ``known_lineage``; another lineage's
        version (a learner restarted since) is never current, whatever its number.

        Raises NotRegisteredError when the learner no longer knows ``actor_id``,
        and grpc.RpcError when it cannot be reached (the caller keeps acting).
        """
        request = parameters_request(known_version, actor_id, progress, parameter_set, known_lineage)
        try:
            reply = self._stub.GetParameters(request, timeout=self.timeout_s)
        except grpc.RpcError as error:
            raise not_registered_or(error) from error
        return parameters_from(reply)

    def report_evaluation(
        self, version: int, returns: list[float], lineage: str = ""
    ) -> learner_pb2.ReportEvaluationResponse:
        request = learner_pb2.ReportEvaluationRequest(
            parameter_version=version, episode_returns=returns, parameter_lineage=lineage
        )
        return self._stub.ReportEvaluation(request, timeout=self.timeout_s)

    def status(self) -> learner_pb2.GetStatusResponse:
        return self._stub.GetStatus(learner_pb2.GetStatusRequest(), timeout=self.timeout_s)

    def close(self) -> None:
        self._channel.close()
