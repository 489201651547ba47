"""Prometheus metrics of the learner, in the learner's own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class LearnerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.updates = Counter("apexrl_learner_updates", "Gradient updates applied.", registry=registry)
        self.updates_per_second = Gauge(
            "apexrl_learner_updates_per_second", "Updates per second, recent.", registry=registry
        )
        self.loss = Gauge("apexrl_learner_loss", "Loss of the latest update.", registry=registry)
        self.diagnostics = Gauge(
            "apexrl_learner_diagnostic",
            "The algorithm's other training signals of the latest update, by name: policy_loss "
            "(TD3, SAC), temperature, temperature_loss and entropy (SAC).",
            ["name"],
            registry=registry,
        )
        self.importance_exponent = Gauge(
            "apexrl_learner_importance_exponent", "beta of the importance weights.", registry=registry
        )
        self.sample_seconds = Histogram(
            "apexrl_learner_sample_seconds",
            "Time to sample one batch from the shards.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=registry,
        )
        self.batch_wait_seconds = Histogram(
            "apexrl_learner_batch_wait_seconds",
            "Time the optimizer waited for a prefetched batch.",
            buckets=(0.0001, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5),
            registry=registry,
        )
        self.parameter_version = Gauge(
            "apexrl_learner_parameter_version", "Latest published parameter version.", registry=registry
        )
        self.environment_steps = Gauge(
            "apexrl_learner_environment_steps", "Environment steps reported by actors.", registry=registry
        )
        self.environment_steps_per_second = Gauge(
            "apexrl_learner_environment_steps_per_second",
            "Actor steps per second, recent.",
            registry=registry,
        )
        self.replay_size = Gauge(
            "apexrl_learner_replay_size", "Items over reachable shards.", registry=registry
        )
        self.actors = Gauge(
            "apexrl_learner_actors", "Registered actors with a recent heartbeat.", registry=registry
        )
        self.evaluation_return = Gauge(
            "apexrl_learner_evaluation_return", "Mean return of the latest evaluation.", registry=registry
        )
        self.parameter_lag = Gauge(
            "apexrl_learner_parameter_lag",
            "Versions between the latest and the oldest version an active actor holds.",
            registry=registry,
        )
        self.priority_updates_dropped = Gauge(
            "apexrl_learner_priority_updates_dropped",
            "Priority updates dropped under backlog.",
            registry=registry,
        )
