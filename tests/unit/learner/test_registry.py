"""The actor registry's expiry: a silent client is forgotten, frees its rung and keeps its steps counted."""

from __future__ import annotations

import time

import pytest

from services.algorithms.interface import ExplorationSetting
from services.learner.registry import ActorRecord, ActorRegistry, UnknownActorError

EXPIRY_S = 1.0


def exploration(rung: int) -> ExplorationSetting:
    return ExplorationSetting("epsilon", 0.5**rung)


def heartbeat(registry: ActorRegistry, record: ActorRecord, steps: int) -> None:
    registry.heartbeat(record.actor_id, steps, episodes=1, last_return=10.0, version=3)


def test_a_client_silent_for_the_expiry_is_forgotten_frees_its_rung_and_its_steps_still_count() -> None:
    registry = ActorRegistry(exploration, expiry_s=EXPIRY_S, base_environment_steps=100, first_actor_id=5)
    kept, silent, last = (registry.register("actor", name) for name in ("kept", "silent", "last"))
    evaluator = registry.register("evaluator", "evaluator")
    assert [kept.rung, silent.rung, last.rung, evaluator.rung] == [0, 1, 2, None]
    assert [kept.actor_id, silent.actor_id, last.actor_id, evaluator.actor_id] == [5, 6, 7, 8]
    steps = {kept.actor_id: 40, silent.actor_id: 25, last.actor_id: 10, evaluator.actor_id: 0}
    for record in (kept, silent, last, evaluator):
        heartbeat(registry, record, steps[record.actor_id])
    silent_since = time.monotonic()
    assert registry.environment_steps() == 100 + 75

    # The others keep reporting; the silent one is dropped once expiry_s has passed.
    deadline = time.monotonic() + 30
    while silent.actor_id in [record.actor_id for record in registry.active()]:
        assert time.monotonic() < deadline, "the silent actor was never forgotten"
        for record in (kept, last, evaluator):
            heartbeat(registry, record, steps[record.actor_id])
        time.sleep(0.01)
    assert time.monotonic() - silent_since >= EXPIRY_S
    assert [record.actor_id for record in registry.active()] == [5, 7, 8]
    # Its 25 steps stay counted, once.
    assert registry.environment_steps() == 100 + 75
    with pytest.raises(UnknownActorError, match="actor 6 is not registered"):
        heartbeat(registry, silent, 30)

    # The next actor takes the lowest free rung, with a new id.
    joined = registry.register("actor", "joined")
    assert (joined.actor_id, joined.rung, joined.exploration) == (9, 1, exploration(1))
    assert registry.next_actor_id == 10
    heartbeat(registry, joined, 7)
    assert registry.environment_steps() == 100 + 75 + 7


def test_a_client_that_keeps_reporting_is_never_forgotten() -> None:
    registry = ActorRegistry(exploration, expiry_s=EXPIRY_S)
    record = registry.register("actor", "steady")
    until = time.monotonic() + 2.5 * EXPIRY_S
    while time.monotonic() < until:
        heartbeat(registry, record, 1)
        assert [active.actor_id for active in registry.active()] == [record.actor_id]
        time.sleep(0.01)
    assert registry.register("actor", "second").rung == 1
