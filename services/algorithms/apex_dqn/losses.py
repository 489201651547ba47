"""The Ape-X DQN loss: n-step double Q-learning TD errors, Huber-weighted by importance sampling."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class DqnBatch:
    """A batch of n-step transitions as the replay returns them, already on the learner's device."""

    observation: torch.Tensor  # [B, ...]
    action: torch.Tensor  # [B] int64
    reward: torch.Tensor  # [B] float32, the n-step discounted return sum_{k<n} gamma^k r_{t+k}
    discount: torch.Tensor  # [B] float32, gamma^n, or 0 when the episode ended within the n steps
    next_observation: torch.Tensor  # [B, ...], the state n steps later


@dataclass(frozen=True)
class DqnLoss:
    """The loss to minimise and the TD errors that become the sampled items' new priorities."""

    loss: torch.Tensor  # scalar, differentiable with respect to the online network only
    td_errors: torch.Tensor  # [B], detached: target - Q_online(s, a)


def huber(x: torch.Tensor, delta: float) -> torch.Tensor:
    """Elementwise 0.5 x^2 if |x| <= delta else delta (|x| - 0.5 delta): quadratic near 0, linear beyond."""
    magnitude = x.abs()
    return torch.where(magnitude <= delta, 0.5 * x.square(), delta * (magnitude - 0.5 * delta))


def _check_batch(batch: DqnBatch, importance_weights: torch.Tensor) -> None:
    """Per-item tensors must be exactly [B]: a [B, 1] weight would broadcast to [B, B] silently."""
    batch_size = batch.observation.shape[0]
    per_item = {
        "action": batch.action,
        "reward": batch.reward,
        "discount": batch.discount,
        "importance_weights": importance_weights,
    }
    for name, tensor in per_item.items():
        if tensor.shape != (batch_size,):
            raise ValueError(f"{name} must have shape [{batch_size}], got {list(tensor.shape)}")
    if batch.next_observation.shape != batch.observation.shape:
        raise ValueError(
            f"next_observation shape {list(batch.next_observation.shape)} differs from "
            f"observation shape {list(batch.observation.shape)}"
        )


def double_q_loss(
    online: nn.Module,
    target: nn.Module,
    batch: DqnBatch,
    importance_weights: torch.Tensor,
    huber_delta: float = 1.0,
) -> DqnLoss:
    """Prioritized n-step double DQN loss of Ape-X (Horgan et al. 2018).

    Double Q-learning (van Hasselt et al. 2016) picks the next action with the online network
    and evaluates it with the target network, which curbs the max operator's overestimation:

        a* = argmax_a Q_online(s', a)
        y  = reward + discount * Q_target(s', a*)      (no gradient; discount = gamma^n or 0)
        td = y - Q_online(s, a)
        loss = mean_i(importance_weights_i * huber(td_i, huber_delta))

    The importance weights (Schaul et al. 2016) correct the bias of sampling by priority.
    """
    _check_batch(batch, importance_weights)
    with torch.no_grad():
        next_action = torch.argmax(online(batch.next_observation), dim=1, keepdim=True)
        next_q = target(batch.next_observation).gather(1, next_action).squeeze(1)
        y = batch.reward + batch.discount * next_q
    q = online(batch.observation).gather(1, batch.action.unsqueeze(1)).squeeze(1)
    td = y - q
    loss = torch.mean(importance_weights * huber(td, huber_delta))
    return DqnLoss(loss=loss, td_errors=td.detach())
