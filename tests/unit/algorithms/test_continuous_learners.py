"""The TD3 and SAC learner cores: finite updates, exact resumption, seed-only initialisation."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from numpy.typing import NDArray

from services.algorithms.actor_critic_config import ActorCriticNetworkConfig
from services.algorithms.interface import LearnerCore
from services.algorithms.sac.config import SacConfig
from services.algorithms.sac.family import SacFamily
from services.algorithms.sac.learning import SacLearner
from services.algorithms.td3.config import Td3Config
from services.algorithms.td3.family import Td3Family
from services.algorithms.td3.learning import Td3Learner
from services.common.environments import BoxActions, EnvironmentSpec

NETWORK = ActorCriticNetworkConfig(hidden_sizes=(16, 16), critic_hidden_sizes=(16, 16))
LOW, HIGH = np.array([-1.0, 0.0], np.float32), np.array([3.0, 10.0], np.float32)
SPEC = EnvironmentSpec((3,), np.dtype(np.float32), BoxActions(LOW, HIGH))
BATCH_SIZE = 32
CPU = torch.device("cpu")


def make_core(name: str, seed: int) -> Td3Learner | SacLearner:
    if name == "td3":
        return Td3Family().make_learner(Td3Config(network=NETWORK), SPEC, CPU, seed)
    return SacFamily().make_learner(SacConfig(network=NETWORK), SPEC, CPU, seed)


def random_batch(seed: int) -> dict[str, NDArray[Any]]:
    """Environment-scale actions within the Box, n-step discounts gamma^3 or 0 (episode ended)."""
    rng = np.random.default_rng(seed)
    return {
        "observation": rng.normal(size=(BATCH_SIZE, 3)).astype(np.float32),
        "action": rng.uniform(LOW, HIGH, size=(BATCH_SIZE, 2)).astype(np.float32),
        "reward": rng.normal(size=BATCH_SIZE).astype(np.float32),
        "discount": np.where(rng.random(BATCH_SIZE) < 0.1, 0.0, 0.99**3).astype(np.float32),
        "next_observation": rng.normal(size=(BATCH_SIZE, 3)).astype(np.float32),
    }


def weights(seed: int) -> NDArray[np.float32]:
    return np.random.default_rng(seed).uniform(0.2, 1.0, BATCH_SIZE).astype(np.float32)


def snapshot(core: LearnerCore) -> dict[str, torch.Tensor]:
    """A copy, as a checkpoint file would hold it: the core keeps mutating its own tensors."""
    return {name: value.detach().clone() for name, value in core.state_tensors().items()}


def assert_same_state(left: dict[str, torch.Tensor], right: dict[str, torch.Tensor]) -> None:
    assert left.keys() == right.keys()
    for name, value in left.items():
        assert torch.equal(value, right[name]), name


FAMILIES = ["td3", "sac"]


@pytest.mark.parametrize("name", FAMILIES)
def test_an_update_gives_a_finite_loss_and_positive_float64_priorities(name: str) -> None:
    core: LearnerCore = make_core(name, seed=0)
    result = core.update(random_batch(1), weights(1))
    assert np.isfinite(result.loss)
    assert result.priorities.dtype == np.float64
    assert result.priorities.shape == (BATCH_SIZE,)
    assert np.all(result.priorities > 0)
    assert core.updates == 1


@pytest.mark.parametrize("name", FAMILIES)
def test_a_resumed_core_continues_exactly_like_the_original(name: str) -> None:
    original = make_core(name, seed=0)
    for step in range(3):  # TD3's policy (delay 2) has stepped once, so every Adam has moments
        original.update(random_batch(step), weights(step))
    resumed = make_core(name, seed=1)
    resumed.load_state_tensors(snapshot(original), original.updates)
    assert_same_state(snapshot(resumed), snapshot(original))
    batch = random_batch(10)
    expected, actual = original.update(batch, weights(10)), resumed.update(batch, weights(10))
    assert expected.loss == actual.loss
    np.testing.assert_array_equal(expected.priorities, actual.priorities)
    assert_same_state(snapshot(resumed), snapshot(original))
    assert resumed.updates == original.updates == 4


@pytest.mark.parametrize("name", FAMILIES)
def test_initial_parameters_depend_on_the_seed_alone_and_leave_torchs_global_generator_alone(
    name: str,
) -> None:
    torch.manual_seed(1234)
    before = torch.random.get_rng_state()
    core, twin, other = make_core(name, seed=7), make_core(name, seed=7), make_core(name, seed=8)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert_same_state(snapshot(core), snapshot(twin))
    key = "critics.first.head.weight"
    assert not torch.equal(snapshot(core)[key], snapshot(other)[key])
    core.update(random_batch(0), weights(0))  # its noise, too, comes from the core's own generator
    twin.update(random_batch(0), weights(0))
    assert torch.equal(torch.random.get_rng_state(), before)
    assert_same_state(snapshot(core), snapshot(twin))


@pytest.mark.parametrize("name", FAMILIES)
def test_actors_get_the_policy_and_the_first_critic_and_policy_clients_the_policy_alone(name: str) -> None:
    core = make_core(name, seed=0)
    actor = core.actor_parameters()
    assert {key.split(".")[0] for key in actor} == {"policy", "critic"}
    assert core.policy_parameters().keys() == {key for key in actor if key.startswith("policy.")}
    first = core.critics.first.state_dict()
    assert all(torch.equal(actor[f"critic.{key}"], value) for key, value in first.items())


@pytest.mark.parametrize("name", FAMILIES)
def test_state_tensors_of_other_shapes_are_refused(name: str) -> None:
    core = make_core(name, seed=0)
    state = snapshot(core)
    state["critics.first.head.weight"] = torch.zeros(1, 3)
    with pytest.raises(RuntimeError, match="size mismatch"):
        make_core(name, seed=0).load_state_tensors(state, 0)


def test_td3_steps_its_policy_and_targets_every_policy_delay_updates_only() -> None:
    core = Td3Learner(Td3Config(network=NETWORK, policy_delay=2), (3,), BoxActions(LOW, HIGH), CPU, 0)
    initial = snapshot(core)
    core.update(random_batch(0), weights(0))
    after_one = snapshot(core)
    for prefix in ("policy.", "target_policy.", "target_critics."):
        assert all(torch.equal(after_one[k], initial[k]) for k in initial if k.startswith(prefix)), prefix
    assert not torch.equal(after_one["critics.first.head.weight"], initial["critics.first.head.weight"])
    core.update(random_batch(1), weights(1))
    after_two = snapshot(core)
    for key in ("policy.head.weight", "target_policy.head.weight", "target_critics.second.head.weight"):
        assert not torch.equal(after_two[key], after_one[key]), key


def test_sac_learns_its_temperature_and_moves_its_target_critics_every_update() -> None:
    core = SacLearner(
        SacConfig(network=NETWORK, initial_temperature=0.5), (3,), BoxActions(LOW, HIGH), CPU, 0
    )
    assert core.target_entropy == -2.0
    assert core.temperature() == pytest.approx(0.5)
    initial = snapshot(core)
    core.update(random_batch(0), weights(0))
    after = snapshot(core)
    assert core.temperature() != pytest.approx(0.5, abs=1e-6)
    assert not torch.equal(
        after["target_critics.first.head.weight"], initial["target_critics.first.head.weight"]
    )
    assert not torch.equal(after["policy.mean.weight"], initial["policy.mean.weight"])
