"""The TD3 and SAC families as the services use them: specs, ladders, policies built from the wire."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import numpy as np
import pytest
import torch
from numpy.typing import NDArray
from pydantic import ValidationError

from apexrl.learner.v1 import learner_pb2
from services.algorithms.actor_critic_config import ActorCriticNetworkConfig
from services.algorithms.interface import ActingPolicy, AlgorithmFamily, ExplorationSetting
from services.algorithms.sac.config import SacConfig, TemperatureLadderConfig
from services.algorithms.sac.family import SacFamily
from services.algorithms.td3.config import NoiseLadderConfig, Td3Config
from services.algorithms.td3.family import Td3Family
from services.common.environments import BoxActions, DiscreteActions, EnvironmentSpec

NETWORK = ActorCriticNetworkConfig(hidden_sizes=(16,), critic_hidden_sizes=(16, 8))
LOW, HIGH = np.array([-1.0, 0.0], np.float32), np.array([3.0, 10.0], np.float32)
SPEC = EnvironmentSpec((3,), np.dtype(np.float32), BoxActions(LOW, HIGH))
CPU = torch.device("cpu")
CASES: list[tuple[AlgorithmFamily, Td3Config | SacConfig]] = [
    (Td3Family(), Td3Config(network=NETWORK)),
    (SacFamily(), SacConfig(network=NETWORK)),
]
IDS = ["td3", "sac"]


def observations(count: int = 64) -> NDArray[np.float32]:
    return np.random.default_rng(3).normal(scale=3.0, size=(count, 3)).astype(np.float32)


def columns(count: int = 16) -> dict[str, NDArray[Any]]:
    rng = np.random.default_rng(4)
    return {
        "observation": rng.normal(size=(count, 3)).astype(np.float32),
        "action": rng.uniform(LOW, HIGH, size=(count, 2)).astype(np.float32),
        "reward": rng.normal(size=count).astype(np.float32),
        "discount": np.full(count, 0.97, np.float32),
        "next_observation": rng.normal(size=(count, 3)).astype(np.float32),
    }


def trained_pair(family: AlgorithmFamily, config: Td3Config | SacConfig) -> tuple[Any, ActingPolicy]:
    """A learner core and an actor's policy built from the wire spec, loaded with its actor parameters."""
    core = family.make_learner(config, SPEC, CPU, seed=0)
    policy = family.make_policy(config.network.to_wire(), SPEC)
    policy.load_parameters(core.actor_parameters())
    return core, policy


def test_the_families_name_their_algorithms_and_exploration_knobs() -> None:
    td3, sac = Td3Family(), SacFamily()
    assert Td3Config().wire_algorithm == learner_pb2.ALGORITHM_TD3
    assert SacConfig().wire_algorithm == learner_pb2.ALGORITHM_SAC
    assert (td3.name, td3.wire_algorithm, td3.exploration_kind) == (
        "td3",
        learner_pb2.ALGORITHM_TD3,
        "action_noise_scale",
    )
    assert (sac.name, sac.wire_algorithm, sac.exploration_kind) == (
        "sac",
        learner_pb2.ALGORITHM_SAC,
        "policy_temperature",
    )


@pytest.mark.parametrize(("family", "config"), CASES, ids=IDS)
def test_discrete_action_spaces_are_rejected(family: AlgorithmFamily, config: Td3Config | SacConfig) -> None:
    discrete = EnvironmentSpec((4,), np.dtype(np.float32), DiscreteActions(2))
    message = rf"{family.name.upper()} needs a continuous \(Box\) action space, got DiscreteActions"
    with pytest.raises(ValueError, match=message):
        family.check_environment(discrete)
    with pytest.raises(ValueError, match=message):
        family.make_learner(config, discrete, CPU, seed=0)
    family.check_environment(SPEC)


@pytest.mark.parametrize(("family", "config"), CASES, ids=IDS)
def test_a_policy_built_from_the_wire_acts_like_the_learners_own(
    family: AlgorithmFamily, config: Td3Config | SacConfig
) -> None:
    core, policy = trained_pair(family, config)
    obs = observations()
    with torch.no_grad():
        own = core.policy if family.name == "td3" else core.policy.deterministic
        unit = own(torch.from_numpy(obs)).numpy()
    expected = (LOW + HIGH) / 2 + unit * (HIGH - LOW) / 2
    actions = policy.act_deterministic(obs)
    assert actions.dtype == np.float32
    np.testing.assert_allclose(actions, expected, rtol=1e-5, atol=1e-5)
    # Without noise (scale or temperature 0) exploring acts deterministically.
    silent = ExplorationSetting(family.exploration_kind, 0.0)
    np.testing.assert_allclose(policy.act(obs, silent, np.random.default_rng(0)), actions, atol=1e-6)


@pytest.mark.parametrize(("family", "config"), CASES, ids=IDS)
def test_exploring_actions_stay_within_asymmetric_bounds(
    family: AlgorithmFamily, config: Td3Config | SacConfig
) -> None:
    _, policy = trained_pair(family, config)
    actions = policy.act(
        observations(), ExplorationSetting(family.exploration_kind, 10.0), np.random.default_rng(0)
    )
    assert actions.shape == (64, 2)
    assert actions.dtype == np.float32
    assert np.all(actions >= LOW)
    assert np.all(actions <= HIGH)
    assert len(np.unique(actions[:, 1])) > 2  # the noise is there, not every action on a bound


@pytest.mark.parametrize(("family", "config"), CASES, ids=IDS)
def test_exploration_is_repeatable_from_the_actors_rng(
    family: AlgorithmFamily, config: Td3Config | SacConfig
) -> None:
    _, policy = trained_pair(family, config)
    setting = family.exploration(config, 0)
    first = policy.act(observations(), setting, np.random.default_rng(5))
    np.testing.assert_array_equal(first, policy.act(observations(), setting, np.random.default_rng(5)))
    assert not np.array_equal(first, policy.act(observations(), setting, np.random.default_rng(6)))


@pytest.mark.parametrize(("family", "config"), CASES, ids=IDS)
def test_initial_priorities_are_the_actors_one_critic_td_errors(
    family: AlgorithmFamily, config: Td3Config | SacConfig
) -> None:
    core, policy = trained_pair(family, config)
    batch = columns()
    critic = core.critics.first
    own = core.policy if family.name == "td3" else core.policy.deterministic
    with torch.no_grad():
        next_observation = torch.from_numpy(batch["next_observation"])
        unit_action = torch.from_numpy((batch["action"] - (LOW + HIGH) / 2) / ((HIGH - LOW) / 2))
        td = (
            torch.from_numpy(batch["reward"])
            + torch.from_numpy(batch["discount"]) * critic(next_observation, own(next_observation))
            - critic(torch.from_numpy(batch["observation"]), unit_action)
        )
    priorities = policy.initial_priorities(batch)
    assert priorities.dtype == np.float64
    np.testing.assert_allclose(priorities, td.abs().numpy() + 1e-6, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("family", "config"), CASES, ids=IDS)
def test_a_policy_loaded_with_the_policy_parameters_alone_acts(
    family: AlgorithmFamily, config: Td3Config | SacConfig
) -> None:
    core = family.make_learner(config, SPEC, CPU, seed=0)
    policy = family.make_policy(config.network.to_wire(), SPEC)
    policy.load_parameters(core.policy_parameters())
    _, reference = trained_pair(family, config)
    np.testing.assert_array_equal(
        policy.act_deterministic(observations()), reference.act_deterministic(observations())
    )
    with pytest.raises(RuntimeError, match="need the critic"):
        policy.initial_priorities(columns())


@pytest.mark.parametrize(("family", "config"), CASES, ids=IDS)
def test_policies_refuse_wire_specs_the_config_would_refuse(
    family: AlgorithmFamily, config: Td3Config | SacConfig
) -> None:
    spec = config.network.to_wire()
    spec.kind = learner_pb2.NETWORK_KIND_NATURE_CNN
    with pytest.raises(ValueError, match="mlp"):
        family.make_policy(spec, SPEC)


def test_td3_rungs_spread_the_noise_scale_geometrically_from_highest_to_lowest() -> None:
    family, config = Td3Family(), Td3Config()
    scales = [family.exploration(config, rung).value for rung in range(4)]
    # van der Corput fractions 0, 1/2, 1/4, 3/4 of the way from 0.3 to 0.05 in log scale.
    expected = [0.3 * (0.05 / 0.3) ** fraction for fraction in (0.0, 0.5, 0.25, 0.75)]
    np.testing.assert_allclose(scales, expected)
    setting = family.exploration(config, 1)
    assert setting.kind == "action_noise_scale"
    assert setting.value == pytest.approx(0.015**0.5)


def test_sac_actors_sample_the_policy_as_is_unless_a_temperature_ladder_is_set() -> None:
    family = SacFamily()
    assert {family.exploration(SacConfig(), rung) for rung in range(5)} == {
        ExplorationSetting("policy_temperature", 1.0)
    }
    ladder = SacConfig(exploration=TemperatureLadderConfig(highest_temperature=2.0, lowest_temperature=0.5))
    assert family.exploration(ladder, 0).value == 2.0
    assert family.exploration(ladder, 1).value == pytest.approx(1.0)


def test_ladders_need_the_lowest_value_at_most_the_highest() -> None:
    with pytest.raises(ValidationError, match="must not exceed"):
        NoiseLadderConfig(highest_noise_scale=0.1, lowest_noise_scale=0.2)
    with pytest.raises(ValidationError, match="must not exceed"):
        TemperatureLadderConfig(highest_temperature=1.0, lowest_temperature=1.5)
    with pytest.raises(ValidationError, match="greater than 0"):
        NoiseLadderConfig(lowest_noise_scale=0.0)


def test_configs_carry_the_papers_defaults() -> None:
    td3, sac = Td3Config(), SacConfig()
    assert (td3.policy_delay, td3.target_noise, td3.target_noise_clip, td3.target_update_rate) == (
        2,
        0.2,
        0.5,
        0.005,
    )
    assert (sac.initial_temperature, sac.target_entropy, sac.target_update_rate) == (1.0, None, 0.005)
    assert td3.network.hidden_sizes == td3.network.critic_hidden_sizes == (256, 256)


def test_the_config_modules_import_neither_torch_nor_gymnasium() -> None:
    # The launcher validates experiment files with the config models alone and must start fast.
    code = (
        "import sys; import services.algorithms.td3.config, services.algorithms.sac.config; "
        "print(sorted({'torch', 'gymnasium'} & set(sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
