"""Acting: epsilon-greedy frequencies and the actor's initial priorities."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from services.algorithms.apex_dqn.acting import epsilon_greedy, greedy_actions, initial_priorities
from services.algorithms.apex_dqn.config import DqnNetworkConfig
from services.algorithms.apex_dqn.networks import QNetwork


def linear_network() -> QNetwork:
    network = QNetwork(DqnNetworkConfig(kind="mlp", hidden_sizes=(), dueling=False), (2,), 2)
    with torch.no_grad():
        network.head.weight.copy_(torch.eye(2))  # type: ignore[operator]
        network.head.bias.zero_()  # type: ignore[operator]
    return network


def test_greedy_actions_take_the_largest_q_value() -> None:
    network = linear_network()
    observations = np.array([[1.0, 0.0], [0.0, 2.0]], dtype=np.float32)
    assert greedy_actions(network, observations).tolist() == [0, 1]


def test_epsilon_greedy_explores_with_probability_epsilon() -> None:
    network = linear_network()
    observations = np.tile(np.array([[1.0, 0.0]], dtype=np.float32), (20_000, 1))
    actions = epsilon_greedy(network, observations, 0.3, np.random.default_rng(0))
    # Action 1 only comes from exploring, half the time: p = 0.15; 6 sigma tolerance.
    share = float(np.mean(actions == 1))
    assert abs(share - 0.15) <= 6 * np.sqrt(0.15 * 0.85 / 20_000)


def test_initial_priorities_are_the_absolute_n_step_double_q_error() -> None:
    network = linear_network()
    columns = {
        "observation": np.array([[1.0, 0.5], [0.2, 0.4]], dtype=np.float32),
        "action": np.array([0, 1]),
        "reward": np.array([1.0, -1.0], dtype=np.float32),
        "discount": np.array([0.5, 0.0], dtype=np.float32),
        "next_observation": np.array([[3.0, 1.0], [9.0, 9.0]], dtype=np.float32),
    }
    # Q(s, a) = s[a]; y = r + discount * max(s'):
    # item 0: y = 1 + 0.5 * 3 = 2.5, Q = 1.0 -> 1.5; item 1: y = -1 (terminal), Q = 0.4 -> 1.4.
    priorities = initial_priorities(network, columns)
    np.testing.assert_allclose(priorities, [1.5 + 1e-6, 1.4 + 1e-6], rtol=1e-6)
    assert priorities.dtype == np.float64
    assert priorities.min() > 0
    with pytest.raises(KeyError):
        initial_priorities(network, {"observation": columns["observation"]})
