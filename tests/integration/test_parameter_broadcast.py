"""A thousand parameter watchers on one learner: other RPCs still answer, every watcher hears each version."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc

from apexrl.learner.v1 import learner_pb2, learner_pb2_grpc
from services.common.serving import message_size_options
from services.learner.learner import Learner

WATCHERS = 1000
CHANNELS = 10  # watchers share connections, as clients on a few hosts would
NEW_VERSIONS = 3
DEADLINE_S = 3.0  # the deadline the defect report measured other RPCs against
DELIVERY_BUDGET_S = 120.0  # generous on 2 cores: a failure means a watcher never heard a version


class Watchers:
    """``WATCHERS`` open WatchParameters streams over ``CHANNELS`` aio channels, recording versions heard."""

    def __init__(self, address: str) -> None:
        # Channels of one process share a connection unless told not to; each stands for a
        # client of its own, and a server admits 256 streams per connection.
        options = [*message_size_options(64 << 20), ("grpc.use_local_subchannel_pool", 1)]
        self.channels = [grpc.aio.insecure_channel(address, options=options) for _ in range(CHANNELS)]
        self.heard: list[list[int]] = [[] for _ in range(WATCHERS)]
        self.tasks: list[asyncio.Task[None]] = []

    def open(self) -> None:
        for index in range(WATCHERS):
            stub = learner_pb2_grpc.LearnerServiceStub(self.channels[index % CHANNELS])
            self.tasks.append(asyncio.create_task(self._watch(stub, self.heard[index])))

    @staticmethod
    async def _watch(stub: Any, heard: list[int]) -> None:  # an aio stub (typed as the sync one)
        async for reply in stub.WatchParameters(learner_pb2.WatchParametersRequest()):
            assert reply.parameters.tensors
            heard.append(reply.version)

    def all_heard(self, version: int) -> bool:
        return all(heard and heard[-1] >= version for heard in self.heard)

    async def until_all_heard(self, version: int) -> None:
        deadline = time.monotonic() + DELIVERY_BUDGET_S
        while not self.all_heard(version):
            failed = [task for task in self.tasks if task.done()]
            if failed:
                failed[0].result()  # a stream that ended raises its error here
                raise AssertionError("a watch stream ended")
            missing = sum(1 for heard in self.heard if not heard or heard[-1] < version)
            assert time.monotonic() < deadline, f"{missing} watchers never heard version {version}"
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for channel in self.channels:
            await channel.close()


async def other_clients(address: str, stop: asyncio.Event) -> list[float]:
    """An actor's and an evaluator's calls, again and again, each within ``DEADLINE_S``; their latencies."""
    latencies: list[float] = []
    async with grpc.aio.insecure_channel(address, options=message_size_options(64 << 20)) as channel:
        stub = learner_pb2_grpc.LearnerServiceStub(channel)

        async def timed(call: object) -> object:
            started = time.monotonic()
            reply = await call  # type: ignore[misc]
            latencies.append(time.monotonic() - started)
            return reply

        while not stop.is_set():
            actor = await timed(
                stub.RegisterActor(
                    learner_pb2.RegisterActorRequest(role=learner_pb2.CLIENT_ROLE_ACTOR), timeout=DEADLINE_S
                )
            )
            assert isinstance(actor, learner_pb2.RegisterActorResponse)
            pulled = await timed(
                stub.GetParameters(
                    learner_pb2.GetParametersRequest(actor_id=actor.actor_id), timeout=DEADLINE_S
                )
            )
            assert isinstance(pulled, learner_pb2.GetParametersResponse)
            await timed(
                stub.ReportEvaluation(
                    learner_pb2.ReportEvaluationRequest(
                        parameter_version=pulled.version,
                        parameter_lineage=pulled.lineage,
                        episode_returns=[1.0],
                    ),
                    timeout=DEADLINE_S,
                )
            )
            await timed(stub.GetStatus(learner_pb2.GetStatusRequest(), timeout=DEADLINE_S))
    return latencies


def test_a_thousand_watchers_hear_every_version_while_other_calls_answer_in_time(learner: Learner) -> None:
    async def scenario() -> tuple[list[list[int]], list[float], list[int]]:
        watchers = Watchers(learner.address)
        watchers.open()
        stop = asyncio.Event()
        others = asyncio.create_task(other_clients(learner.address, stop))
        try:
            published = [learner.store.version]
            await watchers.until_all_heard(published[0])
            core = learner.core
            for _ in range(NEW_VERSIONS):
                published.append(
                    await asyncio.to_thread(
                        learner.store.publish, core.actor_parameters(), core.policy_parameters(), core.updates
                    )
                )
                await watchers.until_all_heard(published[-1])
        finally:
            stop.set()
            latencies = await others  # raises if any call failed (a missed deadline included)
            await watchers.close()
        return watchers.heard, latencies, published

    heard, latencies, published = asyncio.run(scenario())
    assert all(versions == published for versions in heard), "a watcher missed or repeated a version"
    assert len(latencies) >= 4  # at least one round of the other clients' calls


def test_one_client_connection_gets_at_most_256_concurrent_streams(learner: Learner) -> None:
    """Streams past the cap are not served: the client holds them back or the server refuses them
    (REFUSED_STREAM, UNAVAILABLE, which channels retry), never a 257th stream at once."""
    cap, opened = 256, 300

    async def scenario() -> tuple[int, set[str]]:
        own_connection = [("grpc.use_local_subchannel_pool", 1)]
        async with grpc.aio.insecure_channel(learner.address, options=own_connection) as channel:
            stub = learner_pb2_grpc.LearnerServiceStub(channel)
            heard = [False] * opened

            async def watch(index: int) -> None:
                call: Any = stub.WatchParameters(learner_pb2.WatchParametersRequest())
                async for _reply in call:
                    heard[index] = True

            tasks = [asyncio.create_task(watch(index)) for index in range(opened)]
            deadline = time.monotonic() + DELIVERY_BUDGET_S
            while sum(heard) < cap:
                assert time.monotonic() < deadline, f"only {sum(heard)} streams were served"
                await asyncio.sleep(0.05)
            await asyncio.sleep(1.0)  # time for a stream past the cap to be served, were it allowed
            served = sum(heard)
            outcomes = set()
            for index, task in enumerate(tasks):
                if not heard[index]:
                    failure = task.exception() if task.done() else None
                    outcomes.add("waiting" if failure is None else str(failure.code().name))  # type: ignore[attr-defined]
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            return served, outcomes

    served, outcomes = asyncio.run(scenario())
    assert served == cap
    assert outcomes <= {"waiting", "UNAVAILABLE"}
