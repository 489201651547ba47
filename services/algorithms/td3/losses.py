"""The TD3 losses: clipped double-Q critic targets with target policy smoothing, and the policy's."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from services.algorithms.actor_critic import ContinuousBatch, TwinCritics
from services.algorithms.data_parallel import batch_noise

# TD3's batch is the shared actor-critic one: unit actions [B, A], n-step reward and discount.
Td3Batch = ContinuousBatch


@dataclass(frozen=True)
class TargetSmoothing:
    """Target policy smoothing noise, in unit action space: N(0, noise^2) clipped to [-clip, clip]."""

    noise: float
    clip: float


@dataclass(frozen=True)
class CriticLoss:
    """The critic loss to minimise and the TD errors that become the sampled items' new priorities."""

    loss: torch.Tensor  # scalar, differentiable with respect to the online critics only
    td_errors: torch.Tensor  # [B], detached: y - Q1(s, a)


def smoothed_target_actions(
    target_policy: nn.Module,
    next_observation: torch.Tensor,
    smoothing: TargetSmoothing,
    generator: torch.Generator,
) -> torch.Tensor:
    """a~' = clip(pi'(s') + clip(noise, -c, c), -1, 1), noise ~ N(0, sigma^2) drawn from ``generator``.

    Drawn even when sigma is 0, so the generator's stream does not depend on the settings.
    """
    action: torch.Tensor = target_policy(next_observation)
    noise = batch_noise(action.shape, generator, action.dtype, action.device)
    noise = (noise * smoothing.noise).clamp(-smoothing.clip, smoothing.clip)
    return (action + noise).clamp(-1.0, 1.0)


def td3_critic_loss(
    critics: TwinCritics,
    target_policy: nn.Module,
    target_critics: TwinCritics,
    batch: Td3Batch,
    importance_weights: torch.Tensor,
    smoothing: TargetSmoothing,
    generator: torch.Generator,
) -> CriticLoss:
    """Clipped double Q-learning (Fujimoto et al. 2018, algorithm 1) on n-step transitions:

        y    = reward + discount * min(Q1', Q2')(s', a~')      (no gradient; discount = gamma^n or 0)
        loss = mean_i w_i * [(Q1(s_i, a_i) - y_i)^2 + (Q2(s_i, a_i) - y_i)^2]

    Squared errors as in the paper (no Huber), each weighted by its importance weight
    (Schaul et al. 2016) to undo the bias of sampling by priority. The min of two critics
    curbs the overestimation a deterministic policy would otherwise climb.
    """
    batch.check(importance_weights)
    with torch.no_grad():
        next_action = smoothed_target_actions(target_policy, batch.next_observation, smoothing, generator)
        next_q1, next_q2 = target_critics(batch.next_observation, next_action)
        y = batch.reward + batch.discount * torch.minimum(next_q1, next_q2)
    q1, q2 = critics(batch.observation, batch.action)
    loss = torch.mean(importance_weights * ((q1 - y).square() + (q2 - y).square()))
    return CriticLoss(loss=loss, td_errors=(y - q1).detach())


def td3_policy_loss(policy: nn.Module, critics: TwinCritics, observation: torch.Tensor) -> torch.Tensor:
    """The deterministic policy gradient's objective: -mean_i Q1(s_i, pi(s_i)) (Silver et al. 2014).

    Not importance weighted: the weights correct the bias that sampling by priority puts
    into the critic's regression (its fixed point), while the policy only needs to climb Q
    on replayed states, and off-policy the state distribution is a free choice anyway;
    weighting would merely shrink its steps on the states whose values are being revised.
    """
    q1: torch.Tensor = critics.first(observation, policy(observation))
    return -q1.mean()
