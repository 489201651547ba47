"""Feature extractors the families' networks share: an MLP for vectors, the Nature CNN for frames."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import nn

from services.algorithms.wire import TorsoKind

T = TypeVar("T")

# Nature CNN conv stack (Mnih et al. 2015): (out_channels, kernel, stride) per layer.
_NATURE_CONVS = ((32, 8, 4), (64, 4, 2), (64, 3, 1))
_PIXEL_SCALE = 1.0 / 255.0


def fully_connected(in_features: int, hidden_sizes: tuple[int, ...]) -> OrderedDict[str, nn.Module]:
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
        self.layers = nn.Sequential(fully_connected(in_features, hidden_sizes))

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
        self.layers = nn.Sequential(fully_connected(conv_features, hidden_sizes))

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        pixels = observations.to(torch.float32).mul(_PIXEL_SCALE).permute(0, 3, 1, 2)  # NHWC -> NCHW
        conv_features: torch.Tensor = self.convs(pixels)
        features: torch.Tensor = self.layers(conv_features.flatten(start_dim=1))
        return features


def build_torso(
    kind: TorsoKind, observation_shape: tuple[int, ...], hidden_sizes: tuple[int, ...]
) -> MlpTorso | NatureCnnTorso:
    if kind == "mlp":
        return MlpTorso(observation_shape, hidden_sizes)
    return NatureCnnTorso(observation_shape, hidden_sizes)


def seeded(seed: int, build: Callable[[], T]) -> T:
    """``build()`` with torch's generator seeded for it alone: the process's random state is untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()
