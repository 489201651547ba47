"""N-step transitions for Ape-X, built from the lockstep experience of parallel environments."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from services.algorithms.interface import ACTED

Columns = dict[str, NDArray[Any]]


# With what acting recorded: which env each transition came from (never sent).
ENVIRONMENT = "environment"


@dataclass(frozen=True)
class _Ring:
    """The last ``n`` steps of every env; the run's step ``t`` lives in slot ``t % n`` for all envs."""

    observations: NDArray[Any]  # [n, E, *obs_shape]
    actions: NDArray[Any]  # [n, E, *action_shape]
    rewards: NDArray[np.float64]  # [n, E]
    next_observations: NDArray[Any]  # [E, *obs_shape]: the latest, which flush() bootstraps from
    acted: dict[str, NDArray[Any]]  # name -> [n, E, ...]: what acting recorded at each step


class NStepBuilder:
    """Turns the per-step experience of ``num_envs`` environments into n-step transitions.

    Every env step ``t`` yields exactly one transition covering ``m = min(n, steps left in its
    episode)`` steps, with ``reward = sum_{k<m} gamma^k r_{t+k}`` and ``discount = gamma^m`` when
    the target bootstraps from ``next_observation``, or 0 when the window reaches a terminal
    state (Horgan et al. 2018, Ape-X). An env both terminated and truncated counts as
    terminated, as in Gymnasium.

    All envs step together, so one cursor indexes the ring for every env, and env ``e``'s
    pending windows start in the ``counts[e]`` slots before the cursor. Invariant between
    calls: ``0 <= counts[e] < n``.

    What acting recorded at each step (``acted``, one row per env: Q-values, say) comes
    with the transition that starts there as ``acted.NAME``, and ``environment`` names
    the env each transition came from.
    """

    def __init__(self, num_envs: int, n_step: int, discount: float) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if n_step < 1:
            raise ValueError(f"n_step must be >= 1, got {n_step}")
        if not 0.0 <= discount <= 1.0:
            raise ValueError(f"discount must be in [0, 1], got {discount}")
        self._num_envs = num_envs
        self._n = n_step
        self._powers = discount ** np.arange(n_step + 1, dtype=np.float64)  # gamma^0 .. gamma^n
        self._counts = np.zeros(num_envs, dtype=np.int64)
        self._cursor = 0  # the slot the next step is written to
        self._ring: _Ring | None = None  # allocated by the first add, which fixes shapes and dtypes

    @property
    def pending(self) -> int:
        """Steps held that have not yet produced a transition, over all envs."""
        return int(self._counts.sum())

    def add(
        self,
        observations: NDArray[Any],
        actions: NDArray[Any],
        rewards: NDArray[Any],
        next_observations: NDArray[Any],
        terminated: NDArray[np.bool_],
        truncated: NDArray[np.bool_],
        acted: Mapping[str, NDArray[Any]] | None = None,
    ) -> Columns:
        """Record one step of every env; return the transitions it completes (possibly none).

        For an env whose episode just ended, ``next_observations`` holds its final observation;
        the caller passes the reset observation as that env's ``observations`` next time.
        """
        self._check_lengths(observations, actions, rewards, next_observations, terminated, truncated)
        ring = self._checked_ring(observations, actions, next_observations, acted or {})
        terminal = terminated.astype(np.bool_, copy=False)
        ended = terminal | truncated.astype(np.bool_, copy=False)
        slot = self._cursor
        ring.observations[slot] = observations
        ring.actions[slot] = actions
        ring.rewards[slot] = rewards
        ring.next_observations[...] = next_observations
        for name, values in (acted or {}).items():
            ring.acted[name][slot] = values
        self._cursor = (slot + 1) % self._n
        self._counts += 1
        # Full windows of running episodes bootstrap; ended envs are emitted below instead.
        full = np.flatnonzero((self._counts == self._n) & ~ended)
        bootstrap = np.zeros(full.size, dtype=np.bool_)
        chunks = [
            self._window(
                ring, full, self._cursor, self._n, next_obs=next_observations[full], terminal=bootstrap
            )
        ]
        self._counts[full] -= 1
        ended_envs = np.flatnonzero(ended)
        if ended_envs.size:
            chunks += self._drain(ring, ended_envs, slot, terminal[ended_envs], next_observations[ended_envs])
        return _concatenate(chunks)

    def flush(self) -> Columns:
        """Emit every pending window, bootstrapping from the latest next observation; clear them."""
        if self._ring is None:
            return {key: np.empty(0, dtype=np.float32) for key in _KEYS}
        envs = np.flatnonzero(self._counts)
        newest = (self._cursor - 1) % self._n
        terminal = np.zeros(envs.size, dtype=np.bool_)
        next_observations = self._ring.next_observations[envs]
        return _concatenate(self._drain(self._ring, envs, newest, terminal, next_observations))

    def _drain(
        self,
        ring: _Ring,
        envs: NDArray[np.int64],
        newest_slot: int,
        terminal: NDArray[np.bool_],
        next_observations: NDArray[Any],
    ) -> list[Columns]:
        """Emit and clear every pending window of ``envs``, looping over window lengths, not envs.

        The window starting ``j`` slots before ``newest_slot`` covers ``j + 1`` steps.
        """
        counts = self._counts[envs]
        chunks = []
        # At least one (possibly empty) chunk, so the columns keep their trailing shapes.
        for j in range(max(1, int(counts.max(initial=0)))):
            keep = counts > j
            first = (newest_slot - j) % self._n
            chunks.append(
                self._window(
                    ring, envs[keep], first, j + 1, next_obs=next_observations[keep], terminal=terminal[keep]
                )
            )
        self._counts[envs] = 0
        return chunks

    def _window(
        self,
        ring: _Ring,
        envs: NDArray[np.int64],
        first_slot: int,
        length: int,
        *,
        next_obs: NDArray[Any],
        terminal: NDArray[np.bool_],
    ) -> Columns:
        """Transitions for the windows of ``length`` steps that start at ``first_slot``, one per env."""
        slots = (first_slot + np.arange(length)) % self._n
        reward = self._powers[:length] @ ring.rewards[slots[:, None], envs[None, :]]
        discount = np.where(terminal, 0.0, self._powers[length])
        columns = {
            "observation": ring.observations[first_slot, envs],
            "action": ring.actions[first_slot, envs],
            "reward": reward.astype(np.float32),
            "discount": discount.astype(np.float32),
            "next_observation": next_obs,
        }
        if ring.acted:
            columns[ENVIRONMENT] = envs
            for name, values in ring.acted.items():
                columns[ACTED + name] = values[first_slot, envs]
        return columns

    def _check_lengths(self, *arrays: NDArray[Any]) -> None:
        """Every argument of add() has one row per env; rewards and the end flags are vectors."""
        names = ("observations", "actions", "rewards", "next_observations", "terminated", "truncated")
        for name, array in zip(names, arrays, strict=True):
            vector = name in {"rewards", "terminated", "truncated"}
            if array.ndim == 0 or array.shape[0] != self._num_envs or (vector and array.ndim != 1):
                raise ValueError(
                    f"{name} must have leading dimension num_envs={self._num_envs}: {array.shape}"
                )

    def _checked_ring(
        self,
        observations: NDArray[Any],
        actions: NDArray[Any],
        next_observations: NDArray[Any],
        acted: Mapping[str, NDArray[Any]],
    ) -> _Ring:
        """The ring, allocated on the first call; later layouts must match the first one."""
        if next_observations.shape != observations.shape or next_observations.dtype != observations.dtype:
            raise ValueError(
                f"next_observations {next_observations.shape} {next_observations.dtype} must match "
                f"observations {observations.shape} {observations.dtype}"
            )
        if self._ring is None:
            self._ring = _Ring(
                observations=np.zeros((self._n, *observations.shape), dtype=observations.dtype),
                actions=np.zeros((self._n, *actions.shape), dtype=actions.dtype),
                rewards=np.zeros((self._n, self._num_envs), dtype=np.float64),
                next_observations=np.zeros_like(observations),
                acted={
                    name: np.zeros((self._n, *values.shape), values.dtype) for name, values in acted.items()
                },
            )
        if acted.keys() != self._ring.acted.keys():
            raise ValueError(
                f"acted records {sorted(acted)}, the first add recorded {sorted(self._ring.acted)}"
            )
        for name, array, stored in (
            ("observations", observations, self._ring.next_observations),
            ("actions", actions, self._ring.actions[0]),
        ):
            if array.shape != stored.shape or array.dtype != stored.dtype:
                raise ValueError(
                    f"{name} {array.shape} {array.dtype} differ from the first add's "
                    f"{stored.shape} {stored.dtype}"
                )
        return self._ring


_KEYS = ("observation", "action", "reward", "discount", "next_observation")


def _concatenate(chunks: list[Columns]) -> Columns:
    if len(chunks) == 1:
        return chunks[0]
    return {key: np.concatenate([chunk[key] for chunk in chunks]) for key in chunks[0]}
