"""docker-compose.yml end to end: 8 actors train, are watched, rescale, outlive a shard restart, stop cleanly.

The images come from ``make images`` (built offline where no registry is reachable);
``make compose-test`` builds them and runs this module. The tests share one stack and
run in order, as one deployment's life: up, train, monitor, rescale, lose a shard,
stop. Stage times and image sizes are printed and written to build/compose-e2e.json.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml

from apexrl.learner.v1 import learner_pb2
from tests.e2e.compose_stack import (
    COMPOSE_TEST_MARKS,
    ROOT,
    SERVICES,
    ComposeStack,
    Stopwatch,
    actor_records,
    describe,
    docker,
    image_sizes,
    wait_until,
)
from tests.e2e.debian_prometheus import build_image

pytestmark = COMPOSE_TEST_MARKS

PROJECT = "apexrl-e2e"
PREFIX = os.environ.get("APEXRL_IMAGE_PREFIX", "apexrl")
TAG = os.environ.get("APEXRL_IMAGE_TAG", "latest")
IMAGES = [f"{PREFIX}/{service}:{TAG}" for service in SERVICES]
PROMETHEUS_IMAGE = "apexrl-e2e/prometheus:debian"
BUILD = ROOT / "build"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "apexrl.json"
ACTORS, FEWER_ACTORS = 8, 2
# Scrape targets of deploy/prometheus/prometheus.yml, by job, for the default stack.
EXPECTED_TARGETS = {"learner": 1, "replay": 2, "actor": ACTORS, "evaluator": 1}
# A best evaluation return (mean of 10 greedy CartPole-v1 episodes, at most 500) that only
# learning reaches: untrained and random policies last 10 to 30 steps; the preset solves
# (475) in well under a minute.
LEARNED_RETURN = 200.0
# Dashboard panels whose series exist only after something went wrong.
PANELS_EMPTY_WHEN_HEALTHY = {"Replay request errors"}


@dataclass
class Deployment:
    stack: ComposeStack
    clock: Stopwatch
    report: dict[str, Any] = field(default_factory=dict)


def _preconditions() -> None:
    try:
        docker("info", timeout_s=30)
    except (AssertionError, OSError) as error:
        pytest.fail(f"the Docker engine does not answer (start it: .ci/docker-engine.sh): {error}")
    missing = [image for image in IMAGES if not docker("image", "ls", "--quiet", image).strip()]
    if missing:
        pytest.fail(f"images {missing} are missing: build them with make images")


def _print_report(report: dict[str, Any]) -> None:
    print("\n[compose e2e] image sizes", flush=True)
    for image, size in report["image_sizes"].items():
        print(f"  {image:40} {size / 1e6:8.0f} MB")
    print("[compose e2e] stage seconds")
    for stage, seconds in report["stage_seconds"].items():
        print(f"  {stage:60} {seconds:7.1f}")
    print(f"  {'total':60} {report['total_seconds']:7.1f}", flush=True)


@pytest.fixture(scope="module")
def deployment() -> Iterator[Deployment]:
    """The stack up with 8 actors and Prometheus; at the end its logs saved and everything removed."""
    _preconditions()
    stack = ComposeStack(PROJECT, {"APEXRL_PROMETHEUS_IMAGE": PROMETHEUS_IMAGE})
    clock = Stopwatch()
    run = Deployment(stack, clock)
    run.report["compose"] = " ".join(stack.command)
    run.report["image_sizes"] = image_sizes(IMAGES)
    # Leftovers of an interrupted earlier run would hold the names and volumes.
    stack.compose("--profile", "monitoring", "down", "--volumes", "--remove-orphans")
    try:
        with clock.stage("Prometheus image from Debian's package"):
            run.report["prometheus"] = build_image(PROMETHEUS_IMAGE, IMAGES[0], BUILD / "prometheus-deb")
        with clock.stage(f"up --scale actor={ACTORS}"):
            stack.compose("up", "-d", "--scale", f"actor={ACTORS}")
        with clock.stage("monitoring profile: Prometheus up"):
            stack.compose("--profile", "monitoring", "up", "-d", "--no-deps", "prometheus")
        yield run
    finally:
        if stack.containers():
            stack.save_logs(BUILD / "compose-e2e-logs")
        stack.compose("--profile", "monitoring", "down", "--volumes", "--remove-orphans")
        stack.close()
        run.report["stage_seconds"] = clock.stages
        run.report["total_seconds"] = round(time.monotonic() - clock.started, 1)
        BUILD.mkdir(exist_ok=True)
        (BUILD / "compose-e2e.json").write_text(json.dumps(run.report, indent=2) + "\n", encoding="utf-8")
        _print_report(run.report)


def _evaluator_registered(status: learner_pb2.GetStatusResponse) -> bool:
    return any(actor.role == learner_pb2.CLIENT_ROLE_EVALUATOR for actor in status.actors)


def _wait_for_actors(stack: ComposeStack, count: int, timeout_s: float) -> learner_pb2.GetStatusResponse:
    status = wait_until(
        lambda: stack.status_if(
            lambda status: len(actor_records(status)) == count and _evaluator_registered(status)
        ),
        timeout_s,
        f"{count} registered actors and the evaluator",
    )
    print(f"[compose e2e] {describe(status)}", flush=True)
    return status


def _assert_distinct_exploration(status: learner_pb2.GetStatusResponse) -> None:
    actors = actor_records(status)
    # The ladder hands out the lowest free rungs, so any N actors hold rungs 0..N-1.
    assert sorted(actor.exploration.rung for actor in actors) == list(range(len(actors)))
    assert len({actor.exploration.epsilon for actor in actors}) == len(actors)
    assert len({actor.client_name for actor in actors}) == len(actors), "one registration per container"


@pytest.mark.timeout(900)
def test_eight_actors_register_with_distinct_exploration_settings(deployment: Deployment) -> None:
    stack = deployment.stack
    with deployment.clock.stage(f"{ACTORS} actors registered"):
        status = _wait_for_actors(stack, ACTORS, timeout_s=300)
    _assert_distinct_exploration(status)
    assert len(stack.containers("actor", running_only=True)) == ACTORS
    wait_until(
        lambda: stack.metrics("APEXRL_LEARNER_METRICS_PORT")["apexrl_learner_actors"] == ACTORS,
        60,
        "the learner's metrics to count 8 actors",
    )


@pytest.mark.timeout(600)
def test_updates_climb_and_the_policy_learns(deployment: Deployment) -> None:
    stack = deployment.stack
    with deployment.clock.stage(f"best evaluation return reaches {LEARNED_RETURN:.0f}"):
        first = wait_until(
            lambda: stack.status_if(lambda status: status.latest_evaluation.episodes > 0),
            240,
            "a first evaluation",
        )
        first_updates = stack.metrics("APEXRL_LEARNER_METRICS_PORT")["apexrl_learner_updates_total"]
        best = wait_until(
            lambda: stack.status_if(lambda status: status.best_evaluation.mean_return >= LEARNED_RETURN),
            480,
            f"the best evaluation return to reach {LEARNED_RETURN:.0f}",
            poll_s=5,
        )
    print(f"[compose e2e] first evaluation {first.latest_evaluation.mean_return:.1f}: {describe(best)}")
    # Parameters that were trained, not the initial ones, earned it.
    assert best.best_evaluation.updates > 0
    wait_until(
        lambda: stack.metrics("APEXRL_LEARNER_METRICS_PORT")["apexrl_learner_updates_total"] > first_updates,
        60,
        "the learner's updates to climb past the first evaluation's",
    )
    deployment.report["evaluation_return"] = {
        "first": first.latest_evaluation.mean_return,
        "best": best.best_evaluation.mean_return,
        "updates": best.updates,
        "environment_steps": best.environment_steps,
    }


@pytest.mark.timeout(600)
def test_prometheus_scrapes_every_service_and_every_dashboard_panel_has_data(
    deployment: Deployment,
) -> None:
    stack = deployment.stack
    # The mounted configuration, checked by the server's own tool.
    stack.compose("exec", "-T", "prometheus", "promtool", "check", "config", "/etc/prometheus/prometheus.yml")

    def every_target_up() -> list[dict[str, Any]] | None:
        targets: list[dict[str, Any]] = stack.prometheus("/api/v1/targets")["activeTargets"]
        up = Counter(target["labels"]["job"] for target in targets if target["health"] == "up")
        return targets if up == EXPECTED_TARGETS and len(targets) == sum(EXPECTED_TARGETS.values()) else None

    with deployment.clock.stage("every scrape target up"):
        targets = wait_until(every_target_up, 120, f"scrape targets {EXPECTED_TARGETS}, all up")
    deployment.report["scrape_targets"] = len(targets)

    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    datasource = yaml.safe_load(
        (ROOT / "deploy" / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"][0]
    queries = []
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
        queries += [(panel["title"], query["expr"]) for query in panel["targets"]]
    # Every query must be valid (the API answers `success`); all but the error panels
    # must have samples once the 1-minute rate windows hold two scrapes.
    without_samples: list[str] = []

    def every_panel_has_samples() -> bool:
        without_samples[:] = [
            f"{title}: {expr}"
            for title, expr in queries
            if not stack.prometheus("/api/v1/query", query=expr)["result"]
            and title not in PANELS_EMPTY_WHEN_HEALTHY
        ]
        return not without_samples

    with deployment.clock.stage("every dashboard panel has samples"):
        try:
            wait_until(every_panel_has_samples, 180, "samples for every dashboard panel", poll_s=5)
        except AssertionError as error:
            raise AssertionError(f"{error}; without samples: {without_samples}") from None


@pytest.mark.timeout(600)
def test_actors_scale_down_to_two_and_back_up_to_eight(deployment: Deployment) -> None:
    stack = deployment.stack
    updates_before = stack.status().updates
    # --no-deps: rescaling touches the actors only, whatever the health of the rest.
    with deployment.clock.stage(f"scale to {FEWER_ACTORS} actors"):
        stack.compose("up", "-d", "--no-deps", "--scale", f"actor={FEWER_ACTORS}", "actor")
        assert len(stack.containers("actor", running_only=True)) == FEWER_ACTORS
        # The learner frees a departed actor's rung once its heartbeat is 30 s old.
        _wait_for_actors(stack, FEWER_ACTORS, timeout_s=120)
    with deployment.clock.stage(f"scale back to {ACTORS} actors"):
        stack.compose("up", "-d", "--no-deps", "--scale", f"actor={ACTORS}", "actor")
        status = _wait_for_actors(stack, ACTORS, timeout_s=240)
    _assert_distinct_exploration(status)
    assert status.updates > updates_before

    def actor_targets_up() -> bool:
        targets: list[dict[str, Any]] = stack.prometheus("/api/v1/targets")["activeTargets"]
        up = [t for t in targets if t["labels"]["job"] == "actor" and t["health"] == "up"]
        return len(up) == ACTORS

    wait_until(actor_targets_up, 90, f"Prometheus to scrape {ACTORS} actors again")


_SNAPSHOT_SAVED = re.compile(r"snapshot saved path=\S+ items=(\d+)")
_SNAPSHOT_LOADED = re.compile(r"snapshot loaded path=\S+ items=(\d+)")


@pytest.mark.timeout(600)
def test_training_goes_on_without_a_shard_and_the_shard_rejoins_with_its_snapshot(
    deployment: Deployment,
) -> None:
    stack = deployment.stack
    [shard] = stack.containers("replay-1")
    before = stack.metrics("APEXRL_REPLAY_1_METRICS_PORT")
    with deployment.clock.stage("stop replay-1"):
        stack.compose("stop", "replay-1")
    state = stack.inspect(shard)["State"]
    assert (state["ExitCode"], state["OOMKilled"]) == (0, False)
    saved = _SNAPSHOT_SAVED.findall(stack.logs(shard).split("stopping signal=SIGTERM")[-1])
    assert saved, "replay-1 wrote no snapshot when stopped"
    snapshot_items = int(saved[-1])
    assert snapshot_items > 0

    with deployment.clock.stage("training on one shard"):
        alone = wait_until(
            lambda: stack.status_if(lambda status: status.replay_shards_up == 1), 60, "one shard up"
        )
        wait_until(lambda: stack.status().updates >= alone.updates + 100, 180, "100 updates with one shard")
    with deployment.clock.stage("replay-1 restarted and rejoined"):
        stack.compose("start", "replay-1")
        wait_until(lambda: stack.status().replay_shards_up == 2, 120, "replay-1 to rejoin")
    loaded = _SNAPSHOT_LOADED.findall(stack.logs(shard))
    assert [int(items) for items in loaded] == [snapshot_items]
    metrics = stack.metrics("APEXRL_REPLAY_1_METRICS_PORT")
    assert metrics["apexrl_replay_incarnation"] > before["apexrl_replay_incarnation"]
    assert metrics["apexrl_replay_size"] >= snapshot_items
    deployment.report["shard_snapshot_items"] = snapshot_items


@pytest.mark.timeout(600)
def test_the_stack_stops_cleanly_and_down_leaves_nothing(deployment: Deployment) -> None:
    stack = deployment.stack
    with deployment.clock.stage("stop (every service drains)"):
        stack.compose("--profile", "monitoring", "stop")
    for container in stack.containers():
        details = stack.inspect(container)
        state = details["State"]
        assert (state["Running"], state["ExitCode"], state["OOMKilled"]) == (False, 0, False), details["Name"]
    [learner] = stack.containers("learner")
    after_signal = stack.logs(learner).split("stopping signal=SIGTERM")[-1]
    assert "checkpoint saved" in after_signal
    assert "learner stopped" in after_signal
    stack.save_logs(BUILD / "compose-e2e-logs")
    with deployment.clock.stage("down --volumes"):
        stack.compose("--profile", "monitoring", "down", "--volumes")
    label = f"label=com.docker.compose.project={PROJECT}"
    assert not stack.containers()
    assert not docker("volume", "ls", "--quiet", "--filter", label).split()
    assert not docker("network", "ls", "--quiet", "--filter", label).split()
