"""The stage manifest: what one training stage reads, so the stage can be reproduced and audited.

A manifest is YAML (or JSON, by file extension) with a fixed key order. It names the stage and
its data settings (Table 8), one source per task with its shards (path, samples, bytes, sha256),
the mixture weights, the seed, and the reports that produced the shards.

Paths are written as given: URIs (`gs://…`, `s3://…`, any fsspec protocol) and absolute paths
unchanged; a relative path is relative to the manifest's own directory, so a manifest moves
together with its shards. `load_manifest` resolves relative paths, so every `ManifestShard.path`
it returns opens with `corpus.shards.read_shard` from any working directory.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import fsspec
import yaml

from corpus.config import yaml_problem
from corpus.schema import TASKS

MANIFEST_VERSION = 1


@dataclass(frozen=True)
class StageSettings:
    image_size: int
    seq_len: int
    packing: bool
    tasks: tuple[str, ...]  # the source tasks a stage may read


# Table 8 (image resolution, LLM sequence length) and Section 3: stage 1 reads image-text pairs
# one per sequence; stage 2 packs same-task samples into sequences of 2048 (Section 3.2);
# stage 3 fine-tunes on dialogues plus pure text (Section 3.3), one dialogue per sequence.
STAGES = {
    1: StageSettings(224, 512, False, ("captioning",)),
    2: StageSettings(448, 2048, True, ("captioning", "vqa", "grounding", "ref_grounding",
                                       "grounded_captioning", "ocr", "text")),
    3: StageSettings(448, 2048, False, ("sft", "text")),
}


class ManifestError(ValueError):
    """A manifest that cannot be built or read; `problems` lists every reason."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


@dataclass
class ManifestShard:
    path: str
    samples: int
    bytes: int
    sha256: str


@dataclass
class ManifestProvenance:
    """Where a source's shards came from: the run report (None for shards found by a glob)."""

    report: str | None
    pipeline: str | None
    dataset: str | None
    config: dict[str, Any] = field(default_factory=dict)


@dataclass
class ManifestSource:
    task: str
    weight: float
    samples: int
    bytes: int
    shards: list[ManifestShard]
    provenance: list[ManifestProvenance] = field(default_factory=list)


@dataclass
class Manifest:
    stage: int
    image_size: int
    seq_len: int
    packing: bool
    seed: int
    tokenizer: str | None
    expected_samples_per_epoch: int
    sources: list[ManifestSource]
    manifest_version: int = MANIFEST_VERSION
    # Not written: the directory relative paths are relative to (the manifest's own directory).
    base_dir: str | None = field(default=None, compare=False, repr=False)

    def resolve(self, path: str) -> str:
        return resolve_path(path, self.base_dir)

    @property
    def total_samples(self) -> int:
        return sum(source.samples for source in self.sources)


def is_uri(path: str) -> bool:
    return "://" in path


def resolve_path(path: str, base_dir: str | None) -> str:
    """A relative local path joined to `base_dir`; URIs and absolute paths unchanged."""
    if is_uri(path) or os.path.isabs(path) or not base_dir:
        return path
    if is_uri(base_dir):
        return f"{base_dir.rstrip('/')}/{path}"
    return os.path.normpath(os.path.join(base_dir, path))


def expected_samples_per_epoch(sources: list[ManifestSource]) -> int:
    """An epoch is as many draws as the sources hold samples; task i gets weight_i of them."""
    return sum(source.samples for source in sources)


# ---- writing ------------------------------------------------------------------------------

TOP_KEYS = ("manifest_version", "stage", "image_size", "seq_len", "packing", "seed", "tokenizer",
            "expected_samples_per_epoch", "sources")
SOURCE_KEYS = ("task", "weight", "samples", "bytes", "shards", "provenance")
SHARD_KEYS = ("path", "samples", "bytes", "sha256")
PROVENANCE_KEYS = ("report", "pipeline", "dataset", "config")


def to_mapping(manifest: Manifest) -> dict[str, Any]:
    """The manifest as plain data, keys in the documented order."""
    def source(s: ManifestSource) -> dict[str, Any]:
        return {"task": s.task, "weight": s.weight, "samples": s.samples, "bytes": s.bytes,
                "shards": [_FlowMapping({k: getattr(sh, k) for k in SHARD_KEYS})
                           for sh in s.shards],
                "provenance": [{k: getattr(p, k) for k in PROVENANCE_KEYS}
                               for p in s.provenance]}

    return {key: ([source(s) for s in manifest.sources] if key == "sources"
                  else getattr(manifest, key)) for key in TOP_KEYS}


class _FlowMapping(dict):
    """A mapping written on one line (`{path: …, samples: …}`), so each shard is one line."""


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(_FlowMapping, lambda dumper, data: dumper.represent_mapping(
    "tag:yaml.org,2002:map", data.items(), flow_style=True))


def dumps(manifest: Manifest, fmt: str = "yaml") -> str:
    mapping = to_mapping(manifest)
    if fmt == "json":
        return json.dumps(mapping, indent=2, ensure_ascii=False) + "\n"
    header = (f"# Qwen-VL stage {manifest.stage} manifest (corpus manifest build). Relative paths "
              "are relative to this file.\n")
    return header + yaml.dump(mapping, Dumper=_Dumper, sort_keys=False, allow_unicode=True,
                              width=1 << 16, default_flow_style=False)


def write_manifest(manifest: Manifest, path: str) -> None:
    """Write YAML, or JSON when `path` ends in `.json`; temp name then rename where local."""
    text = dumps(manifest, "json" if path.endswith(".json") else "yaml")
    if is_uri(path):
        with fsspec.open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


# ---- reading ------------------------------------------------------------------------------

def manifest_dir(path: str) -> str:
    if is_uri(path):
        return path.rsplit("/", 1)[0]
    return os.path.dirname(os.path.abspath(path))


def load_manifest(path: str) -> Manifest:
    """Read and type-check a manifest; shard paths come back resolved (see the module doc)."""
    try:
        with fsspec.open(path, "r", encoding="utf-8") as f:
            document = yaml.safe_load(f)
    except FileNotFoundError:
        raise ManifestError([f"{path}: no such manifest"]) from None
    except yaml.YAMLError as error:
        raise ManifestError([yaml_problem(path, error)]) from None
    manifest = from_mapping(document, where=path)
    base_dir = manifest_dir(path)
    for source in manifest.sources:
        for shard in source.shards:
            shard.path = resolve_path(shard.path, base_dir)
        for provenance in source.provenance:
            if provenance.report is not None:
                provenance.report = resolve_path(provenance.report, base_dir)
    if manifest.tokenizer is not None:
        manifest.tokenizer = resolve_path(manifest.tokenizer, base_dir)
    manifest.base_dir = base_dir
    return manifest


def from_mapping(document: Any, where: str = "manifest") -> Manifest:
    """Build a Manifest from parsed YAML, collecting every structural problem before failing."""
    problems: list[str] = []
    if not isinstance(document, dict):
        raise ManifestError([f"{where}: expected a mapping at the top level"])
    _check_keys(document, TOP_KEYS, where, problems)
    version = document.get("manifest_version")
    if "manifest_version" in document and version != MANIFEST_VERSION:
        problems.append(f"{where}: manifest_version {version!r} is not supported "
                        f"(this reader knows {MANIFEST_VERSION})")
    for key, kind in (("stage", int), ("image_size", int), ("seq_len", int), ("packing", bool),
                      ("seed", int), ("expected_samples_per_epoch", int)):
        if key in document:
            _check_type(document[key], kind, f"{where}: {key}", problems)
    if document.get("tokenizer") is not None:
        _check_type(document["tokenizer"], str, f"{where}: tokenizer", problems)
    raw_sources = document.get("sources")
    if "sources" in document and not isinstance(raw_sources, list):
        problems.append(f"{where}: sources must be a list")
        raw_sources = []
    sources = [_source(raw, f"{where}: sources[{i}]", problems)
               for i, raw in enumerate(raw_sources or [])]
    if problems:
        raise ManifestError(problems)
    return Manifest(stage=document["stage"], image_size=document["image_size"],
                    seq_len=document["seq_len"], packing=document["packing"],
                    seed=document["seed"], tokenizer=document["tokenizer"],
                    expected_samples_per_epoch=document["expected_samples_per_epoch"],
                    sources=sources, manifest_version=document["manifest_version"])


def _source(raw: Any, where: str, problems: list[str]) -> ManifestSource | None:
    if not isinstance(raw, dict):
        problems.append(f"{where}: expected a mapping")
        return None
    _check_keys(raw, SOURCE_KEYS, where, problems)
    where = f"{where} ({raw.get('task')})"
    _check_type(raw.get("task"), str, f"{where}: task", problems)
    _check_type(raw.get("weight"), (int, float), f"{where}: weight", problems)
    for key in ("samples", "bytes"):
        _check_type(raw.get(key), int, f"{where}: {key}", problems)
    shards = []
    for i, shard in enumerate(raw.get("shards") or []):
        shard_where = f"{where}: shards[{i}]"
        if not isinstance(shard, dict):
            problems.append(f"{shard_where}: expected a mapping")
            continue
        _check_keys(shard, SHARD_KEYS, shard_where, problems)
        _check_type(shard.get("path"), str, f"{shard_where}: path", problems)
        _check_type(shard.get("sha256"), str, f"{shard_where}: sha256", problems)
        for key in ("samples", "bytes"):
            _check_type(shard.get(key), int, f"{shard_where}: {key}", problems)
        shards.append(ManifestShard(**{k: shard.get(k) for k in SHARD_KEYS}))
    provenance = []
    for i, entry in enumerate(raw.get("provenance") or []):
        if not isinstance(entry, dict):
            problems.append(f"{where}: provenance[{i}]: expected a mapping")
            continue
        _check_keys(entry, PROVENANCE_KEYS, f"{where}: provenance[{i}]", problems)
        provenance.append(ManifestProvenance(**{k: entry.get(k) for k in PROVENANCE_KEYS}))
    weight = raw.get("weight")
    return ManifestSource(task=raw.get("task"),
                          weight=float(weight) if isinstance(weight, (int, float)) else weight,
                          samples=raw.get("samples"), bytes=raw.get("bytes"), shards=shards,
                          provenance=provenance)


def _check_keys(mapping: dict, keys: tuple[str, ...], where: str, problems: list[str]) -> None:
    missing = [k for k in keys if k not in mapping]
    unknown = sorted(str(k) for k in mapping if k not in keys)
    if missing:
        problems.append(f"{where}: missing key(s) {missing}")
    if unknown:
        problems.append(f"{where}: unknown key(s) {unknown}; known: {list(keys)}")


def _check_type(value: Any, kind, where: str, problems: list[str]) -> None:
    # bool is an int in Python; a count or a stage written as `true` is a typo, not a number
    if isinstance(value, bool) and kind is not bool:
        ok = False
    else:
        ok = isinstance(value, kind)
    if not ok:
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        problems.append(f"{where}: expected {names}, got {value!r}")


# ---- build and validate live in their own modules; these names are the public entry points ----

def build_manifest(stage: int, sources, **options) -> Manifest:
    """See `manifests.build.build_manifest`."""
    from manifests.build import build_manifest as build

    return build(stage, sources, **options)


def validate_manifest(manifest: Manifest, deep: bool = False) -> list[str]:
    """See `manifests.validate.validate_manifest`."""
    from manifests.validate import validate_manifest as validate

    return validate(manifest, deep=deep)


__all__ = ["MANIFEST_VERSION", "STAGES", "TASKS", "Manifest", "ManifestError", "ManifestProvenance",
           "ManifestShard", "ManifestSource", "StageSettings", "build_manifest", "load_manifest",
           "validate_manifest", "write_manifest"]
