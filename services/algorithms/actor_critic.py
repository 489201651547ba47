"""What the actor-critic families (TD3, SAC) share: networks, batches, target updates, actors' copies.

Published parameters are named ``policy.*`` (the policy network) and ``critic.*`` (the
first online critic, which actors score their experience with); acting needs the policy
alone. Policies and critics work in unit action space, see ``actions.py``. The network
settings (``ActorCriticNetworkConfig``) are torch-free, in ``actor_critic_config.py``.
"""

from __future__ import annotations

import copy
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from services.algorithms.actions import ActionScaler
from services.algorithms.data_parallel import batch_noise
from services.algorithms.interface import BOOTSTRAP, Columns, ExplorationSetting, Parameters, recorded
from services.algorithms.prioritized import priorities_from_td
from services.algorithms.torsos import MlpTorso, fully_connected
from services.algorithms.training_state import prefixed, to_device

# The log-std range of SAC's reference implementation (Haarnoja et al. 2018) and of SB3:
# std in [2e-9, 7.4], wide enough never to bind in practice, narrow enough to keep exp finite.
LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0
_LOG_2 = math.log(2.0)
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)

M = TypeVar("M", bound=nn.Module)
PolicyT = TypeVar("PolicyT", bound=nn.Module)


class Critic(nn.Module):
    """Q(s, a): fully connected layers on concat(observation flattened to float32, unit action)."""

    def __init__(
        self, observation_shape: tuple[int, ...], action_size: int, hidden_sizes: tuple[int, ...]
    ) -> None:
        super().__init__()
        in_features = math.prod(observation_shape) + action_size
        self.action_size = action_size
        self.layers = nn.Sequential(fully_connected(in_features, hidden_sizes))
        self.head = nn.Linear(hidden_sizes[-1] if hidden_sizes else in_features, 1)

    def forward(self, observations: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """[B, *observation_shape], [B, action_size] unit actions -> [B] Q-values."""
        if actions.ndim != 2 or actions.shape[1] != self.action_size:
            raise ValueError(f"expected actions of shape [B, {self.action_size}], got {list(actions.shape)}")
        inputs = torch.cat([observations.to(torch.float32).flatten(start_dim=1), actions], dim=1)
        q_values: torch.Tensor = self.head(self.layers(inputs))
        return q_values.squeeze(1)


class TwinCritics(nn.Module):
    """Two independently initialised critics, for the clipped double-Q targets of TD3 and SAC."""

    def __init__(
        self, observation_shape: tuple[int, ...], action_size: int, hidden_sizes: tuple[int, ...]
    ) -> None:
        super().__init__()
        self.first = Critic(observation_shape, action_size, hidden_sizes)
        self.second = Critic(observation_shape, action_size, hidden_sizes)

    def forward(self, observations: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.first(observations, actions), self.second(observations, actions)


class DeterministicPolicy(nn.Module):
    """TD3's pi(s) = tanh(W h(s) + b): an MLP torso and a linear head squashed into [-1, 1]."""

    def __init__(
        self, observation_shape: tuple[int, ...], action_size: int, hidden_sizes: tuple[int, ...]
    ) -> None:
        super().__init__()
        self.torso = MlpTorso(observation_shape, hidden_sizes)
        self.head = nn.Linear(self.torso.output_size, action_size)

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.head(self.torso(observations)))


def squashed_sample(
    mean: torch.Tensor, log_std: torch.Tensor, noise: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """a = tanh(u), u = mean + std * noise, and log pi(a|s), summed over action dimensions.

    Change of variables (Haarnoja et al. 2018, appendix C): log pi(a) = log N(u; mean, std)
    - sum log(1 - tanh(u)^2), with log N = -noise^2 / 2 - log std - log sqrt(2 pi) and the
    correction in the overflow-free form log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u)).
    """
    u = mean + log_std.exp() * noise
    gaussian = -0.5 * noise.square() - log_std - _LOG_SQRT_2PI
    correction = 2.0 * (_LOG_2 - u - nn.functional.softplus(-2.0 * u))
    return torch.tanh(u), (gaussian - correction).sum(dim=1)


class SquashedGaussianPolicy(nn.Module):
    """SAC's policy: tanh of a Gaussian whose mean and log-std heads share one MLP torso."""

    def __init__(
        self, observation_shape: tuple[int, ...], action_size: int, hidden_sizes: tuple[int, ...]
    ) -> None:
        super().__init__()
        self.torso = MlpTorso(observation_shape, hidden_sizes)
        self.mean = nn.Linear(self.torso.output_size, action_size)
        self.log_std = nn.Linear(self.torso.output_size, action_size)

    def forward(self, observations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-std (clamped to [LOG_STD_MIN, LOG_STD_MAX]) of u, each [B, action_size]."""
        features = self.torso(observations)
        log_std = self.log_std(features).clamp(LOG_STD_MIN, LOG_STD_MAX)
        return self.mean(features), log_std

    def sample(
        self, observations: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterised a ~ pi(.|s) with noise ~ N(0, 1) drawn from ``generator``, and log pi(a|s)."""
        mean, log_std = self(observations)
        noise = batch_noise(mean.shape, generator, mean.dtype, mean.device)
        return squashed_sample(mean, log_std, noise)

    def deterministic(self, observations: torch.Tensor) -> torch.Tensor:
        """tanh(mean): the evaluation action."""
        return torch.tanh(self(observations)[0])


@dataclass(frozen=True)
class ContinuousBatch:
    """n-step transitions with unit-space actions, on the learner's device (TD3's and SAC's batch)."""

    observation: torch.Tensor  # [B, ...]
    action: torch.Tensor  # [B, A] float32 in [-1, 1]: the replay's environment actions, mapped back
    reward: torch.Tensor  # [B] float32, the n-step discounted return sum_{k<n} gamma^k r_{t+k}
    discount: torch.Tensor  # [B] float32, gamma^n, or 0 when the episode ended within the n steps
    next_observation: torch.Tensor  # [B, ...], the state n steps later

    def check(self, importance_weights: torch.Tensor) -> None:
        """Per-item tensors must be exactly [B]: a [B, 1] one would broadcast to [B, B] silently."""
        size = self.observation.shape[0]
        per_item = {
            "reward": self.reward,
            "discount": self.discount,
            "importance_weights": importance_weights,
        }
        for name, tensor in per_item.items():
            if tensor.shape != (size,):
                raise ValueError(f"{name} must have shape [{size}], got {list(tensor.shape)}")
        if self.action.ndim != 2 or self.action.shape[0] != size:
            raise ValueError(f"action must have shape [{size}, A], got {list(self.action.shape)}")
        if self.next_observation.shape != self.observation.shape:
            raise ValueError(
                f"next_observation shape {list(self.next_observation.shape)} differs from "
                f"observation shape {list(self.observation.shape)}"
            )


def batch_from_columns(columns: Columns, scaler: ActionScaler, device: torch.device) -> ContinuousBatch:
    """A sampled batch on ``device``, its environment-scale actions mapped back to unit space."""
    return ContinuousBatch(
        observation=to_device(columns["observation"], device),
        action=to_device(scaler.unit_batch(columns["action"]), device, torch.float32),
        reward=to_device(columns["reward"], device, torch.float32),
        discount=to_device(columns["discount"], device, torch.float32),
        next_observation=to_device(columns["next_observation"], device),
    )


def frozen_copy(module: M) -> M:
    """A target network: an exact copy that no optimizer or backward pass touches."""
    target = copy.deepcopy(module)
    target.requires_grad_(False)
    return target


def polyak_update(target: nn.Module, online: nn.Module, rate: float) -> None:
    """theta_target <- (1 - tau) theta_target + tau theta_online (Lillicrap et al. 2016)."""
    with torch.no_grad():
        for target_parameter, online_parameter in zip(target.parameters(), online.parameters(), strict=True):
            target_parameter.lerp_(online_parameter, rate)


def sampling_generator(seed: int, device: torch.device) -> torch.Generator:
    """The learner's own noise stream, independent of the stream seeded() initialises weights from."""
    stream_seed = int(np.random.SeedSequence((seed, 1)).generate_state(1, np.uint64)[0])
    return torch.Generator(device=device).manual_seed(stream_seed)


def published(policy: nn.Module, critic: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """Parameters as actors receive them: ``policy.*``, and ``critic.*`` when a critic is given."""
    tensors = {f"policy.{name}": value for name, value in policy.state_dict().items()}
    if critic is not None:
        tensors.update({f"critic.{name}": value for name, value in critic.state_dict().items()})
    return tensors


class ActorCriticPolicy(ABC, Generic[PolicyT]):
    """An actor's copy of the policy and of one critic; subclasses add how they explore."""

    def __init__(self, policy: PolicyT, critic: Critic, scaler: ActionScaler) -> None:
        self.policy: PolicyT = policy.eval()
        self.critic = critic.eval()
        self.scaler = scaler
        self._critic_loaded = False

    def load_parameters(self, parameters: Parameters) -> None:
        """``policy.*`` must be there; ``critic.*`` is adopted when present (actor parameters)."""
        unknown = sorted(name for name in parameters if not name.startswith(("policy.", "critic.")))
        if unknown:
            raise KeyError(f"parameters other than policy.* and critic.*: {unknown}")
        self.policy.load_state_dict(prefixed(parameters, "policy"))
        critic = prefixed(parameters, "critic")
        if critic:
            self.critic.load_state_dict(critic)
            self._critic_loaded = True

    @abstractmethod
    def deterministic_unit(self, observations: torch.Tensor) -> torch.Tensor:
        """[B, A] noise-free unit actions."""

    def act_deterministic(self, observations: NDArray[Any]) -> NDArray[np.float32]:
        with torch.inference_mode():
            unit = self.deterministic_unit(torch.from_numpy(np.asarray(observations)))
        return self.scaler.environment_batch(unit.numpy())

    @abstractmethod
    def explore_unit(
        self, observations: NDArray[Any], exploration: ExplorationSetting, rng: np.random.Generator
    ) -> tuple[NDArray[Any], NDArray[Any]]:
        """[B, A] exploring unit actions, and the noise-free ones acting computed on the way."""

    def act(
        self, observations: NDArray[Any], exploration: ExplorationSetting, rng: np.random.Generator
    ) -> NDArray[np.float32]:
        return self.scaler.environment_batch(self.explore_unit(observations, exploration, rng)[0])

    def act_recorded(
        self, observations: NDArray[Any], exploration: ExplorationSetting, rng: np.random.Generator
    ) -> tuple[NDArray[np.float32], dict[str, NDArray[Any]]]:
        """The exploring actions, and the noise-free one: pi(s'), where s is a transition's s'."""
        unit, deterministic = self.explore_unit(observations, exploration, rng)
        return self.scaler.environment_batch(unit), {"bootstrap_action": deterministic}

    def record(self, observations: NDArray[Any]) -> dict[str, NDArray[Any]]:
        with torch.inference_mode():
            unit = self.deterministic_unit(torch.from_numpy(np.asarray(observations))).numpy()
        return {"bootstrap_action": unit}

    def initial_priorities(self, columns: Columns) -> NDArray[np.float64]:
        """|r + d Q(s', pi(s')) - Q(s, a)| under this copy: its one critic is online and target alike.

        Where ``columns`` carry pi(s') as acting computed it (``bootstrap.bootstrap_action``),
        one critic pass over both halves is all it takes.
        """
        if not self._critic_loaded:
            raise RuntimeError(
                "initial priorities need the critic: load the actor parameters (policy.* and critic.*), "
                "not the policy alone"
            )
        observation = torch.from_numpy(np.asarray(columns["observation"]))
        next_observation = torch.from_numpy(np.asarray(columns["next_observation"]))
        action = torch.from_numpy(self.scaler.unit_batch(columns["action"]))
        bootstrap = recorded(columns, BOOTSTRAP).get("bootstrap_action")
        with torch.inference_mode():
            if bootstrap is None:
                next_action = self.deterministic_unit(next_observation)
            else:
                next_action = torch.from_numpy(np.asarray(bootstrap, dtype=np.float32))
            both = self.critic(torch.cat([observation, next_observation]), torch.cat([action, next_action]))
        count = observation.shape[0]
        q_taken, next_q = both[:count], both[count:]
        reward = torch.from_numpy(np.asarray(columns["reward"])).float()
        discount = torch.from_numpy(np.asarray(columns["discount"])).float()
        return priorities_from_td(reward + discount * next_q - q_taken)
