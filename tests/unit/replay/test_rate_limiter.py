"""The samples-per-insert rate limiter, alone and inside the table."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from services.replay.rate_limiter import RateLimitedError, RateLimiter, RateLimiterSettings
from services.replay.table import PrioritizedTable


def test_without_a_ratio_only_the_minimum_size_gates_sampling() -> None:
    limiter = RateLimiter(RateLimiterSettings(min_size_to_sample=10))
    assert not limiter.can_sample(1, size=9)
    assert limiter.can_sample(1_000_000, size=10)
    assert limiter.can_insert(1_000_000, size=10)


def test_the_ratio_keeps_samples_within_the_tolerance_band() -> None:
    # spi 2, min size 10: the cursor inserts*2 - samples stays in 20 ± 6.
    limiter = RateLimiter(RateLimiterSettings(min_size_to_sample=10, samples_per_insert=2.0, tolerance=6.0))
    assert limiter.can_insert(10, size=0)  # filling up to the minimum is always allowed
    limiter.record_insert(10)
    assert limiter.can_insert(3, size=10)  # cursor 20 -> 26: at the top of the band
    assert not limiter.can_insert(4, size=10)  # -> 28: samplers are behind
    assert limiter.can_sample(6, size=10)  # cursor 20 -> 14: at the bottom of the band
    assert not limiter.can_sample(7, size=10)  # -> 13: actors are behind
    limiter.record_sample(6)
    assert limiter.can_insert(6, size=10)  # 14 -> 26


def test_a_request_wider_than_the_band_is_rejected_because_it_could_never_pass() -> None:
    limiter = RateLimiter(RateLimiterSettings(min_size_to_sample=1, samples_per_insert=4.0, tolerance=10.0))
    limiter.check_insert_size(5)
    with pytest.raises(ValueError, match="tolerance band"):
        limiter.check_insert_size(6)
    with pytest.raises(ValueError, match="wider than the samples-per-insert tolerance band"):
        limiter.check_sample_size(21)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_size_to_sample": 0}, "min_size_to_sample must be >= 1"),
        ({"samples_per_insert": -1.0}, "samples_per_insert must be >= 0"),
        (
            {"samples_per_insert": 4.0, "tolerance": 1.0},
            "tolerance 1.0 must be >= samples_per_insert 4.0",
        ),
    ],
)
def test_invalid_settings_name_the_field(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RateLimiterSettings(**kwargs)  # type: ignore[arg-type]


def _observations(count: int) -> dict[str, np.ndarray]:
    return {"observation": np.zeros((count, 2), dtype=np.float32)}


def test_a_sampler_ahead_of_the_ratio_fails_after_its_wait_and_the_table_is_unchanged() -> None:
    table = PrioritizedTable(
        100, 1.0, RateLimiterSettings(min_size_to_sample=2, samples_per_insert=1.0, tolerance=2.0)
    )
    table.insert(_observations(2), np.ones(2), max_wait_s=0)
    table.sample(2, max_wait_s=0)  # cursor 2 - 2 = 0: bottom of the band 2 ± 2
    with pytest.raises(RateLimitedError, match="sample held back"):
        table.sample(1, max_wait_s=0.05)
    info = table.info()
    assert (info.samples, info.rate_limiter_waits) == (2, 1)


def test_a_waiting_sampler_is_released_by_an_insert() -> None:
    table = PrioritizedTable(
        100, 1.0, RateLimiterSettings(min_size_to_sample=2, samples_per_insert=1.0, tolerance=2.0)
    )
    table.insert(_observations(2), np.ones(2), max_wait_s=0)
    table.sample(2, max_wait_s=0)
    result: list[int] = []
    returned_at: list[float] = []

    def sample() -> None:
        result.append(table.sample(2, max_wait_s=60).size)
        returned_at.append(time.monotonic())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    # The sampler counts its wait under the table's lock and releases the lock only by waiting,
    # so once info() (which takes the lock) sees the count, the sampler is blocked in its wait.
    deadline = time.monotonic() + 30
    while table.info().rate_limiter_waits < 1:
        assert time.monotonic() < deadline, "the sampler never started waiting"
        time.sleep(0.001)
    assert sampler.is_alive()
    assert result == []
    inserted_at = time.monotonic()
    table.insert(_observations(2), np.ones(2), max_wait_s=0)
    sampler.join(timeout=30)
    assert not sampler.is_alive(), "the insert did not wake the waiting sampler"
    assert result == [4]
    # Woken by the insert, not by its 60 s deadline.
    assert returned_at[0] - inserted_at < 5.0
    assert table.info().rate_limiter_waits == 1
