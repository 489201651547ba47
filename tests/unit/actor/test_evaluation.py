"""Greedy evaluation episodes played in lockstep give each episode's own return."""

from __future__ import annotations

import threading

import gymnasium as gym
import numpy as np
import torch

from services.actor.evaluator import play_deterministic_episodes
from services.algorithms.apex_dqn.acting import DqnPolicy, greedy_actions
from services.algorithms.apex_dqn.config import DqnNetworkConfig
from services.algorithms.apex_dqn.networks import QNetwork


def network(seed: int) -> QNetwork:
    torch.manual_seed(seed)
    q_network = QNetwork(DqnNetworkConfig(kind="mlp", hidden_sizes=(16,), dueling=True), (4,), 2)
    q_network.eval()
    return q_network


def one_at_a_time(q_network: QNetwork, episodes: int, seed: int) -> list[float]:
    environment = gym.make("CartPole-v1")
    returns = []
    for episode in range(episodes):
        observation, _ = environment.reset(seed=seed + episode)
        total, done = 0.0, False
        while not done:
            action = int(greedy_actions(q_network, observation[None])[0])
            observation, reward, terminated, truncated, _ = environment.step(action)
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    return returns


def test_lockstep_returns_equal_episodes_played_one_at_a_time() -> None:
    for seed in range(3):
        q_network = network(seed)
        environments = [gym.make("CartPole-v1") for _ in range(6)]
        lockstep = play_deterministic_episodes(DqnPolicy(q_network), environments, seed=100 * seed)
        assert lockstep == one_at_a_time(q_network, 6, seed=100 * seed)
        # Episodes of different lengths, so the lockstep loop really drops finished ones.
        assert len(set(lockstep)) > 1


def test_a_stop_request_returns_no_partial_evaluation() -> None:
    stop = threading.Event()
    stop.set()
    environments = [gym.make("CartPole-v1") for _ in range(3)]
    assert play_deterministic_episodes(DqnPolicy(network(0)), environments, seed=0, stop=stop) == []
    assert np.isfinite(play_deterministic_episodes(DqnPolicy(network(0)), environments, seed=0)).all()
