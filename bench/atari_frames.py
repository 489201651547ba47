"""Real Pong transitions from a random policy, built and compressed the way actors build and send them."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from services.actor.n_step import NStepBuilder
from services.actor.rollout import Rollout
from services.common.encoded import Column, compress
from services.common.environments import AtariSettings, make_environment

PONG = "ALE/Pong-v5"
PONG_OPTIONS = {"repeat_action_probability": 0.0, "full_action_space": False}
FRAME_STACK = 4
N_STEP = 3
DISCOUNT = 0.99


def make_pong() -> Any:
    """The pong preset's environment: the standard preprocessing, 4 frames stacked."""
    return make_environment(PONG, PONG_OPTIONS, FRAME_STACK, AtariSettings())


def pong_transitions(count: int, seed: int, environments: int = 4) -> dict[str, NDArray[Any]]:
    """``count`` n-step transitions (raw columns) of random play, as the pong preset's actors make them."""
    games = [make_pong() for _ in range(environments)]
    rollout = Rollout(
        games,
        NStepBuilder(environments, N_STEP, DISCOUNT),
        seed,
        clip_rewards=True,
        terminal_on_life_loss=True,
    )
    rng = np.random.default_rng(seed)
    actions = int(games[0].action_space.n)
    parts: list[dict[str, NDArray[Any]]] = []
    held = 0
    try:
        while held < count:
            part = rollout.step(lambda observations: rng.integers(0, actions, len(observations)))
            if len(part["reward"]):
                parts.append(part)
                held += len(part["reward"])
    finally:
        rollout.close()
    return {name: np.concatenate([part[name] for part in parts])[:count] for name in parts[0]}


def as_inserted(columns: dict[str, NDArray[Any]]) -> dict[str, Column]:
    """The columns as an actor sends them: observation columns compressed, each item on its own."""
    sent: dict[str, Column] = dict(columns)
    for name in ("observation", "next_observation"):
        sent[name] = compress(columns[name])
    return sent
