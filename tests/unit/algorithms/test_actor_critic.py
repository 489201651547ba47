"""The actor-critic pieces TD3 and SAC share: wire codec, squashed Gaussian, copies, target updates."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from apexrl.learner.v1 import learner_pb2
from services.algorithms.actions import ActionScaler
from services.algorithms.actor_critic import (
    LOG_STD_MAX,
    LOG_STD_MIN,
    ContinuousBatch,
    Critic,
    DeterministicPolicy,
    SquashedGaussianPolicy,
    polyak_update,
    published,
    squashed_sample,
)
from services.algorithms.actor_critic_config import ActorCriticNetworkConfig
from services.algorithms.td3.acting import Td3Policy
from services.common.environments import BoxActions


def test_network_settings_survive_the_wire() -> None:
    config = ActorCriticNetworkConfig(hidden_sizes=(64, 32), critic_hidden_sizes=(128,))
    wire = config.to_wire()
    assert wire.kind == learner_pb2.NETWORK_KIND_MLP
    assert list(wire.critic_hidden_sizes) == [128]
    assert ActorCriticNetworkConfig.from_wire(wire) == config


@pytest.mark.parametrize(
    "spec",
    [
        learner_pb2.NetworkSpec(kind=learner_pb2.NETWORK_KIND_NATURE_CNN, hidden_sizes=[8]),
        learner_pb2.NetworkSpec(kind=learner_pb2.NETWORK_KIND_UNSPECIFIED, hidden_sizes=[8]),
        learner_pb2.NetworkSpec(kind=learner_pb2.NETWORK_KIND_MLP, hidden_sizes=[8, 0]),
    ],
)
def test_wire_specs_are_validated_as_the_config_was(spec: learner_pb2.NetworkSpec) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - pydantic's and the kind codec's messages differ
        ActorCriticNetworkConfig.from_wire(spec)


def test_squashed_sample_matches_the_change_of_variables_density() -> None:
    mean = torch.tensor([[0.3, -1.2], [2.0, 0.0]])
    log_std = torch.tensor([[-0.5, 0.1], [0.4, -2.0]])
    noise = torch.tensor([[1.1, -0.4], [-0.7, 2.5]])
    action, log_prob = squashed_sample(mean, log_std, noise)
    u = mean + log_std.exp() * noise
    # The density of N(mean, std) at u, and the naive Jacobian term, fine away from saturation.
    gaussian = -0.5 * ((u - mean) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)
    reference = gaussian - torch.log(1 - torch.tanh(u) ** 2)
    torch.testing.assert_close(action, torch.tanh(u))
    torch.testing.assert_close(log_prob, reference.sum(dim=1))


def test_squashed_log_prob_stays_finite_where_tanh_saturates() -> None:
    # At u = 30, 1 - tanh(u)^2 rounds to 0 in float32, so the naive log would be -inf; the exact
    # value is 2 (log 2 - 30 - log(1 + e^-60)) ~ 2 log 2 - 60 per dimension.
    _, log_prob = squashed_sample(torch.tensor([[30.0]]), torch.tensor([[0.0]]), torch.tensor([[0.0]]))
    expected = -0.5 * math.log(2 * math.pi) - (2 * math.log(2) - 60.0)
    assert math.isfinite(float(log_prob))
    assert math.isclose(float(log_prob), expected, rel_tol=1e-6)


def test_policy_log_std_is_clamped() -> None:
    policy = SquashedGaussianPolicy((1,), 1, ())
    with torch.no_grad():
        policy.log_std.weight.fill_(100.0)
        policy.log_std.bias.zero_()
    _, log_std = policy(torch.tensor([[1.0], [-1.0]]))
    torch.testing.assert_close(log_std, torch.tensor([[LOG_STD_MAX], [LOG_STD_MIN]]))


def test_polyak_update_moves_targets_a_fraction_tau_towards_the_online_network() -> None:
    online, target = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    with torch.no_grad():
        online.weight.copy_(torch.tensor([[1.0, 2.0]]))
        target.weight.copy_(torch.tensor([[3.0, 0.0]]))
        online.bias.fill_(1.0)
        target.bias.fill_(0.0)
    polyak_update(target, online, 0.25)
    torch.testing.assert_close(target.weight, torch.tensor([[2.5, 0.5]]))
    torch.testing.assert_close(target.bias, torch.tensor([0.25]))


def test_batches_reject_per_item_columns_that_would_broadcast() -> None:
    batch = ContinuousBatch(
        observation=torch.zeros(3, 2),
        action=torch.zeros(3, 1),
        reward=torch.zeros(3, 1),
        discount=torch.zeros(3),
        next_observation=torch.zeros(3, 2),
    )
    with pytest.raises(ValueError, match=r"reward must have shape \[3\], got \[3, 1\]"):
        batch.check(torch.ones(3))


def make_copy() -> tuple[Td3Policy, DeterministicPolicy]:
    """An actor's copy for Box([-2], [2]), and a differently initialised policy to load into it."""
    scaler = ActionScaler.from_box(BoxActions(np.array([-2.0], np.float32), np.array([2.0], np.float32)))
    local = Td3Policy(DeterministicPolicy((3,), 1, (4,)), Critic((3,), 1, (4,)), scaler)
    return local, DeterministicPolicy((3,), 1, (4,))


def test_a_copy_loaded_with_the_policy_alone_acts_but_cannot_score() -> None:
    local, policy = make_copy()
    local.load_parameters(published(policy))
    observations = np.ones((2, 3), np.float32)
    with torch.no_grad():
        expected = 2.0 * policy(torch.from_numpy(observations)).numpy()
    np.testing.assert_allclose(local.act_deterministic(observations), expected, rtol=1e-6)
    columns = {
        "observation": observations,
        "action": np.zeros((2, 1), np.float32),
        "reward": np.zeros(2, np.float32),
        "discount": np.zeros(2, np.float32),
        "next_observation": observations,
    }
    with pytest.raises(RuntimeError, match="initial priorities need the critic"):
        local.initial_priorities(columns)
    local.load_parameters(published(policy, Critic((3,), 1, (4,))))
    assert local.initial_priorities(columns).shape == (2,)


def test_a_copy_rejects_parameters_it_does_not_know() -> None:
    local, policy = make_copy()
    with pytest.raises(KeyError, match="target"):
        local.load_parameters({**published(policy), "target.head.weight": torch.zeros(1, 4)})
    with pytest.raises(RuntimeError, match="Missing key"):
        local.load_parameters({"critic.head.bias": torch.zeros(1)})
