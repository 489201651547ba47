"""The SAC losses against values computed by hand, and against the squashed Gaussian's own density."""

from __future__ import annotations

import math

import torch

from services.algorithms.actor_critic import SquashedGaussianPolicy, TwinCritics
from services.algorithms.sac.losses import (
    CriticLoss,
    SacBatch,
    sac_critic_loss,
    sac_policy_loss,
    temperature_loss,
)


class KnownSamplePolicy(SquashedGaussianPolicy):
    """Samples a = 0.5 with log pi(a|s) = -s, whatever the generator: the targets can be done by hand."""

    def __init__(self) -> None:
        super().__init__((1,), 1, ())

    def sample(
        self, observations: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.full((observations.shape[0], 1), 0.5), -observations.squeeze(1)


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
BATCH = SacBatch(
    observation=torch.tensor([[1.0], [2.0]]),
    action=torch.tensor([[0.5], [-1.0]]),
    reward=torch.tensor([1.0, -1.0]),
    discount=torch.tensor([0.9, 0.5]),
    next_observation=torch.tensor([[1.0], [3.0]]),
)
ALPHA = 0.5

# a~' = 0.5, log pi(a~'|s') = -s' = [-1, -3], alpha = 0.5:
#   item 0: Q1' = 2.5, Q2' = 3.0, min 2.5 (Q1'); soft value 2.5 + 0.5 = 3.0; y = 1 + 0.9 * 3.0 = 3.7
#   item 1: Q1' = 6.5, Q2' = 5.0, min 5.0 (Q2'); soft value 5.0 + 1.5 = 6.5; y = -1 + 0.5 * 6.5 = 2.25
#   (Q1' alone would give item 1 y = 3.0; no entropy term would give y = [3.25, 1.5].)
# Online Q1 = [1.5, 1.0], Q2 = [1.0, -2.0]; td = y - Q1 = [2.2, 1.25].
# Squared errors: item 0: 2.2^2 + 2.7^2 = 4.84 + 7.29 = 12.13; item 1: 1.25^2 + 4.25^2 = 19.625.
EXPECTED_TD_ERRORS = [2.2, 1.25]
UNWEIGHTED_LOSS = (12.13 + 19.625) / 2
WEIGHTED_LOSS = (0.5 * 12.13 + 1.0 * 19.625) / 2  # weights [0.5, 1.0]


def critic_loss(policy: SquashedGaussianPolicy, weights: list[float], seed: int = 0) -> CriticLoss:
    return sac_critic_loss(
        linear_critics(*ONLINE),
        linear_critics(*TARGET),
        policy,
        BATCH,
        torch.tensor(weights),
        torch.tensor(ALPHA),
        torch.Generator().manual_seed(seed),
    )


def reference_sample(
    policy: SquashedGaussianPolicy, observations: torch.Tensor, noise: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """tanh(N(mean, std)) sampled with ``noise``; its density by the textbook formula (naive tanh term)."""
    mean, log_std = policy(observations)
    std = log_std.exp()
    u = mean + std * noise
    gaussian = -0.5 * ((u - mean) / std).square() - torch.log(std) - 0.5 * math.log(2 * math.pi)
    log_prob = (gaussian - torch.log(1 - torch.tanh(u).square())).sum(dim=1)
    return torch.tanh(u), log_prob


def small_policy() -> SquashedGaussianPolicy:
    """mean(s) = 0.5 s - 0.2, log std(s) = -0.1 s + 0.3."""
    policy = SquashedGaussianPolicy((1,), 1, ())
    with torch.no_grad():
        policy.mean.weight.fill_(0.5)
        policy.mean.bias.fill_(-0.2)
        policy.log_std.weight.fill_(-0.1)
        policy.log_std.bias.fill_(0.3)
    return policy


def test_soft_targets_take_the_smaller_target_critic_and_add_the_entropy_bonus() -> None:
    result = critic_loss(KnownSamplePolicy(), [1.0, 1.0])
    torch.testing.assert_close(result.td_errors, torch.tensor(EXPECTED_TD_ERRORS))
    torch.testing.assert_close(result.loss, torch.tensor(UNWEIGHTED_LOSS))
    assert not result.td_errors.requires_grad


def test_importance_weights_scale_each_items_squared_errors() -> None:
    result = critic_loss(KnownSamplePolicy(), [0.5, 1.0])
    torch.testing.assert_close(result.loss, torch.tensor(WEIGHTED_LOSS))


def test_critic_targets_sample_the_current_policy_from_the_generator() -> None:
    policy = small_policy()
    noise = torch.randn((2, 1), generator=torch.Generator().manual_seed(5))
    next_action, next_log_prob = reference_sample(policy, BATCH.next_observation, noise)
    with torch.no_grad():
        q1, q2 = linear_critics(*TARGET)(BATCH.next_observation, next_action)
        y = BATCH.reward + BATCH.discount * (torch.minimum(q1, q2) - ALPHA * next_log_prob)
        expected_td = y - linear_critics(*ONLINE).first(BATCH.observation, BATCH.action)
    result = critic_loss(policy, [1.0, 1.0], seed=5)
    torch.testing.assert_close(result.td_errors, expected_td)
    assert all(parameter.grad is None for parameter in policy.parameters())


def test_policy_loss_is_alpha_log_pi_minus_the_smaller_critic_and_leaves_alpha_alone() -> None:
    policy = small_policy()
    critics = linear_critics(*ONLINE)
    noise = torch.randn((2, 1), generator=torch.Generator().manual_seed(9))
    action, log_prob = reference_sample(policy, BATCH.observation, noise)
    q1, q2 = critics(BATCH.observation, action)
    expected = torch.mean(ALPHA * log_prob - torch.minimum(q1, q2))
    alpha = torch.tensor(ALPHA, requires_grad=True)
    result = sac_policy_loss(policy, critics, BATCH.observation, alpha, torch.Generator().manual_seed(9))
    torch.testing.assert_close(result.loss, expected)
    torch.testing.assert_close(result.log_prob, log_prob.detach())
    torch.autograd.backward(result.loss)
    assert alpha.grad is None
    assert policy.mean.weight.grad is not None
    assert policy.log_std.weight.grad is not None


def test_temperature_shrinks_while_the_entropy_exceeds_its_target() -> None:
    # log pi = [-1, -3]: entropy estimate 2 > target -1. loss = -log alpha * mean([-2, -4]) = 3 log alpha,
    # so d loss / d log alpha = +3 and gradient descent lowers alpha.
    log_alpha = torch.tensor(math.log(ALPHA), requires_grad=True)
    loss = temperature_loss(log_alpha, torch.tensor([-1.0, -3.0]), target_entropy=-1.0)
    torch.testing.assert_close(loss, torch.tensor(3 * math.log(ALPHA)))
    torch.autograd.backward(loss)
    assert log_alpha.grad is not None
    torch.testing.assert_close(log_alpha.grad, torch.tensor(3.0))


def test_temperature_grows_while_the_entropy_falls_short_of_its_target() -> None:
    # Target 5 > entropy 2: d loss / d log alpha = -mean([4, 2]) = -3, and descent raises alpha.
    log_alpha = torch.tensor(0.0, requires_grad=True)
    log_prob = torch.tensor([-1.0, -3.0], requires_grad=True)
    torch.autograd.backward(temperature_loss(log_alpha, log_prob, target_entropy=5.0))
    assert log_alpha.grad is not None
    torch.testing.assert_close(log_alpha.grad, torch.tensor(-3.0))
    assert log_prob.grad is None  # log pi is a constant of the temperature loss
