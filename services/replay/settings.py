"""Settings of one replay shard, validated with errors that name the field."""

from __future__ import annotations

from pathlib import Path
from typing import Self

from pydantic import Field, model_validator

from services.common.config import StrictModel


class ReplayShardSettings(StrictModel):
    """Every knob of a replay shard; flags or APEXRL_REPLAY_* variables fill it (`apexrl replay --help`)."""

    host: str = Field("127.0.0.1", description="Interface the gRPC server binds.")
    metrics_host: str | None = Field(None, description="Interface of the HTTP endpoint; None: host.")
    port: int = Field(0, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    metrics_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="HTTP port for /metrics, /healthz, /readyz; 0 picks a free one.",
    )
    capacity: int = Field(1_000_000, ge=1, le=(1 << 40) - 1, description="Most items held (FIFO eviction).")
    priority_exponent: float = Field(0.6, ge=0.0, le=10.0, description="alpha in P(i) ~ p_i^alpha.")
    min_size_to_sample: int = Field(1, ge=1, description="Items needed before sampling.")
    samples_per_insert: float = Field(
        0.0, ge=0.0, description="Target sampled items per inserted item; 0 = off."
    )
    samples_per_insert_tolerance: float = Field(
        0.0, ge=0.0, description="Half-width of the allowed band around the ratio, in samples."
    )
    snapshot_path: Path | None = Field(None, description="Snapshot file; restored on start when present.")
    snapshot_interval_s: float = Field(
        0.0, ge=0.0, description="Seconds between snapshots; 0 = on stop only."
    )
    seed: int | None = Field(None, ge=0, description="Seed of the sampling generator.")
    max_message_mib: int = Field(64, ge=1, le=2047, description="gRPC message limit in each direction, MiB.")
    max_workers: int = Field(16, ge=1, le=1024, description="gRPC server threads.")
    max_insert_streams: int = Field(
        8,
        ge=0,
        le=1023,
        description="InsertStream calls served at once (each holds a server thread); writers "
        "beyond them insert with InsertTransitions. 0: none.",
    )
    grace_s: float = Field(5.0, ge=0.0, description="Seconds in-flight calls get to finish on stop.")

    @model_validator(mode="after")
    def _tolerance_fits_ratio(self) -> Self:
        if self.samples_per_insert > 0 and self.samples_per_insert_tolerance < self.samples_per_insert:
            raise ValueError(
                "samples_per_insert_tolerance must be >= samples_per_insert when the ratio is on "
                f"(got {self.samples_per_insert_tolerance} < {self.samples_per_insert})"
            )
        return self

    @model_validator(mode="after")
    def _threads_left_for_calls(self) -> Self:
        if self.max_insert_streams >= self.max_workers:
            raise ValueError(
                f"max_insert_streams ({self.max_insert_streams}) must be below max_workers "
                f"({self.max_workers}): each insert stream holds a server thread, and samples, "
                "priority updates and health checks need one too"
            )
        return self
