"""Q-networks built from a spec: shapes, the dueling identity, stable parameter names, validation."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from services.algorithms.apex_dqn.config import DqnNetworkConfig
from services.algorithms.apex_dqn.networks import DuelingHead, QNetwork
from services.algorithms.torsos import NatureCnnTorso

ATARI_SHAPE = (84, 84, 4)


def spec(kind: str, hidden_sizes: tuple[int, ...] = (256, 256), dueling: bool = True) -> DqnNetworkConfig:
    return DqnNetworkConfig.model_validate({"kind": kind, "hidden_sizes": hidden_sizes, "dueling": dueling})


def seeded_network(
    config: DqnNetworkConfig, observation_shape: tuple[int, ...], num_actions: int
) -> QNetwork:
    torch.manual_seed(0)
    return QNetwork(config, observation_shape, num_actions)


def frames(batch_size: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch_size, *ATARI_SHAPE), dtype=torch.uint8, generator=generator)


@pytest.mark.parametrize("dueling", [True, False])
def test_mlp_maps_a_batch_of_vectors_to_one_float32_q_value_per_action(dueling: bool) -> None:
    network = seeded_network(spec("mlp", (8, 8), dueling), (4,), 3)
    q_values = network(torch.randn(2, 4, generator=torch.Generator().manual_seed(1)))
    assert q_values.shape == (2, 3)
    assert q_values.dtype == torch.float32


def test_mlp_casts_integer_observations_to_float32() -> None:
    network = seeded_network(spec("mlp", (8,)), (2, 2), 3)
    integers = torch.tensor([[[1, 2], [3, 4]], [[0, -1], [5, 7]]], dtype=torch.int64)
    torch.testing.assert_close(network(integers), network(integers.to(torch.float32)))


@pytest.mark.parametrize(("hidden_sizes", "dueling"), [((512,), True), ((512,), False), ((), True)])
def test_nature_cnn_maps_uint8_frames_to_one_q_value_per_action(
    hidden_sizes: tuple[int, ...], dueling: bool
) -> None:
    network = seeded_network(spec("nature_cnn", hidden_sizes, dueling), ATARI_SHAPE, 6)
    q_values = network(frames(2))
    assert q_values.shape == (2, 6)
    assert q_values.dtype == torch.float32


def test_nature_cnn_scales_pixels_to_unit_range_and_reads_frames_as_channels() -> None:
    network = seeded_network(spec("nature_cnn", (16,)), ATARI_SHAPE, 2)
    assert isinstance(network.torso, NatureCnnTorso)
    observations = frames(2)
    # NHWC uint8 -> NCHW in [0, 1]; a reshape instead of a permute would mix frames into rows.
    pixels = observations.to(torch.float32).permute(0, 3, 1, 2) / 255.0
    expected = network.torso.layers(network.torso.convs(pixels).flatten(start_dim=1))
    torch.testing.assert_close(network.torso(observations), expected)


@pytest.mark.parametrize(
    ("config", "observation_shape"),
    [(spec("mlp", (8, 8)), (4,)), (spec("nature_cnn", (16,)), ATARI_SHAPE)],
)
def test_dueling_q_values_are_value_plus_advantage_minus_mean_advantage(
    config: DqnNetworkConfig, observation_shape: tuple[int, ...]
) -> None:
    network = seeded_network(config, observation_shape, 5)
    assert isinstance(network.head, DuelingHead)
    if config.kind == "mlp":
        observations = torch.randn(3, *observation_shape, generator=torch.Generator().manual_seed(2))
    else:
        observations = frames(3)
    features = network.torso(observations)
    value = network.head.value(features)
    advantage = network.head.advantage(features)
    q_values = network(observations)
    torch.testing.assert_close(q_values, value + advantage - advantage.mean(dim=1, keepdim=True))
    # Consequence of the identity: averaging Q over actions recovers V exactly.
    torch.testing.assert_close(q_values.mean(dim=1), value.squeeze(1))


def test_parameter_names_are_stable_for_checkpoints() -> None:
    mlp = seeded_network(spec("mlp", (8, 8), dueling=True), (4,), 3)
    assert list(mlp.state_dict()) == [
        "torso.layers.fc1.weight",
        "torso.layers.fc1.bias",
        "torso.layers.fc2.weight",
        "torso.layers.fc2.bias",
        "head.value.weight",
        "head.value.bias",
        "head.advantage.weight",
        "head.advantage.bias",
    ]
    cnn = seeded_network(spec("nature_cnn", (512,), dueling=False), ATARI_SHAPE, 6)
    assert {name: tuple(tensor.shape) for name, tensor in cnn.state_dict().items()} == {
        "torso.convs.conv1.weight": (32, 4, 8, 8),
        "torso.convs.conv1.bias": (32,),
        "torso.convs.conv2.weight": (64, 32, 4, 4),
        "torso.convs.conv2.bias": (64,),
        "torso.convs.conv3.weight": (64, 64, 3, 3),
        "torso.convs.conv3.bias": (64,),
        # 84 -> 20 -> 9 -> 7 pixels a side after the convs: 64 * 7 * 7 = 3136 features.
        "torso.layers.fc1.weight": (512, 3136),
        "torso.layers.fc1.bias": (512,),
        "head.weight": (6, 512),
        "head.bias": (6,),
    }


def test_networks_built_under_the_same_seed_are_identical_and_other_seeds_differ() -> None:
    config = spec("mlp", (8, 8))
    first = seeded_network(config, (4,), 3).state_dict()
    second = seeded_network(config, (4,), 3).state_dict()
    torch.manual_seed(1)
    other = QNetwork(config, (4,), 3).state_dict()
    assert first.keys() == second.keys()
    for name in first:
        torch.testing.assert_close(first[name], second[name], rtol=0, atol=0)
    assert not torch.equal(first["torso.layers.fc1.weight"], other["torso.layers.fc1.weight"])


@pytest.mark.parametrize(
    ("spec_arguments", "message"),
    [
        ({"kind": "rnn"}, r"kind\n  Input should be 'mlp' or 'nature_cnn'"),
        (
            {"kind": "mlp", "hidden_sizes": (8, 0)},
            r"hidden_sizes.1\n  Input should be greater than or equal to 1",
        ),
    ],
)
def test_malformed_specs_are_rejected(spec_arguments: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DqnNetworkConfig.model_validate(spec_arguments)


@pytest.mark.parametrize(
    ("config", "observation_shape", "num_actions", "message"),
    [
        (spec("mlp"), (), 2, r"mlp needs a non-empty observation_shape"),
        (spec("mlp"), (4, 0), 2, r"mlp needs a non-empty observation_shape"),
        (spec("nature_cnn"), (84, 84), 2, r"nature_cnn needs a 3-D observation_shape"),
        (spec("nature_cnn"), (35, 84, 4), 2, r"at least 36x36"),
        (spec("mlp"), (4,), 0, r"num_actions must be at least 1, got 0"),
    ],
)
def test_shapes_the_network_cannot_serve_are_rejected(
    config: DqnNetworkConfig, observation_shape: tuple[int, ...], num_actions: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        QNetwork(config, observation_shape, num_actions)


def test_observations_of_the_wrong_shape_are_rejected_at_forward() -> None:
    network = seeded_network(spec("mlp", (8,)), (4,), 2)
    with pytest.raises(ValueError, match=r"expected observations of shape \[B, \*\(4,\)\], got \(4,\)"):
        network(torch.zeros(4))
