"""Acting with the local Q network: epsilon-greedy actions and Ape-X initial priorities."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from services.algorithms.apex_dqn.networks import QNetwork
from services.algorithms.interface import Columns, ExplorationSetting, Parameters
from services.algorithms.prioritized import priorities_from_td


def greedy_actions(network: QNetwork, observations: NDArray[Any]) -> NDArray[np.int64]:
    with torch.inference_mode():
        q_values = network(torch.from_numpy(np.asarray(observations)))
    actions: NDArray[np.int64] = q_values.argmax(dim=1).numpy().astype(np.int64)
    return actions


def epsilon_greedy(
    network: QNetwork, observations: NDArray[Any], epsilon: float, rng: np.random.Generator
) -> NDArray[np.int64]:
    """Each env independently takes a uniformly random action with probability epsilon."""
    actions = greedy_actions(network, observations)
    explore = np.less(rng.random(actions.shape[0]), epsilon)
    if explore.any():
        actions[explore] = rng.integers(0, network.num_actions, int(explore.sum()))
    return actions


def initial_priorities(network: QNetwork, columns: Columns) -> NDArray[np.float64]:
    """|n-step double-Q TD error| under the actor's own network, as Ape-X actors compute them.

    The actor holds one network, so it is both online and target here:
    y = reward + discount * Q(s', argmax_a Q(s', a)), priority = |y - Q(s, a)| + epsilon.
    """
    observations = torch.from_numpy(np.concatenate([columns["observation"], columns["next_observation"]]))
    count = columns["observation"].shape[0]
    with torch.inference_mode():
        q_values = network(observations)
    q_taken = q_values[:count].gather(1, torch.from_numpy(columns["action"]).long()[:, None]).squeeze(1)
    next_values = q_values[count:].max(dim=1).values
    reward = torch.from_numpy(columns["reward"]).float()
    discount = torch.from_numpy(columns["discount"]).float()
    return priorities_from_td(reward + discount * next_values - q_taken)


class DqnPolicy:
    """An actor's or evaluator's copy of the Q network."""

    def __init__(self, network: QNetwork) -> None:
        self.network = network.eval()

    def load_parameters(self, parameters: Parameters) -> None:
        self.network.load_state_dict(parameters)

    def act(
        self, observations: NDArray[Any], exploration: ExplorationSetting, rng: np.random.Generator
    ) -> NDArray[np.int64]:
        return epsilon_greedy(self.network, observations, exploration.value, rng)

    def act_deterministic(self, observations: NDArray[Any]) -> NDArray[np.int64]:
        return greedy_actions(self.network, observations)

    def initial_priorities(self, columns: Columns) -> NDArray[np.float64]:
        return initial_priorities(self.network, columns)
