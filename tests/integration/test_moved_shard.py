"""A shard that comes back on another address under the same name is found again (a pod moved).

A real DNS server (dnslib) answers for the shard's name, and clients dial it through
gRPC's own resolver (``dns://SERVER/NAME:PORT``), as they dial a Service name on
Kubernetes. The shard stops, its name is pointed at another address, and a new shard
restored from its snapshot serves there: the same client, unchanged, finds it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from dnslib import QTYPE, RR, A, DNSRecord  # type: ignore[import-untyped]
from dnslib.server import BaseResolver, DNSServer  # type: ignore[import-untyped]

from services.common.sharded_replay import ShardedReplayClient
from services.launcher.ports import pick_free_ports
from tests.integration.conftest import ShardFactory, transitions
from tests.integration.test_sharded_sampling import wait_until

NAME = "replay-0.replay.apexrl.test."


class MovableName(BaseResolver):  # type: ignore[misc]
    """Answers A queries for NAME with the address it is given now; a short TTL, no caching."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.queries = 0
        self._lock = threading.Lock()

    def resolve(self, request: DNSRecord, handler: Any) -> DNSRecord:
        reply = request.reply()
        question = request.q
        with self._lock:
            self.queries += 1
            if str(question.qname) == NAME and question.qtype == QTYPE.A:
                reply.add_answer(RR(question.qname, QTYPE.A, rdata=A(self.address), ttl=1))
        return reply


@pytest.fixture
def dns() -> Iterator[tuple[MovableName, int]]:
    resolver = MovableName("127.0.0.1")
    server = DNSServer(resolver, port=0, address="127.0.0.1")
    server.start_thread()
    try:
        yield resolver, server.server.server_address[1]
    finally:
        server.stop()


def test_a_shard_moved_to_another_address_is_found_again_under_its_name(
    dns: tuple[MovableName, int], start_shard: ShardFactory, tmp_path: Path
) -> None:
    resolver, dns_port = dns
    (port,) = pick_free_ports(1)
    snapshot = tmp_path / "replay-0.snapshot"
    first = start_shard(capacity=1000, host="127.0.0.1", port=port, snapshot_path=snapshot)
    target = f"dns://127.0.0.1:{dns_port}/{NAME.rstrip('.')}:{port}"
    # The learner samples and the actors insert through this client.
    client = ShardedReplayClient([target], seed=4, timeout_s=2.0, max_backoff_s=0.5)
    client.insert(transitions(0, 50), np.ones(50))
    assert first.table.info().size == 50
    assert resolver.queries >= 1

    first.stop()  # drains and writes its snapshot, as a pod does on SIGTERM
    resolver.address = "127.0.0.2"  # the same name, another address (all of 127/8 is loopback)
    moved = start_shard(capacity=1000, host="127.0.0.2", port=port, snapshot_path=snapshot)
    assert moved.table.info().size == 50  # restored from the snapshot

    def inserted_at_the_new_address() -> bool:
        try:
            client.insert(transitions(50, 10), np.ones(10))
        except Exception:  # the shard is marked down until its backoff ends
            return False
        return moved.table.info().size > 50

    # Within 20 s: clients look a name up again 1 s after a failure (gRPC's own default, 30 s,
    # fails this test).
    wait_until(inserted_at_the_new_address, timeout_s=20)
    sample = client.sample(64, importance_exponent=0.4)
    assert sample.total_size == moved.table.info().size
    client.close()
