"""docs/configuration.md is what the config models say, every key described."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, Field

from services.config_reference import FAMILIES, PAGE, reference, rows


def test_the_checked_in_reference_is_current() -> None:
    assert PAGE.read_text(encoding="utf-8") == reference(), (
        "docs/configuration.md is out of date: run `apexrl config-reference --write`"
    )


def test_every_familys_keys_are_listed_with_their_defaults_and_limits() -> None:
    page = reference()
    for family in FAMILIES:
        assert f"`algorithm.name: {family.model_fields['name'].default}`" in page
    assert (
        "| `algorithm.batch_size` | int | `128` | >= 1, <= 16384 | Transitions per learner update. |" in page
    )
    assert '| `general.device` | one of `"cpu"`, `"cuda"`, `"auto"` | `"auto"` |' in page
    assert "| `environment.atari` | section or null | `null` |" in page


def test_a_setting_without_a_description_is_refused() -> None:
    class Section(BaseModel):
        described: int = Field(1, description="Has one.")
        silent: int = 2

    with pytest.raises(ValueError, match=r"the setting section\.silent has no description"):
        list(rows(Section, "section."))
