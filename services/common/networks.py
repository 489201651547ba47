"""Q-networks for discrete actions, built from a plain spec so learner, actors and evaluator agree."""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import nn

NetworkKind = Literal["mlp", "nature_cnn"]

# Nature CNN conv stack (Mnih et al. 2015): (out_channels, kernel, stride) per layer.
_NATURE_CONVS = ((32, 8, 4), (64, 4, 2), (64, 3, 1))
_PIXEL_SCALE = 1.0 / 255.0


@dataclass(frozen=True)
class NetworkSpec:
    """What to build; the observation shape and action count come from the environment.

    ``hidden_sizes`` are the fully connected layers after the torso's input (MLP) or after the
    conv stack (Nature CNN, where ``(512,)`` is the paper's choice); empty means the head reads
    the flattened input or conv features directly. ``dueling`` picks the Wang et al. (2016) head.
    """

    kind: NetworkKind
    hidden_sizes: tuple[int, ...] = (256, 256)
    dueling: bool = True

    def __post_init__(self) -> None:
        if self.kind not in get_args(NetworkKind):
            raise ValueError(f"unknown network kind {self.kind!r}; expected one of {get_args(NetworkKind)}")
        if any(size < 1 for size in self.hidden_sizes):
            raise ValueError(f"hidden_sizes must all be positive, got {self.hidden_sizes}")


def _fully_connected(in_features: int, hidden_sizes: tuple[int, ...]) -> OrderedDict[str, nn.Module]:
    """Linear+ReLU per hidden size, named fc1, relu_fc1, fc2, ... so checkpoint keys stay stable."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    for index, size in enumerate(hidden_sizes, start=1):
        layers[f"fc{index}"] = nn.Linear(in_features, size)
        layers[f"relu_fc{index}"] = nn.ReLU()
        in_features = size
    return layers


class MlpTorso(nn.Module):
    """Flattens each observation to float32 and applies the fully connected layers."""

    def __init__(self, observation_shape: tuple[int, ...], hidden_sizes: tuple[int, ...]) -> None:
        super().__init__()
        if not observation_shape or any(size < 1 for size in observation_shape):
            raise ValueError(
                f"mlp needs a non-empty observation_shape of positive sizes, got {observation_shape}"
            )
        in_features = math.prod(observation_shape)
        self.output_size = hidden_sizes[-1] if hidden_sizes else in_features
        self.layers = nn.Sequential(_fully_connected(in_features, hidden_sizes))

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        features: torch.Tensor = self.layers(observations.to(torch.float32).flatten(start_dim=1))
        return features


class NatureCnnTorso(nn.Module):
    """Mnih et al. (2015): uint8 [B, H, W, C] frames scaled to [0, 1], three ReLU convs, then fc layers."""

    def __init__(self, observation_shape: tuple[int, ...], hidden_sizes: tuple[int, ...]) -> None:
        super().__init__()
        if len(observation_shape) != 3:
            raise ValueError(
                f"nature_cnn needs a 3-D observation_shape (height, width, channels), got {observation_shape}"
            )
        height, width, in_channels = observation_shape
        convs: OrderedDict[str, nn.Module] = OrderedDict()
        for index, (out_channels, kernel, stride) in enumerate(_NATURE_CONVS, start=1):
            convs[f"conv{index}"] = nn.Conv2d(in_channels, out_channels, kernel, stride)
            convs[f"relu_conv{index}"] = nn.ReLU()
            in_channels = out_channels
            # Valid convolution: out = floor((in - kernel) / stride) + 1; 84 -> 20 -> 9 -> 7.
            height, width = (height - kernel) // stride + 1, (width - kernel) // stride + 1
        if height < 1 or width < 1:
            raise ValueError(
                f"nature_cnn needs images of at least 36x36, got observation_shape {observation_shape}"
            )
        conv_features = in_channels * height * width
        self.output_size = hidden_sizes[-1] if hidden_sizes else conv_features
        self.convs = nn.Sequential(convs)
        self.layers = nn.Sequential(_fully_connected(conv_features, hidden_sizes))

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        pixels = observations.to(torch.float32).mul(_PIXEL_SCALE).permute(0, 3, 1, 2)  # NHWC -> NCHW
        conv_features: torch.Tensor = self.convs(pixels)
        features: torch.Tensor = self.layers(conv_features.flatten(start_dim=1))
        return features


class DuelingHead(nn.Module):
    """Wang et al. (2016): Q(s, a) = V(s) + A(s, a) - mean_a' A(s, a'), from separate linear streams."""

    def __init__(self, in_features: int, num_actions: int) -> None:
        super().__init__()
        self.value = nn.Linear(in_features, 1)
        self.advantage = nn.Linear(in_features, num_actions)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        value: torch.Tensor = self.value(features)
        advantage: torch.Tensor = self.advantage(features)
        # Subtracting the mean advantage makes V and A identifiable (the paper's equation 9).
        return value + advantage - advantage.mean(dim=1, keepdim=True)


class QNetwork(nn.Module):
    """Q-values for discrete actions: a torso (MLP or Nature CNN) and a plain or dueling head."""

    def __init__(self, spec: NetworkSpec, observation_shape: tuple[int, ...], num_actions: int) -> None:
        super().__init__()
        if num_actions < 1:
            raise ValueError(f"num_actions must be at least 1, got {num_actions}")
        self.spec = spec
        self.observation_shape = tuple(observation_shape)
        self.num_actions = num_actions
        self.torso: MlpTorso | NatureCnnTorso
        if spec.kind == "mlp":
            self.torso = MlpTorso(self.observation_shape, spec.hidden_sizes)
        else:
            self.torso = NatureCnnTorso(self.observation_shape, spec.hidden_sizes)
        self.head: DuelingHead | nn.Linear
        if spec.dueling:
            self.head = DuelingHead(self.torso.output_size, num_actions)
        else:
            self.head = nn.Linear(self.torso.output_size, num_actions)

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        """[B, *observation_shape] observations -> [B, num_actions] float32 Q-values."""
        if tuple(observations.shape[1:]) != self.observation_shape:
            raise ValueError(
                f"expected observations of shape [B, *{self.observation_shape}], "
                f"got {tuple(observations.shape)}"
            )
        q_values: torch.Tensor = self.head(self.torso(observations))
        return q_values


def build_q_network(spec: NetworkSpec, observation_shape: tuple[int, ...], num_actions: int) -> QNetwork:
    """The one constructor every service calls, so all of them build the same parameter names."""
    return QNetwork(spec, observation_shape, num_actions)
