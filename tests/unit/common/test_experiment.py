"""The experiment config: presets, overrides, validation naming the field, the wire spec."""

from __future__ import annotations

from pathlib import Path

import pytest

from apexrl.learner.v1 import learner_pb2
from services.algorithms.actor_critic_config import ActorCriticNetworkConfig
from services.algorithms.experiment import experiment_spec, load_experiment
from services.common.config import ConfigError
from services.common.experiment import MAX_SAMPLE_ITEMS
from services.replay.servicer import MAX_SAMPLE_BATCH


@pytest.mark.parametrize("preset", ["cartpole", "acrobot"])
def test_shipped_presets_load(preset: str) -> None:
    config = load_experiment(preset)
    assert config.algorithm.name == "apex_dqn"
    assert config.general.solved_return is not None


def test_overrides_reach_nested_sections_with_types() -> None:
    config = load_experiment("cartpole", ["algorithm.network.hidden_sizes=[64, 64]", "general.seed=7"])
    assert config.algorithm.network.hidden_sizes == (64, 64)
    assert config.general.seed == 7


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("algorithm.n_step=0", "algorithm.n_step: Input should be greater than or equal to 1, got 0"),
        ("general.device=tpu", "general.device: Input should be 'cpu', 'cuda' or 'auto', got 'tpu'"),
        ("algorithm.discount=1.5", "algorithm.discount: Input should be less than or equal to 1"),
        ("algorithm.learning_rte=0.1", "algorithm.learning_rte: unknown key"),
        ("environment.frame_stack=0", "environment.frame_stack: Input should be greater than or equal to 1"),
        (
            "algorithm.network.hidden_sizes=[0]",
            "algorithm.network.hidden_sizes.0: Input should be greater than or equal to 1",
        ),
    ],
)
def test_invalid_values_name_the_field_and_the_allowed_values(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_experiment("cartpole", [override])
    assert message in str(caught.value)


def test_an_unknown_preset_lists_the_presets() -> None:
    presets = (
        r"presets: \['acrobot', 'breakout', 'cartpole', 'halfcheetah', 'pendulum', 'pendulum-sac', 'pong'\]"
    )
    with pytest.raises(FileNotFoundError, match=presets):
        load_experiment("space-invaders")


def test_a_config_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text("environment:\n  id: Acrobot-v1\nalgorithm:\n  n_step: 5\n")
    config = load_experiment(str(path))
    assert (config.environment.id, config.algorithm.n_step) == ("Acrobot-v1", 5)


def test_the_wire_spec_carries_what_actors_need() -> None:
    config = load_experiment(
        "cartpole",
        ["environment.options={max_episode_steps: 300}", "algorithm.network.hidden_sizes=[32, 16]"],
    )
    spec = experiment_spec(config)
    assert spec.algorithm == learner_pb2.ALGORITHM_APEX_DQN
    assert spec.environment_id == "CartPole-v1"
    assert spec.environment_options["max_episode_steps"] == 300
    assert spec.n_step == 3
    assert spec.discount == pytest.approx(0.99)
    assert spec.network.kind == learner_pb2.NETWORK_KIND_MLP
    assert list(spec.network.hidden_sizes) == [32, 16]


@pytest.mark.parametrize(("preset", "family"), [("pendulum", "td3"), ("pendulum-sac", "sac")])
def test_continuous_presets_load_their_familys_config(preset: str, family: str) -> None:
    config = load_experiment(preset)
    assert config.algorithm.name == family
    spec = experiment_spec(config)
    assert spec.algorithm == {"td3": learner_pb2.ALGORITHM_TD3, "sac": learner_pb2.ALGORITHM_SAC}[family]
    assert isinstance(config.algorithm.network, ActorCriticNetworkConfig)
    assert list(spec.network.critic_hidden_sizes) == list(config.algorithm.network.critic_hidden_sizes)


def test_an_algorithm_section_is_validated_by_its_own_familys_model() -> None:
    with pytest.raises(ConfigError) as caught:
        load_experiment("cartpole", ["algorithm.name=td3", "algorithm.policy_delay=0"])
    message = str(caught.value)
    # DQN's keys are not TD3 settings; the path names the field, not the union's tag.
    assert "algorithm.target_update_interval: unknown key" in message
    assert "algorithm.policy_delay: Input should be greater than or equal to 1, got 0" in message
    assert "algorithm.td3." not in message


def test_an_unknown_algorithm_name_lists_the_known_ones() -> None:
    with pytest.raises(
        ConfigError, match="algorithm: unknown name 'dqn'; expected one of 'apex_dqn', 'td3', 'sac'"
    ):
        load_experiment("cartpole", ["algorithm.name=dqn"])


@pytest.mark.parametrize("algorithm", ["cartpole", "pendulum"])
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["algorithm.batch_size=1024", "algorithm.batches_per_sample_request=32"],
            "batch_size 1024 x batches_per_sample_request 32 = 32768 items per sample request, above",
        ),
        (
            ["algorithm.replay_capacity=500", "algorithm.min_replay_size=501"],
            "min_replay_size 501 is above replay_capacity 500: learning would never start",
        ),
    ],
)
def test_settings_that_would_stall_learning_are_refused_naming_them(
    algorithm: str, overrides: list[str], message: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        load_experiment(algorithm, overrides)
    assert message in str(refused.value)
    assert "got {" not in str(refused.value)  # the message, not a dump of the whole section


def test_the_per_request_limit_is_the_replays() -> None:
    assert MAX_SAMPLE_ITEMS == MAX_SAMPLE_BATCH
