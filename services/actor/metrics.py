"""Prometheus metrics of an actor process and of an evaluator process, each in its own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

# Why an actor's outbox dropped transitions: the values of apexrl_actor_transitions_dropped's label.
DROP_REFUSED = "refused"
DROP_OUTBOX_FULL = "outbox_full"
DROP_REASONS = (DROP_REFUSED, DROP_OUTBOX_FULL)
# What became of an episode meant for the actor's dataset: apexrl_actor_dataset_episodes' label.
DATASET_WRITTEN = "written"
DATASET_DROPPED = "dropped"


class ActorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.steps = Counter("apexrl_actor_steps", "Environment steps taken.", registry=registry)
        self.episodes = Counter("apexrl_actor_episodes", "Episodes finished.", registry=registry)
        self.episode_return = Gauge(
            "apexrl_actor_episode_return", "Return of the last episode.", registry=registry
        )
        self.transitions_sent = Counter(
            "apexrl_actor_transitions_sent", "n-step transitions inserted into the replay.", registry=registry
        )
        self.batches_refused = Counter(
            "apexrl_actor_batches_refused",
            "Batches a replay shard refused for good (dropped, not sent again), "
            "by shard index and status code.",
            ["shard", "code"],
            registry=registry,
        )
        self.transitions_dropped = Counter(
            "apexrl_actor_transitions_dropped",
            "n-step transitions never inserted: refused for good by a shard (refused), or the oldest "
            "beyond the outbox's bound while no shard accepted (outbox_full).",
            ["reason"],
            registry=registry,
        )
        for reason in DROP_REASONS:  # both series exist from the start, at 0
            self.transitions_dropped.labels(reason)
        self.parameter_version = Gauge(
            "apexrl_actor_parameter_version", "Parameter version the actor acts with.", registry=registry
        )
        self.parameter_lag = Gauge(
            "apexrl_actor_parameter_lag", "Versions the actor was behind at its last pull.", registry=registry
        )
        self.dataset_episodes = Counter(
            "apexrl_actor_dataset_episodes",
            "Episodes of the actor's own dataset (with --dataset-dir): written, or dropped while "
            "earlier ones were still being written, or after a write failed or the limit was reached.",
            ["outcome"],
            registry=registry,
        )
        for outcome in (DATASET_WRITTEN, DATASET_DROPPED):
            self.dataset_episodes.labels(outcome)
        self.exploration = Gauge(
            "apexrl_actor_exploration",
            "This actor's exploration setting: epsilon (Ape-X DQN), noise scale (TD3) or temperature (SAC).",
            registry=registry,
        )


class EvaluatorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.evaluations = Counter(
            "apexrl_evaluator_evaluations", "Evaluations reported to the learner.", registry=registry
        )
        self.evaluation_return = Gauge(
            "apexrl_evaluator_return", "Mean return of the latest evaluation.", registry=registry
        )
        self.parameter_version = Gauge(
            "apexrl_evaluator_parameter_version",
            "Parameter version of the latest evaluation.",
            registry=registry,
        )
