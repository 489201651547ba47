"""The SAC losses: soft clipped double-Q critic targets, the policy's, and the temperature's."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from services.algorithms.actor_critic import ContinuousBatch, SquashedGaussianPolicy, TwinCritics

# SAC's batch is the shared actor-critic one: unit actions [B, A], n-step reward and discount.
SacBatch = ContinuousBatch


@dataclass(frozen=True)
class CriticLoss:
    """The critic loss to minimise and the TD errors that become the sampled items' new priorities."""

    loss: torch.Tensor  # scalar, differentiable with respect to the online critics only
    td_errors: torch.Tensor  # [B], detached: y - Q1(s, a)


@dataclass(frozen=True)
class PolicyLoss:
    """The policy loss, and log pi of the actions it sampled (detached) for the temperature loss."""

    loss: torch.Tensor  # scalar, differentiable with respect to the policy (and the critics)
    log_prob: torch.Tensor  # [B], detached


def sac_critic_loss(
    critics: TwinCritics,
    target_critics: TwinCritics,
    policy: SquashedGaussianPolicy,
    batch: SacBatch,
    importance_weights: torch.Tensor,
    temperature: torch.Tensor,
    generator: torch.Generator,
) -> CriticLoss:
    """Soft clipped double Q-learning (Haarnoja et al. 2018) on n-step transitions:

        a~' ~ pi(.|s')                                          (the current policy, from ``generator``)
        y    = reward + discount * (min(Q1', Q2')(s', a~') - alpha log pi(a~'|s'))     (no gradient)
        loss = mean_i w_i * [(Q1(s_i, a_i) - y_i)^2 + (Q2(s_i, a_i) - y_i)^2]

    Squared errors, importance weighted (Schaul et al. 2016) as TD3's. Only the last of the
    n steps gets an entropy bonus: the n-step reward the actor sums carries none.
    """
    batch.check(importance_weights)
    with torch.no_grad():
        next_action, next_log_prob = policy.sample(batch.next_observation, generator)
        next_q1, next_q2 = target_critics(batch.next_observation, next_action)
        soft_value = torch.minimum(next_q1, next_q2) - temperature * next_log_prob
        y = batch.reward + batch.discount * soft_value
    q1, q2 = critics(batch.observation, batch.action)
    loss = torch.mean(importance_weights * ((q1 - y).square() + (q2 - y).square()))
    return CriticLoss(loss=loss, td_errors=(y - q1).detach())


def sac_policy_loss(
    policy: SquashedGaussianPolicy,
    critics: TwinCritics,
    observation: torch.Tensor,
    temperature: torch.Tensor,
    generator: torch.Generator,
) -> PolicyLoss:
    """mean_i [alpha log pi(a~_i|s_i) - min(Q1, Q2)(s_i, a~_i)], a~ reparameterised from ``generator``.

    Not importance weighted, for TD3's reason: the weights fix the critic's regression, the
    policy may improve on any replayed states. ``temperature`` is a constant here.
    """
    action, log_prob = policy.sample(observation, generator)
    q1, q2 = critics(observation, action)
    loss = torch.mean(temperature.detach() * log_prob - torch.minimum(q1, q2))
    return PolicyLoss(loss=loss, log_prob=log_prob.detach())


def temperature_loss(
    log_temperature: torch.Tensor, log_prob: torch.Tensor, target_entropy: float
) -> torch.Tensor:
    """-mean_i log alpha * (log pi(a~_i|s_i) + H_target), with log pi held constant.

    Its gradient -mean(log pi + H_target) is positive while the policy's entropy -mean(log pi)
    exceeds the target, so alpha shrinks, and negative while it falls short, so alpha grows.
    Learning log alpha rather than alpha, as SB3 and the authors' code do, keeps alpha positive.
    """
    return -torch.mean(log_temperature * (log_prob.detach() + target_entropy))
