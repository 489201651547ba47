"""The Ape-X double-Q loss against values computed by hand, and the priorities derived from it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from services.algorithms.apex_dqn.losses import DqnBatch, double_q_loss
from services.algorithms.prioritized import priorities_from_td


def linear_q(weight: list[list[float]]) -> nn.Linear:
    """Q(s) = W s with no bias, so every Q-value below is a dot product done by hand."""
    network = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        network.weight.copy_(torch.tensor(weight))
    return network


# Online Q(s) = s. Target Q(s) = [2 s_0, 0.5 s_1].
ONLINE_WEIGHT = [[1.0, 0.0], [0.0, 1.0]]
TARGET_WEIGHT = [[2.0, 0.0], [0.0, 0.5]]

# Item 0: Q_online(s', .) = [1, 2] picks a* = 1, Q_target(s', 1) = 1, y = 1 + 0.9 * 1 = 1.9,
#         Q_online(s, 0) = 1, td = 0.9 (|td| <= 1: huber = 0.5 * 0.81 = 0.405).
#         Vanilla DQN would take max Q_target(s', .) = 2 instead, giving y = 2.8 and td = 1.8.
# Item 1: terminal, discount 0 so y = reward = 3 whatever s' is; Q_online(s, 1) = 1,
#         td = 2.0 (|td| > 1: huber = 1 * (2 - 0.5) = 1.5).
# Item 2: Q_online(s', .) = [3, 1] picks a* = 0, Q_target(s', 0) = 6, y = -1.5 + 0.5 * 6 = 1.5,
#         Q_online(s, 0) = 2, td = -0.5 (huber = 0.5 * 0.25 = 0.125).
BATCH = DqnBatch(
    observation=torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0]]),
    action=torch.tensor([0, 1, 0]),
    reward=torch.tensor([1.0, 3.0, -1.5]),
    discount=torch.tensor([0.9, 0.0, 0.5]),
    next_observation=torch.tensor([[1.0, 2.0], [5.0, 5.0], [3.0, 1.0]]),
)
IMPORTANCE_WEIGHTS = torch.tensor([0.5, 1.0, 0.25])
# loss = (0.5 * 0.405 + 1.0 * 1.5 + 0.25 * 0.125) / 3 = (0.2025 + 1.5 + 0.03125) / 3 = 1.73375 / 3
EXPECTED_LOSS = 0.5779166666666667
EXPECTED_TD_ERRORS = [0.9, 2.0, -0.5]
# dloss/dW[a_i] = -(1/3) * w_i * huber'(td_i) * s_i, with huber'(td) = td if |td| <= 1 else sign(td):
#   item 0 -> row 0: -(1/3) * 0.5 * 0.9 * [1, 0]    = [-0.15, 0]
#   item 1 -> row 1: -(1/3) * 1.0 * 1.0 * [0, 1]    = [0, -1/3]
#   item 2 -> row 0: -(1/3) * 0.25 * -0.5 * [2, 1]  = [1/12, 1/24]
EXPECTED_ONLINE_GRADIENT = [[-0.15 + 1 / 12, 1 / 24], [0.0, -1 / 3]]


def test_loss_and_td_errors_match_the_hand_computed_double_q_targets() -> None:
    result = double_q_loss(linear_q(ONLINE_WEIGHT), linear_q(TARGET_WEIGHT), BATCH, IMPORTANCE_WEIGHTS)
    torch.testing.assert_close(result.td_errors, torch.tensor(EXPECTED_TD_ERRORS))
    torch.testing.assert_close(result.loss, torch.tensor(EXPECTED_LOSS))
    assert result.loss.shape == ()
    assert not result.td_errors.requires_grad


def test_gradients_flow_into_the_online_network_only() -> None:
    online = linear_q(ONLINE_WEIGHT)
    target = linear_q(TARGET_WEIGHT)
    assert target.weight.requires_grad  # so a missing no_grad around the target would show below
    torch.autograd.backward(double_q_loss(online, target, BATCH, IMPORTANCE_WEIGHTS).loss)
    assert target.weight.grad is None
    assert online.weight.grad is not None
    torch.testing.assert_close(online.weight.grad, torch.tensor(EXPECTED_ONLINE_GRADIENT))


def test_huber_delta_moves_the_quadratic_to_linear_boundary() -> None:
    # delta = 0.5: |0.9| and |2.0| are now linear, 0.5 * (0.9 - 0.25) = 0.325 and 0.5 * (2 - 0.25) = 0.875;
    # |-0.5| sits on the boundary, still quadratic: 0.125.
    # loss = (0.5 * 0.325 + 1.0 * 0.875 + 0.25 * 0.125) / 3 = (0.1625 + 0.875 + 0.03125) / 3 = 1.06875 / 3
    result = double_q_loss(
        linear_q(ONLINE_WEIGHT), linear_q(TARGET_WEIGHT), BATCH, IMPORTANCE_WEIGHTS, huber_delta=0.5
    )
    torch.testing.assert_close(result.loss, torch.tensor(0.35625))


def test_importance_weights_of_the_wrong_shape_are_rejected_instead_of_broadcast() -> None:
    with pytest.raises(ValueError, match=r"importance_weights must have shape \[3\], got \[3, 1\]"):
        double_q_loss(
            linear_q(ONLINE_WEIGHT), linear_q(TARGET_WEIGHT), BATCH, IMPORTANCE_WEIGHTS.unsqueeze(1)
        )


def test_priorities_are_absolute_td_errors_plus_epsilon_as_float64() -> None:
    priorities = priorities_from_td(torch.tensor([2.0, -0.5, 0.0], requires_grad=True))
    assert priorities.dtype == np.float64
    np.testing.assert_allclose(priorities, [2.000001, 0.500001, 1e-6], rtol=1e-12)
