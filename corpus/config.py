"""YAML configs read into dataclasses: defaults live on the dataclass, the file overrides them.

Layers, from the least specific: the dataclass's defaults, the config file's top level, the
dataset's profile (`corpus.profiles`), the file's `datasets: {NAME: ...}` entry. Unknown keys are
an error naming the key, so a typo never silently falls back to a default.
"""
from __future__ import annotations

import dataclasses
import logging
import types
import typing
from typing import Any, TypeVar

import yaml

T = TypeVar("T")
log = logging.getLogger(__name__)


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
        elif not _fits(value, kind):
            raise ConfigError(f"{where}.{name}: expected {_type_name(kind)}, got {value!r}")
        values[name] = value
    try:
        config = cls(**values)
        validate = getattr(config, "validate", None)
        if validate is not None:
            validate()
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{where}: {error}") from error
    return config


def _fits(value: Any, kind: Any) -> bool:
    """Whether a config value has the field's declared type (containers checked one level
    deep; a type this does not know passes, the dataclass's own `validate` has the last word)."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is Any:
        return True
    if kind is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in args)
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is str:
        return isinstance(value, str)
    if dataclasses.is_dataclass(kind):
        return isinstance(value, kind)
    if kind in (list, tuple) or origin in (list, tuple):
        return isinstance(value, (list, tuple)) and (
            not args or origin is tuple or all(_fits(item, args[0]) for item in value))
    if kind is dict or origin is dict:
        return isinstance(value, dict)
    return True


def _type_name(kind: Any) -> str:
    if dataclasses.is_dataclass(kind):
        return "a mapping"
    return getattr(kind, "__name__", None) if not typing.get_args(kind) else \
        str(kind).replace("typing.", "")


def load_config(cls: type[T], path: str | None, dataset: str | None = None,
                profile: dict[str, Any] | None = None) -> T:
    """Read `path` (YAML) into `cls`, with the dataset's `profile` settings over its top level
    and its `datasets: {dataset: …}` entry over both."""
    document, override = {}, {}
    if path is not None:
        document = read_yaml_mapping(path)
        entries = document.pop("datasets", None) or {}
        override = entries.get(dataset) or {}
        if entries and dataset not in entries:  # a misspelt name would otherwise go unseen
            log.warning("%s: `datasets:` entries %s do not apply to --dataset %s", path,
                        ", ".join(sorted(map(str, entries))), dataset)
    shadowed = differing_keys(document, profile or {})
    if shadowed:
        log.warning("the profile of %r sets %s over the top level of %s; to change them, set "
                    "them under `datasets: %s:`", dataset, ", ".join(shadowed), path, dataset)
    return from_mapping(cls, merge(merge(document, profile or {}), override), path or "config")


def read_yaml_mapping(path: str) -> dict[str, Any]:
    """A YAML file whose top level is a mapping (an empty file is an empty one); a syntax error
    is a ConfigError naming the file, line and column."""
    with open(path, encoding="utf-8") as f:
        try:
            document = yaml.safe_load(f) or {}
        except yaml.YAMLError as error:
            raise ConfigError(yaml_problem(path, error)) from None
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return document


def yaml_problem(path: str, error: yaml.YAMLError) -> str:
    """`path:line:column: problem` of a YAML syntax error, in one line."""
    mark = getattr(error, "problem_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else path
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    return f"{where}: invalid YAML: {problem}"


def differing_keys(base: dict[str, Any], override: dict[str, Any], prefix: str = "") -> list[str]:
    """The dotted keys that `override` sets to another value than `base` does."""
    keys = []
    for key, value in override.items():
        if key not in base:
            continue
        if isinstance(value, dict) and isinstance(base[key], dict):
            keys += differing_keys(base[key], value, f"{prefix}{key}.")
        elif base[key] != value:
            keys.append(f"{prefix}{key}")
    return keys


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
