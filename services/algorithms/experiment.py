"""The experiment file (general, algorithm, environment), validated, and its wire form for actors.

It imports the families' config models only (no torch), so the launcher starts fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

from google.protobuf import struct_pb2
from pydantic import Discriminator, Tag

from apexrl.common.v1 import tensor_pb2
from apexrl.learner.v1 import learner_pb2
from services.algorithms.apex_dqn.config import ApexDqnConfig
from services.algorithms.sac.config import SacConfig
from services.algorithms.td3.config import Td3Config
from services.common.config import ConfigError, StrictModel, load_config
from services.common.experiment import EnvironmentConfig, GeneralConfig

PRESETS_DIR = Path(__file__).resolve().parents[2] / "configs"


def _algorithm_name(section: Any) -> str:
    """The family an ``algorithm`` section names; Ape-X DQN when it names none."""
    if isinstance(section, dict):
        return str(section.get("name", "apex_dqn"))
    return str(getattr(section, "name", "apex_dqn"))


# The families' config models, told apart by ``algorithm.name`` (a discriminated union):
# each model validates only its own family's keys.
AlgorithmConfig = Annotated[
    Annotated[ApexDqnConfig, Tag("apex_dqn")]
    | Annotated[Td3Config, Tag("td3")]
    | Annotated[SacConfig, Tag("sac")],
    Discriminator(_algorithm_name),
]


class ExperimentConfig(StrictModel):
    """One experiment file: the three sections JoyRL users know."""

    tagged_unions = frozenset({"algorithm"})

    general: GeneralConfig = GeneralConfig()
    algorithm: AlgorithmConfig = ApexDqnConfig()
    environment: EnvironmentConfig = EnvironmentConfig()


def load_experiment(
    path_or_preset: str | None, overrides: list[str] | tuple[str, ...] = ()
) -> ExperimentConfig:
    """A YAML file, or the name of a shipped preset (``cartpole``, ``acrobot``), with overrides applied."""
    if path_or_preset is None:
        path_or_preset = "cartpole"
    path = Path(path_or_preset)
    if not path.exists():
        preset = PRESETS_DIR / f"{path_or_preset.lower()}.yaml"
        if not preset.exists():
            available = sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))
            raise FileNotFoundError(
                f"no config file or preset named {path_or_preset!r}; presets: {available}"
            )
        path = preset
    return load_config(ExperimentConfig, path, list(overrides))


def experiment_spec(config: ExperimentConfig) -> learner_pb2.ExperimentSpec:
    """What an actor needs to know of the experiment, as sent on registration."""
    options = struct_pb2.Struct()
    options.update(config.environment.options)
    atari = config.environment.atari
    return learner_pb2.ExperimentSpec(
        algorithm=config.algorithm.wire_algorithm,
        environment_id=config.environment.id,
        environment_options=options,
        environment_options_json=json.dumps(config.environment.options),
        network=config.algorithm.network.to_wire(),
        n_step=config.algorithm.n_step,
        discount=config.algorithm.discount,
        seed=config.general.seed,
        frame_stack=config.environment.frame_stack,
        atari=None
        if atari is None
        else learner_pb2.AtariPreprocessing(
            noop_max=atari.noop_max,
            frame_skip=atari.frame_skip,
            screen_size=atari.screen_size,
            terminal_on_life_loss=atari.terminal_on_life_loss,
            clip_rewards=atari.clip_rewards,
        ),
    )


def actor_settings(config: ExperimentConfig) -> learner_pb2.ActorSettings:
    actor = config.algorithm.actor
    return learner_pb2.ActorSettings(
        environments_per_actor=actor.environments_per_actor,
        insert_batch_size=actor.insert_batch_size,
        parameter_refresh_steps=actor.parameter_refresh_steps,
        observation_codec=_observation_codec(config),
    )


def _observation_codec(config: ExperimentConfig) -> tensor_pb2.Codec.ValueType:
    choice = config.algorithm.actor.observation_compression
    if choice == "auto":
        choice = "zstd" if config.environment.atari is not None else "none"
    return tensor_pb2.CODEC_ZSTD if choice == "zstd" else tensor_pb2.CODEC_UNSPECIFIED


def batch_share(batch_size: int, learners: int) -> int:
    """Each learner's share of the global batch; ConfigError where it does not divide evenly."""
    if batch_size % learners:
        raise ConfigError(
            f"algorithm.batch_size {batch_size} does not split over {learners} learners: "
            "use a multiple of the learner count"
        )
    return batch_size // learners
