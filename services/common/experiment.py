"""The parts of the experiment configuration that no algorithm family owns: run, environment, replay."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, model_validator

from services.common.config import StrictModel

# The most items a replay shard returns for one sample request (the shard refuses more).
MAX_SAMPLE_ITEMS = 16_384

if TYPE_CHECKING:
    from services.common.environments import AtariSettings


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
    checkpoint_interval_s: float = Field(
        60.0, gt=0, description="Time between learner checkpoints (and, in apexrl run, replay snapshots)."
    )
    log_interval_s: float = Field(1.0, gt=0, description="Time between metric rows (CSV, TensorBoard).")


LayerWidths = tuple[Annotated[int, Field(ge=1)], ...]
"""Widths of fully connected layers; each at least 1."""


class ActorConfig(StrictModel):
    """How each actor steps and sends experience."""

    environments_per_actor: int = Field(
        4, ge=1, le=256, description="Environments each actor steps in lockstep (one forward pass for all)."
    )
    insert_batch_size: int = Field(64, ge=1, le=65_536, description="Transitions per insert request.")
    parameter_refresh_steps: int = Field(
        200, ge=1, description="Actor steps between parameter pulls (and at least 50 ms)."
    )
    observation_compression: Literal["auto", "zstd", "none"] = Field(
        "auto",
        description=(
            "How actors compress the observation columns they insert (each item on its own, kept "
            "compressed in the replay); auto = zstd for Atari environments, none otherwise."
        ),
    )


class OffPolicyConfig(StrictModel):
    """What every algorithm family shares: n-step transitions, prioritized replay, parameter publishing.

    Each family's config (``services/algorithms/<family>/config.py``) extends it with its
    ``name``, networks, optimizer settings and exploration ladder.
    """

    n_step: int = Field(3, ge=1, le=100, description="Steps of reward in each transition's return.")
    discount: float = Field(0.99, ge=0, le=1, description="Per-step discount gamma.")
    batch_size: int = Field(128, ge=1, le=16_384, description="Transitions per learner update.")
    batches_per_sample_request: int = Field(
        8, ge=1, le=64, description="Batches the learner draws per replay request (fewer, larger RPCs)."
    )
    priority_exponent: float = Field(0.6, ge=0, le=10, description="alpha: P(i) ~ p_i^alpha.")
    importance_exponent_start: float = Field(0.4, ge=0, le=1, description="beta at the first update.")
    importance_annealing_updates: int = Field(20_000, ge=1, description="Updates over which beta reaches 1.")
    replay_capacity: int = Field(100_000, ge=1, description="Items over all shards together.")
    min_replay_size: int = Field(1_000, ge=1, description="Items over all shards before learning starts.")
    samples_per_insert: float = Field(0.0, ge=0, description="Shard rate limit; 0 = off.")
    parameter_publish_interval: int = Field(10, ge=1, description="Updates between parameter versions.")
    actor: ActorConfig = ActorConfig()

    @model_validator(mode="after")
    def _learning_can_start(self) -> OffPolicyConfig:
        """Refuses settings that would leave the learner waiting forever without a word."""
        per_request = self.batch_size * self.batches_per_sample_request
        if per_request > MAX_SAMPLE_ITEMS:
            raise ValueError(
                f"batch_size {self.batch_size} x batches_per_sample_request "
                f"{self.batches_per_sample_request} = {per_request} items per sample request, "
                f"above the {MAX_SAMPLE_ITEMS} a replay shard returns: lower either"
            )
        if self.min_replay_size > self.replay_capacity:
            raise ValueError(
                f"min_replay_size {self.min_replay_size} is above replay_capacity {self.replay_capacity}: "
                f"learning would never start"
            )
        return self


class AtariConfig(StrictModel):
    """The standard DQN preprocessing of an Atari game; its presence makes the environment an Atari one.

    The environment does the first three (gymnasium's AtariPreprocessing); the last two are
    learning signals the actors apply, so evaluation returns stay full-game returns.
    """

    noop_max: int = Field(30, ge=0, le=1000, description="Most no-op actions at reset; 0 = none.")
    frame_skip: int = Field(
        4, ge=1, le=16, description="Emulator frames per step (action repeated, last two max-pooled)."
    )
    screen_size: int = Field(84, ge=16, le=512, description="Side of the square grayscale frame.")
    terminal_on_life_loss: bool = Field(
        True, description="Actors end n-step returns at a lost life; the game goes on."
    )
    clip_rewards: bool = Field(True, description="Actors learn from sign(reward); returns stay the game's.")


class EnvironmentConfig(StrictModel):
    """The gymnasium environment actors and the evaluator create."""

    id: str = Field("CartPole-v1", min_length=1, description="gymnasium id.")
    options: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of gymnasium.make.")
    frame_stack: int = Field(1, ge=1, le=16, description="Last observations stacked into one (1: none).")
    atari: AtariConfig | None = Field(
        None, description="Atari preprocessing (ALE/... ids, needs the atari extra); none by default."
    )

    def atari_settings(self) -> AtariSettings | None:
        """The ``atari`` section as make_environment takes it (imports gymnasium only when set)."""
        if self.atari is None:
            return None
        from services.common.environments import AtariSettings  # noqa: PLC0415 (keeps the launcher light)

        return AtariSettings(**self.atari.model_dump())
