"""Samples-per-insert rate limiter with a tolerance band, in the sense of Reverb's SampleToInsertRatio."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.encoded import InvalidInputError


class RateLimitedError(Exception):
    """The limiter did not admit a call within the time the caller allowed."""


class NotEnoughDataError(Exception):
    """The table holds fewer items than it needs before it may be sampled."""


@dataclass(frozen=True)
class RateLimiterSettings:
    """How sampling is paced against inserting.

    ``samples_per_insert`` of 0 turns the ratio off: only ``min_size_to_sample``
    applies. Otherwise the cursor ``inserts * samples_per_insert - samples`` must
    stay within ``samples_per_insert * min_size_to_sample ± tolerance``: inserts
    wait when they would push it above the band (samplers are behind), samples
    wait when they would push it below (actors are behind).
    """

    min_size_to_sample: int = 1
    samples_per_insert: float = 0.0
    tolerance: float = 0.0

    def __post_init__(self) -> None:
        if self.min_size_to_sample < 1:
            raise ValueError(f"min_size_to_sample must be >= 1, got {self.min_size_to_sample}")
        if self.samples_per_insert < 0:
            raise ValueError(f"samples_per_insert must be >= 0, got {self.samples_per_insert}")
        if self.tolerance < 0:
            raise ValueError(f"samples_per_insert tolerance must be >= 0, got {self.tolerance}")
        if self.samples_per_insert > 0 and self.tolerance < self.samples_per_insert:
            raise ValueError(
                f"samples_per_insert tolerance {self.tolerance} must be >= samples_per_insert "
                f"{self.samples_per_insert}, or no single insert could ever pass"
            )


class RateLimiter:
    """Decides whether an insert or a sample of a given size may proceed now.

    Pure bookkeeping: the table holds the lock, waits on its condition and calls
    ``record_*`` once a call went through.
    """

    def __init__(self, settings: RateLimiterSettings, inserts: int = 0, samples: int = 0) -> None:
        self._settings = settings
        self._inserts = inserts
        self._samples = samples
        center = settings.samples_per_insert * settings.min_size_to_sample
        self._min_cursor = center - settings.tolerance
        self._max_cursor = center + settings.tolerance

    @property
    def settings(self) -> RateLimiterSettings:
        return self._settings

    def _cursor(self) -> float:
        return self._inserts * self._settings.samples_per_insert - self._samples

    def check_insert_size(self, count: int) -> None:
        """Rejects an insert that could never fit in the tolerance band, whatever the samplers do."""
        spi = self._settings.samples_per_insert
        if spi > 0 and count * spi > self._max_cursor - self._min_cursor:
            raise InvalidInputError(
                f"an insert of {count} items moves the samples-per-insert cursor by {count * spi:g}, "
                f"more than the tolerance band allows ({2 * self._settings.tolerance:g}); "
                "send smaller batches or raise the tolerance"
            )

    def check_sample_size(self, count: int) -> None:
        """Rejects a sample that could never fit in the tolerance band, whatever the inserters do."""
        spi = self._settings.samples_per_insert
        if spi > 0 and count > self._max_cursor - self._min_cursor:
            raise InvalidInputError(
                f"a sample of {count} items is wider than the samples-per-insert tolerance band "
                f"({2 * self._settings.tolerance:g}); sample smaller batches or raise the tolerance"
            )

    def can_insert(self, count: int, size: int) -> bool:
        # Until the table is big enough to sample, inserting is always allowed.
        if size + count <= self._settings.min_size_to_sample or self._settings.samples_per_insert == 0:
            return True
        return self._cursor() + count * self._settings.samples_per_insert <= self._max_cursor

    def can_sample(self, count: int, size: int) -> bool:
        if size < self._settings.min_size_to_sample:
            return False
        if self._settings.samples_per_insert == 0:
            return True
        return self._cursor() - count >= self._min_cursor

    def record_insert(self, count: int) -> None:
        self._inserts += count

    def record_sample(self, count: int) -> None:
        self._samples += count
