"""Acting with the local Q network: epsilon-greedy actions and Ape-X initial priorities."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from services.algorithms.apex_dqn.networks import QNetwork
from services.algorithms.interface import ACTED, BOOTSTRAP, Columns, ExplorationSetting, Parameters, recorded
from services.algorithms.prioritized import priorities_of


def q_values_of(network: QNetwork, observations: NDArray[Any]) -> NDArray[np.float32]:
    with torch.inference_mode():
        q_values: NDArray[np.float32] = network(torch.from_numpy(np.asarray(observations))).numpy()
    return q_values


def greedy_actions(network: QNetwork, observations: NDArray[Any]) -> NDArray[np.int64]:
    actions: NDArray[np.int64] = q_values_of(network, observations).argmax(axis=1)
    return actions


def explore(
    actions: NDArray[np.int64], num_actions: int, epsilon: float, rng: np.random.Generator
) -> NDArray[np.int64]:
    """Each env independently takes a uniformly random action with probability epsilon (in place)."""
    exploring = np.less(rng.random(actions.shape[0]), epsilon)
    if exploring.any():
        actions[exploring] = rng.integers(0, num_actions, int(exploring.sum()))
    return actions


def epsilon_greedy(
    network: QNetwork, observations: NDArray[Any], epsilon: float, rng: np.random.Generator
) -> NDArray[np.int64]:
    return explore(greedy_actions(network, observations), network.num_actions, epsilon, rng)


def _values(q_values: NDArray[np.float32]) -> NDArray[np.float32]:
    """max_a Q(s, a): the actor's one network is online and target, so double Q's bootstrap."""
    values: NDArray[np.float32] = q_values.max(axis=1)
    return values


def initial_priorities(network: QNetwork, columns: Columns) -> NDArray[np.float64]:
    """|n-step double-Q TD error| under the actor's own network, as Ape-X actors compute them.

    The actor holds one network, so it is both online and target here:
    y = reward + discount * Q(s', argmax_a Q(s', a)), priority = |y - Q(s, a)| + epsilon.
    Where ``columns`` carry the Q-values acting computed (``acted.q`` at s and
    ``bootstrap.q`` at s', every action's), no forward pass is needed.
    """
    acted, bootstrap = recorded(columns, ACTED), recorded(columns, BOOTSTRAP)
    if "q" in acted and "q" in bootstrap:
        actions = columns["action"].astype(np.int64)[:, None]
        q_taken = np.take_along_axis(acted["q"], actions, axis=1)[:, 0]
        next_values = _values(bootstrap["q"])
    else:
        count = columns["observation"].shape[0]
        q_values = q_values_of(network, np.concatenate([columns["observation"], columns["next_observation"]]))
        q_taken = q_values[np.arange(count), columns["action"].astype(np.int64)]
        next_values = _values(q_values[count:])
    td = columns["reward"].astype(np.float32) + columns["discount"].astype(np.float32) * next_values - q_taken
    return priorities_of(td)


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

    def act_recorded(
        self, observations: NDArray[Any], exploration: ExplorationSetting, rng: np.random.Generator
    ) -> tuple[NDArray[np.int64], dict[str, NDArray[Any]]]:
        """Epsilon-greedy actions, and the Q-values of every action (Ape-X's own).

        Q(s, a) of the action taken and max_a Q(s, a) are read from them once per batch,
        when its initial priorities are computed, not at every step.
        """
        q_values = q_values_of(self.network, observations)
        actions: NDArray[np.int64] = q_values.argmax(axis=1)
        explore(actions, self.network.num_actions, exploration.value, rng)
        return actions, {"q": q_values}

    def record(self, observations: NDArray[Any]) -> dict[str, NDArray[Any]]:
        """The Q-values of observations never acted on."""
        return {"q": q_values_of(self.network, observations)}

    def initial_priorities(self, columns: Columns) -> NDArray[np.float64]:
        return initial_priorities(self.network, columns)
