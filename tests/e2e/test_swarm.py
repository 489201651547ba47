"""deploy/swarm for real: a single-node swarm, the stack deployed with its secrets, scaled, a shard killed.

Run by ``make compose-test`` (it needs Docker and the images of ``make images``). The
test initialises a swarm where the engine has none (and leaves it afterwards), deploys
the stack with mutual TLS and a token from Swarm secrets (stack.yml and secure.yml),
scales the actors to 8 and sees each register with its own exploration setting while
training goes on, kills a shard's container and sees Swarm replace it and the shard
rejoin from its snapshot, then removes the stack, its volumes, secrets and the swarm.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Callable, Iterator

import grpc
import pytest

from apexrl.learner.v1 import learner_pb2, learner_pb2_grpc
from services.common.certificates import generate_secrets
from services.common.channels import create_channel
from services.common.security import SecuritySettings
from tests.e2e.compose_stack import (
    COMPOSE_TEST_MARKS,
    PORT_VARIABLES,
    ROOT,
    actor_records,
    describe,
    docker,
    free_ports,
    wait_until,
)

pytestmark = COMPOSE_TEST_MARKS
STACK = "apexrl-e2e"
STACK_FILES = [ROOT / "deploy" / "swarm" / "stack.yml", ROOT / "deploy" / "swarm" / "secure.yml"]
_SNAPSHOT_SAVED = re.compile(r"snapshot saved path=\S+ items=(\d+)")
_SNAPSHOT_LOADED = re.compile(r"snapshot loaded path=\S+ items=(\d+)")


def swarm_state() -> str:
    return docker("info", "--format", "{{.Swarm.LocalNodeState}}").strip()


def service_logs(service: str) -> str:
    """Every task's output: the services log to stderr, which ``docker service logs`` passes on as its own."""
    result = subprocess.run(
        ["docker", "service", "logs", "--raw", f"{STACK}_{service}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60, check=True,
    )  # fmt: skip
    return result.stdout


def running_tasks(service: str) -> list[dict[str, str]]:
    lines = docker("service", "ps", f"{STACK}_{service}", "--format", "{{json .}}").splitlines()
    return [task for task in map(json.loads, lines) if task["CurrentState"].startswith("Running")]


def stack_volumes() -> list[str]:
    return docker("volume", "ls", "-q", "--filter", f"label=com.docker.stack.namespace={STACK}").split()


def remove_stack() -> None:
    docker("stack", "rm", STACK)
    label = f"label=com.docker.stack.namespace={STACK}"
    wait_until(lambda: not docker("ps", "-aq", "--filter", label).strip(), 120, "the stack to go", poll_s=1.0)
    # The network goes after the containers; a stack deployed again before then cannot create its own.
    wait_until(lambda: not docker("network", "ls", "-q", "--filter", label).strip(), 60, "the network to go")
    for volume in stack_volumes():
        docker("volume", "rm", volume)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[learner_pb2_grpc.LearnerServiceStub]:
    started_swarm = swarm_state() != "active"
    if started_swarm:
        docker("swarm", "init", "--advertise-addr", "127.0.0.1")
    if docker("stack", "ls", "--format", "{{.Name}}").split().count(STACK):
        remove_stack()  # what a test stopped half-way left
    secrets = generate_secrets(tmp_path_factory.mktemp("swarm") / "secrets")
    # The compose stack's port variables; the stack file reads those of its services.
    ports = dict(zip(PORT_VARIABLES, map(str, free_ports(len(PORT_VARIABLES))), strict=True))
    environment = {
        **os.environ,
        **ports,
        "APEXRL_ACTORS": "2",
        "APEXRL_REPLAY_SNAPSHOT_INTERVAL_S": "5",
        "APEXRL_SECRETS_DIR": str(secrets.directory),
    }
    files = [argument for path in STACK_FILES for argument in ("-c", str(path))]
    result = subprocess.run(
        ["docker", "stack", "deploy", *files, STACK],
        cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    address = f"127.0.0.1:{ports['APEXRL_LEARNER_PORT']}"
    channel = create_channel(address, default_timeout_s=5.0, security=secrets.settings)
    try:
        learner = learner_pb2_grpc.LearnerServiceStub(channel)
        wait_until(lambda: status(learner), 300, "the learner serving over TLS")
        # Without the CA, certificate and token, a client gets nowhere.
        with create_channel(address, default_timeout_s=5.0, security=SecuritySettings()) as plaintext:
            with pytest.raises(grpc.RpcError) as refused:
                learner_pb2_grpc.LearnerServiceStub(plaintext).GetStatus(learner_pb2.GetStatusRequest())
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        yield learner
    finally:
        channel.close()
        remove_stack()
        assert not stack_volumes()
        assert not docker(
            "secret", "ls", "-q", "--filter", f"label=com.docker.stack.namespace={STACK}"
        ).strip()
        if started_swarm:
            docker("swarm", "leave", "--force")
            assert swarm_state() == "inactive"


def status(learner: learner_pb2_grpc.LearnerServiceStub) -> learner_pb2.GetStatusResponse:
    reply: learner_pb2.GetStatusResponse = learner.GetStatus(learner_pb2.GetStatusRequest(), timeout=5)
    return reply


def status_when(
    learner: learner_pb2_grpc.LearnerServiceStub,
    holds: Callable[[learner_pb2.GetStatusResponse], bool],
    timeout_s: float,
    what: str,
) -> learner_pb2.GetStatusResponse:
    """The learner's first status for which ``holds`` is true, polled until ``timeout_s``."""

    def check() -> learner_pb2.GetStatusResponse | None:
        reply = status(learner)
        return reply if holds(reply) else None

    return wait_until(check, timeout_s, what)


def test_the_stack_trains_and_eight_actors_register_with_their_own_exploration(
    stack: learner_pb2_grpc.LearnerServiceStub,
) -> None:
    first = status_when(stack, lambda reply: reply.updates > 0, 300, "the first updates")
    docker("service", "scale", "--detach", f"{STACK}_actor=8")
    eight = status_when(stack, lambda reply: len(actor_records(reply)) == 8, 300, "8 actors registered")
    actors = actor_records(eight)
    assert sorted(actor.exploration.rung for actor in actors) == list(range(8))
    assert len({actor.exploration.epsilon for actor in actors}) == 8
    later = status_when(
        stack, lambda reply: reply.updates > eight.updates + 100, 300, "training with 8 actors"
    )
    assert later.environment_steps > first.environment_steps
    print(f"[swarm e2e] {describe(later)}")


def test_a_killed_shard_is_replaced_by_swarm_and_rejoins_from_its_snapshot(
    stack: learner_pb2_grpc.LearnerServiceStub,
) -> None:
    def saved_items() -> int:
        found = _SNAPSHOT_SAVED.findall(service_logs("replay-1"))
        return int(found[-1]) if found and int(found[-1]) > 0 else 0

    wait_until(saved_items, 120, "a snapshot of replay-1 holding items")
    (task,) = running_tasks("replay-1")
    container = docker("ps", "-q", "--filter", f"name={STACK}_replay-1.").split()[0]
    docker("kill", container)  # SIGKILL: no final snapshot, the periodic one is what is left
    snapshot_items = saved_items()

    def replaced() -> bool:
        tasks = running_tasks("replay-1")
        return len(tasks) == 1 and tasks[0]["ID"] != task["ID"]

    wait_until(replaced, 180, "Swarm to replace the killed shard", poll_s=1.0)
    loaded = wait_until(
        lambda: _SNAPSHOT_LOADED.findall(service_logs("replay-1")), 120, "the snapshot restored"
    )
    assert int(loaded[-1]) >= snapshot_items > 0
    wait_until(lambda: status(stack).replay_shards_up == 2, 120, "the learner to sample the shard again")
    before = status(stack).updates
    wait_until(
        lambda: status(stack).updates > before + 50, 180, "training going on after the shard came back"
    )
    print(f"[swarm e2e] replay-1 rejoined with {loaded[-1]} items (its last snapshot held {snapshot_items})")
