"""Deterministic episodes with their returns and lengths, and the statistics of several."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from numpy.typing import NDArray

from services.algorithms.interface import ActingPolicy
from services.datasets.episodes import EpisodeTrace, RecordedEpisode
from services.evaluation.recording import VideoWriter


@dataclass(frozen=True)
class Episode:
    seed: int
    episode_return: float  # undiscounted, the environment's own rewards
    length: int  # steps
    recorded: RecordedEpisode | None = None  # every step, where asked for


@dataclass(frozen=True)
class Statistics:
    mean: float
    std: float  # of the values themselves (ddof 0)
    min: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Statistics:
        array = np.asarray(values, dtype=np.float64)
        return cls(float(array.mean()), float(array.std()), float(array.min()), float(array.max()))


def play_episodes(
    policy: ActingPolicy,
    environments: Sequence[gym.Env[Any, Any]],
    seeds: Sequence[int],
    max_steps: int | None = None,
    videos: Sequence[VideoWriter] | None = None,
    act: Callable[[NDArray[Any]], NDArray[Any]] | None = None,
    record: bool = False,
) -> list[Episode]:
    """One episode per environment (environment i reset with ``seeds[i]``), in lockstep.

    Each step is one forward pass over the episodes still running, as the evaluator plays
    them: ``act``, by default the policy's deterministic actions. An episode ends when its
    environment terminates or truncates it, or after ``max_steps`` steps (recorded as a
    truncation). ``videos[i]`` gets environment i's rendered frame after the reset and after
    each step; ``record`` keeps every step of each episode in ``Episode.recorded``.
    """
    act = act or policy.act_deterministic
    observations = [
        environment.reset(seed=seed)[0] for environment, seed in zip(environments, seeds, strict=True)
    ]
    traces = [EpisodeTrace(observation, seed) for observation, seed in zip(observations, seeds, strict=True)]
    if videos is not None:
        for video, environment in zip(videos, environments, strict=True):
            video.add(environment.render())
    returns = [0.0] * len(environments)
    lengths = [0] * len(environments)
    running = list(range(len(environments)))
    while running:
        actions = act(np.stack([observations[i] for i in running]))
        still_running = []
        for i, action in zip(running, actions, strict=True):
            observations[i], reward, terminated, truncated, _ = environments[i].step(action)
            returns[i] += float(reward)
            lengths[i] += 1
            if record:
                traces[i].add(action, float(reward), terminated, truncated, observations[i])
            if videos is not None:
                videos[i].add(environments[i].render())
            if not (terminated or truncated or (max_steps is not None and lengths[i] >= max_steps)):
                still_running.append(i)
        running = still_running
    return [
        Episode(seed, returns[i], lengths[i], traces[i].finish(truncated=True) if record else None)
        for i, seed in enumerate(seeds)
    ]
