"""YAML configs read into dataclasses: defaults live on the dataclass, the file overrides them.

A config file may hold a `datasets:` section whose entries override the top level for one
dataset (the paper's CLIP threshold is dataset-specific, for instance). Unknown keys are an error
naming the key, so a typo never silently falls back to a default.
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    pass


def from_mapping(cls: type[T], mapping: dict[str, Any] | None, where: str = "config") -> T:
    """Build dataclass `cls` from a mapping; nested dataclass fields take nested mappings."""
    mapping = dict(mapping or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(mapping) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in mapping.items():
        kind = hints[name]
        if dataclasses.is_dataclass(kind) and isinstance(value, dict):
            value = from_mapping(kind, value, f"{where}.{name}")
        values[name] = value
    try:
        config = cls(**values)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{where}: {error}") from error
    validate = getattr(config, "validate", None)
    if validate is not None:
        validate()
    return config


def load_config(cls: type[T], path: str | None, dataset: str | None = None) -> T:
    """Read `path` (YAML) into `cls`; apply the `datasets: {dataset: …}` override if present."""
    if path is None:
        return from_mapping(cls, {})
    with open(path, encoding="utf-8") as f:
        document = yaml.safe_load(f) or {}
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    overrides = document.pop("datasets", None) or {}
    if dataset is not None and dataset in overrides:
        document = merge(document, overrides[dataset])
    return from_mapping(cls, document, path)


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`base` with `override` laid over it; nested mappings merge key by key."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def to_mapping(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)
