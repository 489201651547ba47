"""Initial priorities from what acting computed equal those computed again from the transitions."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from numpy.typing import NDArray

from services.actor.actor import build_policy, make_spec_environment
from services.actor.n_step import NStepBuilder
from services.actor.rollout import Rollout
from services.algorithms.experiment import experiment_spec, load_experiment
from services.algorithms.families import family_named
from services.algorithms.interface import wire_columns
from services.common.environments import environment_spec


@pytest.mark.parametrize("preset", ["cartpole", "pendulum", "pendulum-sac"])
def test_priorities_from_the_acting_record_equal_those_computed_again(preset: str) -> None:
    """Four environments for 260 steps: CartPole's episodes terminate, Pendulum's are truncated
    at 200 steps, and the flush ends the rest: every way a transition gets its bootstrap."""
    torch.manual_seed(0)
    config = load_experiment(preset)
    spec = experiment_spec(config)
    policy, first = build_policy(spec)
    family = family_named(config.algorithm.name)
    learner = family.make_learner(config.algorithm, environment_spec(first), torch.device("cpu"), 0)
    policy.load_parameters(learner.actor_parameters())
    environments = [first] + [make_spec_environment(spec) for _ in range(3)]
    builder = NStepBuilder(len(environments), config.algorithm.n_step, config.algorithm.discount)
    rollout = Rollout(environments, builder, seed=0, record=policy.record)
    rng = np.random.default_rng(0)
    exploration = family.exploration(config.algorithm, 0)

    def act(observations: NDArray[Any]) -> tuple[NDArray[Any], dict[str, NDArray[Any]]]:
        return policy.act_recorded(observations, exploration, rng)

    parts = [rollout.step_recorded(act) for _ in range(260)] + [rollout.flush()]
    rollout.close()
    columns = {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
    assert len(columns["reward"]) == 260 * len(environments)
    assert any(name.startswith("bootstrap.") for name in columns)
    assert (columns["discount"] > 0).any()
    recorded = policy.initial_priorities(columns)
    again = policy.initial_priorities(wire_columns(columns))
    np.testing.assert_allclose(recorded, again, rtol=1e-4, atol=1e-5)
    # Not a coincidence of small numbers: the priorities spread, and a record shifted by one
    # transition gives others.
    assert np.std(again) > 1e-3
    shifted = {
        name: np.roll(values, 1, axis=0) if name.startswith("bootstrap.") else values
        for name, values in columns.items()
    }
    assert not np.allclose(policy.initial_priorities(shifted), again, rtol=1e-4, atol=1e-5)
