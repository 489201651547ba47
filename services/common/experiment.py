"""The experiment configuration (general, algorithm, environment), validated, and its wire form for actors."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Self

from google.protobuf import struct_pb2
from pydantic import Field, model_validator

from apexrl.learner.v1 import learner_pb2
from services.common.config import StrictModel, load_config

PRESETS_DIR = Path(__file__).resolve().parents[2] / "configs"


class GeneralConfig(StrictModel):
    """Run settings that do not depend on the environment or the algorithm."""

    seed: int = Field(0, ge=0, description="Base seed; every process derives its own from it.")
    device: Literal["cpu", "cuda", "auto"] = Field(
        "auto", description="Learner device; auto = cuda if present."
    )
    learner_threads: int = Field(
        1, ge=1, le=256, description="torch CPU threads of the learner (actors share the cores)."
    )
    max_environment_steps: int = Field(1_000_000, ge=1, description="Stop after this many actor steps.")
    max_updates: int = Field(0, ge=0, description="Stop after this many learner updates; 0 = no limit.")
    max_wall_time_s: float = Field(3600.0, gt=0, description="Stop after this long.")
    solved_return: float | None = Field(None, description="Stop once an evaluation's mean return reaches it.")
    evaluation_episodes: int = Field(10, ge=1, description="Greedy episodes per evaluation.")
    evaluation_interval_s: float = Field(5.0, ge=0, description="Least time between evaluations.")
    checkpoint_interval_s: float = Field(60.0, gt=0, description="Time between learner checkpoints.")
    log_interval_s: float = Field(1.0, gt=0, description="Time between metric rows (CSV, TensorBoard).")


class NetworkConfig(StrictModel):
    """The Q network: torso family, hidden widths, dueling head."""

    kind: Literal["mlp", "nature_cnn"] = "mlp"
    hidden_sizes: tuple[int, ...] = Field((256, 256), description="Fully connected widths after the torso.")
    dueling: bool = True

    @model_validator(mode="after")
    def _positive_widths(self) -> Self:
        if any(width < 1 for width in self.hidden_sizes):
            raise ValueError(f"hidden_sizes must all be >= 1, got {list(self.hidden_sizes)}")
        return self


class ExplorationConfig(StrictModel):
    """The epsilon ladder: actor rung r acts with epsilon = base ** (1 + exponent * f(r)), f in [0, 1)."""

    base_epsilon: float = Field(0.4, gt=0, le=1)
    exponent: float = Field(7.0, ge=0)


class ActorConfig(StrictModel):
    """How each actor steps and sends experience."""

    environments_per_actor: int = Field(4, ge=1, le=256)
    insert_batch_size: int = Field(64, ge=1, le=65_536, description="Transitions per insert request.")
    parameter_refresh_steps: int = Field(200, ge=1, description="Actor steps between parameter pulls.")


class AlgorithmConfig(StrictModel):
    """Ape-X DQN: double Q-learning, dueling head, n-step returns, prioritized replay."""

    name: Literal["apex_dqn"] = "apex_dqn"
    n_step: int = Field(3, ge=1, le=100)
    discount: float = Field(0.99, ge=0, le=1, description="Per-step discount gamma.")
    learning_rate: float = Field(1e-3, gt=0, le=1)
    adam_epsilon: float = Field(1.5e-4, gt=0)
    batch_size: int = Field(128, ge=1, le=16_384)
    batches_per_sample_request: int = Field(
        8, ge=1, le=64, description="Batches the learner draws per replay request (fewer, larger RPCs)."
    )
    target_update_interval: int = Field(250, ge=1, description="Updates between target network copies.")
    gradient_clip_norm: float = Field(10.0, gt=0)
    huber_delta: float = Field(1.0, gt=0)
    priority_exponent: float = Field(0.6, ge=0, le=10, description="alpha: P(i) ~ p_i^alpha.")
    importance_exponent_start: float = Field(0.4, ge=0, le=1, description="beta at the first update.")
    importance_annealing_updates: int = Field(20_000, ge=1, description="Updates over which beta reaches 1.")
    replay_capacity: int = Field(100_000, ge=1, description="Items over all shards together.")
    min_replay_size: int = Field(1_000, ge=1, description="Items over all shards before learning starts.")
    samples_per_insert: float = Field(0.0, ge=0, description="Shard rate limit; 0 = off.")
    parameter_publish_interval: int = Field(10, ge=1, description="Updates between parameter versions.")
    network: NetworkConfig = NetworkConfig()
    exploration: ExplorationConfig = ExplorationConfig()
    actor: ActorConfig = ActorConfig()


class EnvironmentConfig(StrictModel):
    """The gymnasium environment actors and the evaluator create."""

    id: str = Field("CartPole-v1", min_length=1, description="gymnasium id.")
    options: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of gymnasium.make.")
    frame_stack: int = Field(1, ge=1, le=16)


class ExperimentConfig(StrictModel):
    """One experiment file: the three sections JoyRL users know."""

    general: GeneralConfig = GeneralConfig()
    algorithm: AlgorithmConfig = AlgorithmConfig()
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


_NETWORK_KINDS = {"mlp": learner_pb2.NETWORK_KIND_MLP, "nature_cnn": learner_pb2.NETWORK_KIND_NATURE_CNN}


def experiment_spec(config: ExperimentConfig) -> learner_pb2.ExperimentSpec:
    """What an actor needs to know of the experiment, as sent on registration."""
    options = struct_pb2.Struct()
    options.update(config.environment.options)
    network = config.algorithm.network
    return learner_pb2.ExperimentSpec(
        algorithm=learner_pb2.ALGORITHM_APEX_DQN,
        environment_id=config.environment.id,
        environment_options=options,
        network=learner_pb2.NetworkSpec(
            kind=_NETWORK_KINDS[network.kind], hidden_sizes=network.hidden_sizes, dueling=network.dueling
        ),
        n_step=config.algorithm.n_step,
        discount=config.algorithm.discount,
        seed=config.general.seed,
        frame_stack=config.environment.frame_stack,
    )


def actor_settings(config: ExperimentConfig) -> learner_pb2.ActorSettings:
    actor = config.algorithm.actor
    return learner_pb2.ActorSettings(
        environments_per_actor=actor.environments_per_actor,
        insert_batch_size=actor.insert_batch_size,
        parameter_refresh_steps=actor.parameter_refresh_steps,
    )


def network_kind_name(kind: int) -> Literal["mlp", "nature_cnn"]:
    """The config name of a wire NetworkKind; ValueError for unknown kinds."""
    for name, value in _NETWORK_KINDS.items():
        if value == kind:
            return name  # type: ignore[return-value]
    raise ValueError(f"unknown network kind {kind}")
