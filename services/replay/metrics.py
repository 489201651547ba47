"""Prometheus metrics of a replay shard, registered in the shard's own registry."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from services.replay.table import PrioritizedTable

_LATENCY_BUCKETS_S = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    10.0,
)


class _TableCollector(Collector):
    """Reads the table's counters once per scrape, so they never drift from the table itself."""

    def __init__(self, table: PrioritizedTable) -> None:
        self._table = table

    def collect(self) -> Iterator[Metric]:
        info = self._table.info()
        gauges = {
            "apexrl_replay_size": ("Items held by the shard.", info.size),
            "apexrl_replay_capacity": ("Most items the shard holds.", info.capacity),
            "apexrl_replay_total_priority": (
                "Sum of priority^alpha over held items.",
                info.total_priority_mass,
            ),
            "apexrl_replay_incarnation": (
                "This start's first key: the wall clock at the start, ns since the Unix epoch.",
                info.incarnation,
            ),
        }
        for name, (documentation, value) in gauges.items():
            yield GaugeMetricFamily(name, documentation, value=value)
        counters = {
            "apexrl_replay_inserts": ("Items inserted (survives restarts).", info.inserts),
            "apexrl_replay_samples": ("Items sampled (survives restarts).", info.samples),
            "apexrl_replay_priority_updates": (
                "Priorities updated (survives restarts).",
                info.priority_updates,
            ),
            "apexrl_replay_rate_limiter_waits": (
                "Calls the rate limiter held back.",
                info.rate_limiter_waits,
            ),
        }
        for name, (documentation, value) in counters.items():
            yield CounterMetricFamily(name, documentation, value=value)


class ReplayMetrics:
    """Request latency and errors by method, plus the table's own figures."""

    def __init__(self, table: PrioritizedTable) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_TableCollector(table))
        self.request_seconds = Histogram(
            "apexrl_replay_request_seconds",
            "Time to serve a replay RPC.",
            ["method"],
            buckets=_LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.request_errors = Counter(
            "apexrl_replay_request_errors",
            "Replay RPCs that ended with an error status.",
            ["method", "code"],
            registry=self.registry,
        )
