"""Configuration loading: YAML and ``section.key=value`` overrides, validated with errors naming the field."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names every offending field."""


class StrictModel(BaseModel):
    """Base of every settings model: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    # Fields holding a discriminated union, whose tag errors leave out of the path they name.
    tagged_unions: ClassVar[frozenset[str]] = frozenset()


def load_yaml(path: Path) -> dict[str, Any]:
    """The mapping at the top of a YAML file (safe loader: no Python objects)."""
    try:
        with open(path, encoding="utf-8") as file:
            data = yaml.safe_load(file)
    except OSError as error:
        raise ConfigError(f"cannot read config {path}: {error.strerror}") from error
    except yaml.YAMLError as error:
        raise ConfigError(f"config {path} is not valid YAML: {error}") from error
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping of sections, got {type(data).__name__}")
    return data


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of ``data`` with each ``dotted.path=value`` set; values are parsed as YAML scalars."""
    result: dict[str, Any] = _deep_copy(data)
    for override in overrides:
        path, separator, raw = override.partition("=")
        keys = path.strip().split(".")
        if not separator or not all(keys):
            raise ConfigError(f"override {override!r} must look like section.key=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else raw
        except yaml.YAMLError as error:
            raise ConfigError(f"override {override!r}: value is not valid YAML: {error}") from error
        node = result
        for key in keys[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {override!r}: {key!r} is a value, not a section")
            node = child
        node[keys[-1]] = value
    return result


def _deep_copy(data: Mapping[str, Any]) -> dict[str, Any]:
    return {key: _deep_copy(value) if isinstance(value, Mapping) else value for key, value in data.items()}


def _field_path(location: tuple[int | str, ...], tagged_unions: frozenset[str]) -> str:
    """``section.key`` of an error; a tagged union's tag (``algorithm.td3.x``) is left out."""
    parts = list(location)
    if len(parts) > 1 and parts[0] in tagged_unions:
        del parts[1]
    return ".".join(str(part) for part in parts) or "(top level)"


def format_validation_error(error: ValidationError, source: str, tagged_unions: frozenset[str]) -> str:
    lines = [f"invalid configuration ({source}):"]
    for issue in error.errors():
        field = _field_path(issue["loc"], tagged_unions)
        message, detail = issue["msg"], f", got {issue.get('input')!r}"
        if issue["type"] == "extra_forbidden":
            message, detail = "unknown key (not a setting; check the spelling)", ""
        elif issue["type"] == "missing":
            detail = ""
        elif issue["type"] == "union_tag_invalid":
            context = issue.get("ctx", {})
            message = f"unknown name {context.get('tag')!r}; expected one of {context.get('expected_tags')}"
            detail = ""
        elif isinstance(issue.get("input"), Mapping):
            detail = ""  # a whole section's check: its message names the fields
        lines.append(f"  {field}: {message}{detail}")
    return "\n".join(lines)


def validate(model: type[M], data: Mapping[str, Any], source: str) -> M:
    """``model`` built from ``data``; ConfigError naming each bad field otherwise."""
    try:
        return model.model_validate(data)
    except ValidationError as error:
        tagged_unions: frozenset[str] = getattr(model, "tagged_unions", frozenset())
        raise ConfigError(format_validation_error(error, source, tagged_unions)) from None


def load_config(model: type[M], path: Path | None, overrides: Sequence[str] = ()) -> M:
    """Reads ``path`` (or nothing), applies ``overrides`` and validates the result."""
    data = load_yaml(path) if path is not None else {}
    source = str(path) if path is not None else "defaults"
    if overrides:
        source += " with overrides"
    return validate(model, apply_overrides(data, overrides), source)
