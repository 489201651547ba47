"""Configuration loading and validation errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.config import ConfigError, apply_overrides, load_config
from services.replay.settings import ReplayShardSettings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "shard.yaml"
    path.write_text(text)
    return path


def test_yaml_values_and_overrides_are_typed_and_validated(tmp_path: Path) -> None:
    path = write(tmp_path, "capacity: 5000\npriority_exponent: 0.5\n")
    settings = load_config(ReplayShardSettings, path, ["capacity=7000", "seed=3"])
    assert (settings.capacity, settings.priority_exponent, settings.seed) == (7000, 0.5, 3)


def test_an_out_of_range_value_names_the_field_and_the_allowed_range(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"capacity: Input should be greater than or equal to 1, got -5"):
        load_config(ReplayShardSettings, write(tmp_path, "capacity: -5\n"))


def test_an_unknown_key_is_an_error_not_ignored(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"capacty: unknown key"):
        load_config(ReplayShardSettings, write(tmp_path, "capacty: 10\n"))


def test_a_wrong_type_names_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"priority_exponent: Input should be a valid number"):
        load_config(ReplayShardSettings, None, ["priority_exponent=high"])


def test_cross_field_rules_are_explained() -> None:
    with pytest.raises(ConfigError, match="samples_per_insert_tolerance must be >= samples_per_insert"):
        load_config(ReplayShardSettings, None, ["samples_per_insert=8", "samples_per_insert_tolerance=2"])


def test_a_file_that_is_not_a_mapping_or_not_yaml_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(ReplayShardSettings, write(tmp_path, "- 1\n- 2\n"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(ReplayShardSettings, write(tmp_path, "a: [1,\n"))
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(ReplayShardSettings, tmp_path / "missing.yaml")


def test_overrides_create_nested_sections_and_reject_malformed_entries() -> None:
    assert apply_overrides({"general": {"seed": 1}}, ["general.seed=2", "algorithm.lr=0.001"]) == {
        "general": {"seed": 2},
        "algorithm": {"lr": 0.001},
    }
    with pytest.raises(ConfigError, match=r"must look like section\.key=value"):
        apply_overrides({}, ["general.seed"])
    with pytest.raises(ConfigError, match="'seed' is a value, not a section"):
        apply_overrides({"seed": 1}, ["seed.x=2"])
