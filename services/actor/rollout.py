"""Stepping a set of environments together and turning their experience into n-step transitions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
from numpy.typing import NDArray

from services.actor.n_step import ENVIRONMENT, Columns, NStepBuilder
from services.algorithms.interface import ACTED, BOOTSTRAP, recorded

if TYPE_CHECKING:
    from services.datasets.actor_stream import EpisodeStream


@dataclass
class EpisodeStats:
    episodes: int = 0
    last_return: float = float("nan")


Recorded = dict[str, NDArray[Any]]
Act = Callable[[NDArray[Any]], NDArray[Any]]
ActRecorded = Callable[[NDArray[Any]], tuple[NDArray[Any], Recorded]]


class Rollout:
    """E environments in lockstep: one batched policy call per step, episodes reset as they end.

    Two learning-only signals (the standard Atari ones) change what the n-step builder sees,
    never the episodes or their returns: ``clip_rewards`` gives it ``sign(reward)``, and
    ``terminal_on_life_loss`` marks a step terminal when ``info["lives"]`` drops, so no
    return bootstraps across a lost life, while the game goes on without a reset.
    ``episodes``, where given, records the episodes as they are played, for a dataset.

    :meth:`step_recorded` also carries what the policy computed while acting to each
    transition's initial priority: ``acted.NAME`` from its observation and
    ``bootstrap.NAME`` from its next one. A transition whose next observation the next
    step acts on waits one step for it; ``record`` (the policy's) computes it for next
    observations that are never acted on (a truncated episode's last, and all of them at
    :meth:`flush`).
    """

    def __init__(
        self,
        environments: list[gym.Env[Any, Any]],
        builder: NStepBuilder,
        seed: int,
        clip_rewards: bool = False,
        terminal_on_life_loss: bool = False,
        episodes: EpisodeStream | None = None,
        record: Callable[[NDArray[Any]], Recorded] | None = None,
    ) -> None:
        self._environments = environments
        self._episodes = episodes
        self._record = record
        # The last step's transitions, waiting for this step's record of their next observations.
        self._held: _Held | None = None
        self._builder = builder
        self._clip_rewards = clip_rewards
        self._terminal_on_life_loss = terminal_on_life_loss
        self._returns = np.zeros(len(environments))
        self.stats = EpisodeStats()
        resets = [env.reset(seed=seed + index) for index, env in enumerate(environments)]
        self.observations = np.stack([observation for observation, _ in resets])
        if episodes is not None:
            episodes.begin(self.observations, [seed + index for index in range(len(environments))])
        # Lives left in each game (read only with terminal_on_life_loss); NaN: none reported, never a loss.
        self._lives = np.full(len(environments), np.nan)
        if terminal_on_life_loss:
            self._lives[:] = [_lives(info) for _, info in resets]

    @property
    def num_environments(self) -> int:
        return len(self._environments)

    def step(self, act: Act) -> Columns:
        """Acts in every environment once; returns the n-step transitions completed."""
        return self.step_recorded(lambda observations: (act(observations), {}))

    def step_recorded(self, act: ActRecorded) -> Columns:
        """As :meth:`step`, with what ``act`` recorded (one row per environment) carried along."""
        actions, acted = act(self.observations)
        completed = self._complete_held(acted)
        results = [env.step(action) for env, action in zip(self._environments, actions, strict=True)]
        next_observations = np.stack([result[0] for result in results])
        rewards = np.array([result[1] for result in results], dtype=np.float64)
        terminated = np.array([result[2] for result in results], dtype=bool)
        truncated = np.array([result[3] for result in results], dtype=bool)
        ended = terminated | truncated
        learned_terminal = terminated
        if self._terminal_on_life_loss:
            lives = np.array([_lives(result[4]) for result in results], dtype=np.float64)
            learned_terminal = terminated | (lives < self._lives)  # NaN compares False
            self._lives = lives
        transitions = self._builder.add(
            self.observations,
            actions,
            np.sign(rewards) if self._clip_rewards else rewards,
            next_observations,
            learned_terminal,
            truncated,
            acted or None,
        )
        self._returns += rewards
        if self._episodes is not None:
            self._episodes.step(actions, rewards, terminated, truncated, next_observations)
        following = next_observations.copy()
        for index in np.flatnonzero(ended):
            self.stats.episodes += 1
            self.stats.last_return = float(self._returns[index])
            self._returns[index] = 0.0
            following[index], info = self._environments[index].reset()
            if self._terminal_on_life_loss:
                self._lives[index] = _lives(info)
            if self._episodes is not None:
                self._episodes.restart(int(index), following[index])
        self.observations = following
        if not acted:
            return transitions
        self._hold(transitions, ended if (learned_terminal | truncated).any() else None, acted)
        return completed if completed is not None else _no_rows(transitions, acted)

    def _hold(self, transitions: Columns, ended: NDArray[np.bool_] | None, acted: Recorded) -> None:
        """Keeps this step's transitions until the next step records their next observations.

        Some records cannot come from there, and are fixed now: a terminal transition
        (discount 0) bootstraps from nothing, so its records are zeros, and a truncated
        one's next observation is the episode's last, never acted on: ``record`` scores it.
        ``ended`` is None when no window ended this step (most steps): then none is fixed.
        """
        envs = transitions.pop(ENVIRONMENT)
        if ended is None:
            self._held = _Held(transitions, envs, _NO_ROWS, {})
            return
        bootstraps = transitions["discount"] > 0.0
        fixed = np.flatnonzero(~bootstraps | ended[envs])
        records: Recorded = {}
        if fixed.size:
            records = {name: np.zeros((fixed.size, *v.shape[1:]), v.dtype) for name, v in acted.items()}
            truncated = np.flatnonzero(bootstraps[fixed])
            if truncated.size:
                last = transitions["next_observation"][fixed[truncated]]
                for name, values in self._recorded(last).items():
                    records[name][truncated] = values
        self._held = _Held(transitions, envs, fixed, records)

    def _complete_held(self, acted: Recorded) -> Columns | None:
        """The last step's transitions, their next observations' records taken from ``acted``."""
        held, self._held = self._held, None
        if held is None:
            return None
        columns = dict(held.columns)
        for name, values in acted.items():
            taken = values[held.envs]
            if held.fixed.size:
                taken[held.fixed] = held.records[name]
            columns[BOOTSTRAP + name] = taken
        return columns

    def _recorded(self, observations: NDArray[Any]) -> Recorded:
        if self._record is None:
            raise RuntimeError("a rollout that carries what acting recorded needs the policy's record()")
        return self._record(observations)

    def flush(self) -> Columns:
        """Every transition still pending; what acting records, computed for their next observations."""
        flushed = self._builder.flush()
        if ENVIRONMENT not in flushed:  # nothing recorded
            return flushed
        flushed.pop(ENVIRONMENT)
        parts = [] if self._held is None else [self._held.columns]
        self._held = None
        columns = _concatenate([*parts, flushed])
        terminal = columns["discount"] == 0.0
        if len(terminal):
            for name, values in self._recorded(columns["next_observation"]).items():
                values[terminal] = 0
                columns[BOOTSTRAP + name] = values
        else:
            acted = recorded(columns, ACTED)
            columns.update({BOOTSTRAP + name: values for name, values in acted.items()})
        return columns

    def close(self) -> None:
        for environment in self._environments:
            environment.close()
        if self._episodes is not None:
            self._episodes.close()


def _lives(info: dict[str, Any]) -> float:
    """The lives an environment's info reports (ale-py does), NaN when it reports none."""
    return float(info.get("lives", np.nan))


_NO_ROWS = np.empty(0, dtype=np.int64)


@dataclass(frozen=True)
class _Held:
    """A step's transitions, and the records fixed at once for rows ``fixed`` (see Rollout._hold)."""

    columns: Columns
    envs: NDArray[np.int64]
    fixed: NDArray[np.int64]
    records: Recorded


def _no_rows(transitions: Columns, acted: Recorded) -> Columns:
    """No transitions, in the columns (and shapes) of those that carry records."""
    return {
        **{name: values[:0] for name, values in transitions.items()},
        **{BOOTSTRAP + name: values[:0] for name, values in acted.items()},
    }


def _concatenate(parts: list[Columns]) -> Columns:
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
