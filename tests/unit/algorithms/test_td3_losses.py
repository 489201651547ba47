"""The TD3 losses against values computed by hand on linear critics and constant policies."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from services.algorithms.actor_critic import DeterministicPolicy, TwinCritics
from services.algorithms.td3.losses import (
    CriticLoss,
    TargetSmoothing,
    Td3Batch,
    smoothed_target_actions,
    td3_critic_loss,
    td3_policy_loss,
)


class ConstantPolicy(nn.Module):
    """pi(s) = value for every state, so target actions are known before the noise."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        return torch.full((observations.shape[0], 1), self.value)


def linear_critics(first: tuple[float, float], second: tuple[float, float]) -> TwinCritics:
    """Q1(s, a) = first . (s, a) and Q2(s, a) = second . (s, a), one-dimensional s and a, no bias."""
    critics = TwinCritics((1,), 1, ())
    with torch.no_grad():
        for critic, weights in ((critics.first, first), (critics.second, second)):
            critic.head.weight.copy_(torch.tensor([weights]))
            critic.head.bias.zero_()
    return critics


# Online Q1 = s + a, Q2 = 2 a. Target Q1' = 2 s' + a, Q2' = s' + 4 a.
ONLINE = ((1.0, 1.0), (0.0, 2.0))
TARGET = ((2.0, 1.0), (1.0, 4.0))
BATCH = Td3Batch(
    observation=torch.tensor([[1.0], [2.0]]),
    action=torch.tensor([[0.5], [-1.0]]),
    reward=torch.tensor([1.0, -1.0]),
    discount=torch.tensor([0.9, 0.5]),
    next_observation=torch.tensor([[1.0], [3.0]]),
)
NO_NOISE = TargetSmoothing(noise=0.0, clip=0.5)

# Without noise a~' = 0.5 for both items:
#   item 0: s' = 1: Q1' = 2.5, Q2' = 3.0, min 2.5 (Q1'): y = 1 + 0.9 * 2.5 = 3.25
#   item 1: s' = 3: Q1' = 6.5, Q2' = 5.0, min 5.0 (Q2'): y = -1 + 0.5 * 5 = 1.5  (Q1' alone: 2.25)
# Online Q1 = [1.5, 1.0], Q2 = [1.0, -2.0]; td = y - Q1 = [1.75, 0.5].
# Squared errors: item 0: 1.75^2 + 2.25^2 = 3.0625 + 5.0625 = 8.125; item 1: 0.5^2 + 3.5^2 = 12.5.
EXPECTED_TD_ERRORS = [1.75, 0.5]
UNWEIGHTED_LOSS = (8.125 + 12.5) / 2
WEIGHTED_LOSS = (0.5 * 8.125 + 1.0 * 12.5) / 2  # weights [0.5, 1.0]


def critic_loss(smoothing: TargetSmoothing, weights: list[float], policy_value: float) -> CriticLoss:
    return td3_critic_loss(
        linear_critics(*ONLINE),
        ConstantPolicy(policy_value),
        linear_critics(*TARGET),
        BATCH,
        torch.tensor(weights),
        smoothing,
        torch.Generator().manual_seed(0),
    )


def test_targets_take_the_smaller_of_the_two_target_critics_item_by_item() -> None:
    result = critic_loss(NO_NOISE, [1.0, 1.0], policy_value=0.5)
    torch.testing.assert_close(result.td_errors, torch.tensor(EXPECTED_TD_ERRORS))
    torch.testing.assert_close(result.loss, torch.tensor(UNWEIGHTED_LOSS))
    assert not result.td_errors.requires_grad


def test_importance_weights_scale_each_items_squared_errors() -> None:
    result = critic_loss(NO_NOISE, [0.5, 1.0], policy_value=0.5)
    torch.testing.assert_close(result.loss, torch.tensor(WEIGHTED_LOSS))
    torch.testing.assert_close(result.td_errors, torch.tensor(EXPECTED_TD_ERRORS))


def test_smoothing_noise_is_clipped_added_to_the_target_action_and_the_sum_clipped_to_the_unit_range() -> (
    None
):
    # Seed 0's first two standard normals are +1.54 and -0.29; times sigma = 1e6 both clip to +-0.5.
    noise = torch.randn((2, 1), generator=torch.Generator().manual_seed(0))
    assert noise[0, 0] > 0 > noise[1, 0]
    # pi'(s') = 0.9: item 0 gets 0.9 + 0.5 = 1.4, clipped to 1.0; item 1 gets 0.9 - 0.5 = 0.4.
    smoothing = TargetSmoothing(noise=1e6, clip=0.5)
    actions = smoothed_target_actions(
        ConstantPolicy(0.9), BATCH.next_observation, smoothing, torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(actions, torch.tensor([[1.0], [0.4]]))
    # item 0: s' = 1, a~' = 1.0: Q1' = 3.0, Q2' = 5.0: y = 1 + 0.9 * 3 = 3.7, td = 3.7 - 1.5 = 2.2
    # item 1: s' = 3, a~' = 0.4: Q1' = 6.4, Q2' = 4.6: y = -1 + 0.5 * 4.6 = 1.3, td = 1.3 - 1.0 = 0.3
    # Unsmoothed (a~' = 0.9) they would be y = [3.61, 2.3]; unclipped noise would make item 1's a~' -1.
    result = critic_loss(smoothing, [1.0, 1.0], policy_value=0.9)
    torch.testing.assert_close(result.td_errors, torch.tensor([2.2, 0.3]))


def test_smoothing_noise_has_the_configured_scale_when_it_is_not_clipped() -> None:
    generator = torch.Generator().manual_seed(3)
    expected = 0.25 * torch.randn((2, 1), generator=torch.Generator().manual_seed(3))
    smoothing = TargetSmoothing(noise=0.25, clip=10.0)
    actions = smoothed_target_actions(ConstantPolicy(0.0), BATCH.next_observation, smoothing, generator)
    torch.testing.assert_close(actions, expected)


def test_gradients_reach_the_online_critics_only() -> None:
    online, target = linear_critics(*ONLINE), linear_critics(*TARGET)
    policy = ConstantPolicy(0.5)
    generator = torch.Generator().manual_seed(0)
    result = td3_critic_loss(online, policy, target, BATCH, torch.ones(2), NO_NOISE, generator)
    torch.autograd.backward(result.loss)
    assert all(parameter.grad is None for parameter in target.parameters())
    # dloss/dw1 = mean_i 2 (Q1 - y)_i (s, a)_i = [2 * -1.75 * (1, 0.5) + 2 * -0.5 * (2, -1)] / 2
    grad = online.first.head.weight.grad
    assert grad is not None
    torch.testing.assert_close(grad, torch.tensor([[(-3.5 - 2.0) / 2, (-1.75 + 1.0) / 2]]))


def test_policy_loss_climbs_the_first_critic_only() -> None:
    # pi(s) = tanh(0 s + 0) = 0, so the loss is -mean Q1(s, 0) = -mean(s) = -1.5; Q2 would give 0.
    policy = DeterministicPolicy((1,), 1, ())
    with torch.no_grad():
        policy.head.weight.zero_()
        policy.head.bias.zero_()
    loss = td3_policy_loss(policy, linear_critics(*ONLINE), BATCH.observation)
    torch.testing.assert_close(loss, torch.tensor(-1.5))
    torch.autograd.backward(loss)
    # dloss/db = -mean(dQ1/da * tanh'(0)) = -1 * 1: the policy moves towards larger actions.
    assert policy.head.bias.grad is not None
    assert math.isclose(float(policy.head.bias.grad), -1.0)


def test_weights_of_the_wrong_shape_are_rejected_instead_of_broadcast() -> None:
    with pytest.raises(ValueError, match=r"importance_weights must have shape \[2\], got \[2, 1\]"):
        td3_critic_loss(
            linear_critics(*ONLINE),
            ConstantPolicy(0.5),
            linear_critics(*TARGET),
            BATCH,
            torch.ones(2, 1),
            NO_NOISE,
            torch.Generator(),
        )
