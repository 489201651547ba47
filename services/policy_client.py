"""Act with the latest policy of a running apexrl learner, from any Python program.

    from services.policy_client import PolicyClient

    with PolicyClient("127.0.0.1:50050") as policy:
        action = policy.act(observation)           # one observation
        actions = policy.act_batch(observations)   # a batch, one forward pass

The client registers with the learner as an observer (it explores nothing and
inserts nothing), builds the experiment's policy network, and pulls the policy's
parameters; afterwards it pulls again at most every ``refresh_s`` seconds when
asked to act (a pull of the version it holds costs a few bytes). Actions are the
evaluation ones: greedy for Ape-X DQN, noise-free for TD3, the mean for SAC. The
learner's token and TLS settings are the process's (``APEXRL_TOKEN_FILE``,
``APEXRL_TLS_*``) unless given. One client may be shared by threads.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from types import TracebackType
from typing import Any

import grpc
import numpy as np
from numpy.typing import ArrayLike, NDArray

from apexrl.learner.v1 import learner_pb2
from services.actor.actor import build_policy
from services.actor.learner_client import LearnerClient, NotRegisteredError
from services.common.environments import environment_spec
from services.common.security import SecuritySettings

logger = logging.getLogger(__name__)


class PolicyClient:
    """The latest policy of the learner at ``learner`` (host:port), refreshed every ``refresh_s``."""

    def __init__(
        self,
        learner: str,
        *,
        refresh_s: float = 1.0,
        timeout_s: float = 10.0,
        security: SecuritySettings | None = None,
        name: str | None = None,
    ) -> None:
        self._client = LearnerClient(learner, timeout_s=timeout_s, security=security)
        self._name = name or f"policy-client@{socket.gethostname()}:{os.getpid()}"
        self._refresh_s = refresh_s
        self._lock = threading.Lock()
        self._stop = threading.Event()
        registration = self._register()
        self._actor_id = registration.actor_id
        self._policy, environment = build_policy(registration.spec)
        try:
            self.observation_shape = environment_spec(environment).observation_shape
        finally:
            environment.close()
        self.environment_id = registration.spec.environment_id
        self.version = 0
        self.lineage = ""
        self._pulled_at = -float("inf")
        self.refresh()
        if not self.version:
            raise RuntimeError(f"the learner at {learner} has published no parameters yet")

    def _register(self) -> learner_pb2.RegisterActorResponse:
        registration = self._client.register(learner_pb2.CLIENT_ROLE_OBSERVER, self._name, self._stop)
        if registration is None:  # only when closed meanwhile
            raise RuntimeError("the policy client was closed while registering")
        return registration

    def refresh(self) -> bool:
        """Pulls newer parameters now; True if it adopted a new version."""
        with self._lock:
            return self._refresh_locked()

    def _refresh_locked(self) -> bool:
        self._pulled_at = time.monotonic()
        try:
            pulled = self._client.get_parameters(
                self.version,
                self._actor_id,
                parameter_set=learner_pb2.PARAMETER_SET_POLICY,
                known_lineage=self.lineage,
            )
        except NotRegisteredError:  # the learner restarted or forgot a silent client
            self._actor_id = self._register().actor_id
            return self._refresh_locked()
        except grpc.RpcError as error:
            if not self.version:
                raise
            logger.warning(
                "policy refresh failed code=%s; acting with version %d", error.code().name, self.version
            )
            return False
        if pulled is None:
            return False
        self._policy.load_parameters(pulled.state_dict)
        self.version, self.lineage = pulled.version, pulled.lineage
        return True

    def act_batch(self, observations: ArrayLike) -> NDArray[Any]:
        """Actions for a batch of observations shaped ``(batch, *observation_shape)``."""
        batch = np.asarray(observations)
        if batch.shape[1:] != tuple(self.observation_shape):
            raise ValueError(
                f"observations of shape {batch.shape} do not fit {self.environment_id}: expected "
                f"(batch, {', '.join(map(str, self.observation_shape))})"
            )
        with self._lock:
            if time.monotonic() - self._pulled_at >= self._refresh_s:
                self._refresh_locked()
            return self._policy.act_deterministic(batch)

    def act(self, observation: ArrayLike) -> Any:
        """The action for one observation (an int for discrete actions, an array for continuous)."""
        action = self.act_batch(np.asarray(observation)[None])[0]
        return action.item() if np.ndim(action) == 0 else action

    def close(self) -> None:
        self._stop.set()
        self._client.close()

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()
