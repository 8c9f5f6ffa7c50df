"""Build a stage manifest from pipeline outputs.

A source location is one of:
- a run's output directory: its `report.json` lists the shards with their sample counts and
  bytes, so no sample is read (each shard is still hashed, and its size checked);
- a folder whose sub-folders are run directories (`out/grounding/` holding one run per task);
- a shard file or a glob of shards (`gs://bucket/ocr/*.tar`): samples are counted by reading.
Locations are local paths or any fsspec URI. The task of a source is given (`TASK=LOCATION`)
or taken from the report (or from the samples, for shards found by a glob).

Default mixture weights (stage 2) are proportional to the sample counts of the paper's Table 3.
"""
from __future__ import annotations

import glob
import hashlib
import json
import math
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import fsspec
import orjson
from fsspec.core import url_to_fs

from corpus.report import REPORT_NAME
from corpus.schema import TASKS
from corpus.shards import iter_tar_groups
from manifests.manifest import (STAGES, Manifest, ManifestError, ManifestProvenance,
                                ManifestShard, ManifestSource, expected_samples_per_epoch, is_uri,
                                manifest_dir, resolve_path)

# Table 3, "# Samples" of the multi-task pre-training data, in millions.
TABLE3_SAMPLES_M = {
    "captioning": 19.7,
    "vqa": 3.6,
    "grounding": 3.5,
    "ref_grounding": 8.7,
    "grounded_captioning": 8.7,
    "ocr": 24.8,
    "text": 7.8,  # "Pure-text Autoregression"
}

# Sample tasks a source may hold besides its own label: a grounding run also emits the duality
# tasks of A.3 built from the same records.
EXTRA_SAMPLE_TASKS = {"grounding": ("ref_grounding", "grounded_captioning")}

WEIGHT_DECIMALS = 6
HASH_CHUNK = 1 << 20
HASH_WORKERS = 8  # threads: hashing releases the GIL and remote reads wait on the network
GLOB_CHARS = "*?["


def sample_tasks_allowed(label: str) -> set[str]:
    return {label, *EXTRA_SAMPLE_TASKS.get(label, ())}


@dataclass
class SourceSpec:
    """One `--source`: where the shards are and, optionally, the task they feed."""

    location: str
    task: str | None = None


def parse_source(text: str) -> SourceSpec:
    """`TASK=LOCATION` or just `LOCATION` (the task then comes from the report)."""
    head, sep, tail = text.partition("=")
    if sep and head and not any(c in head for c in "/:\\.*"):
        return SourceSpec(tail, head)
    return SourceSpec(text)


def parse_weight(text: str) -> tuple[str, float]:
    task, sep, value = text.partition("=")
    try:
        weight = float(value)
    except ValueError:
        weight = math.nan
    if not sep or not task or math.isnan(weight):
        raise ManifestError([f"--weight {text!r}: expected TASK=NUMBER, e.g. ocr=0.3"])
    return task, weight


def relative_to_manifest(location: str, manifest_path: str) -> str:
    """How a location given on the command line (relative to the working directory) is written
    into a manifest: relative to the manifest's directory, so both can move together."""
    if is_uri(location) or os.path.isabs(location):
        return location
    if is_uri(manifest_path):
        return os.path.abspath(location)
    return os.path.relpath(os.path.abspath(location), manifest_dir(manifest_path))


# ---- finding shards -----------------------------------------------------------------------

def _join(base: str, name: str) -> str:
    if is_uri(base):
        return f"{base.rstrip('/')}/{name}"
    return os.path.join(base, name)


def path_exists(path: str) -> bool:
    fs, stripped = url_to_fs(path)
    return fs.exists(stripped)


def _isdir(path: str) -> bool:
    fs, stripped = url_to_fs(path)
    return fs.isdir(stripped)


def expand_glob(pattern: str) -> list[str]:
    """Matches of a glob, sorted, spelled with the pattern's own prefix (paths as given)."""
    if not is_uri(pattern):
        return sorted(glob.glob(pattern))
    fs, stripped = url_to_fs(pattern)
    user_static = pattern[:_static_end(pattern)]
    fs_static = stripped[:_static_end(stripped)]
    matches = []
    for found in fs.glob(stripped):
        found = found if found.startswith(fs_static) else found.lstrip("/")
        matches.append(user_static + found[len(fs_static):])
    return sorted(matches)


def _static_end(pattern: str) -> int:
    """Index just after the last '/' before the first glob character."""
    first = min((pattern.index(c) for c in GLOB_CHARS if c in pattern), default=len(pattern))
    return pattern.rfind("/", 0, first) + 1


def find_run_dirs(location: str) -> list[str]:
    """The run directory itself, or the run directories one level below it."""
    if path_exists(_join(location, REPORT_NAME)):
        return [location]
    reports = expand_glob(_join(location, "*/" + REPORT_NAME))
    return [report[: -len(REPORT_NAME) - 1] for report in reports]


def read_report(path: str) -> dict:
    with fsspec.open(path, "r", encoding="utf-8") as f:
        return json.load(f)


def shard_digest(path: str) -> tuple[str, int]:
    """(sha256 hex, size in bytes) of a file, read in chunks."""
    digest, size = hashlib.sha256(), 0
    with fsspec.open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def count_shard(path: str) -> tuple[int, Counter]:
    """Samples in a shard and (task, dataset) counts, from the records (not the images)."""
    kinds: Counter = Counter()
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        with fsspec.open(path, "rb") as f:
            table = pq.read_table(f, columns=["task", "dataset"])
        for task, dataset in zip(table.column("task").to_pylist(),
                                 table.column("dataset").to_pylist()):
            kinds[(task, dataset)] += 1
        return table.num_rows, kinds
    if not path.endswith(".tar"):
        raise ValueError("not a shard (.tar or .parquet)")
    with fsspec.open(path, "rb") as f:
        for group in iter_tar_groups(f):
            if group.error:
                raise ValueError(f"unreadable at {group.key!r}: {group.error}")
            if "json" not in group.members:
                raise ValueError(f"sample {group.key!r} has no .json record")
            record = orjson.loads(group.members["json"])
            kinds[(record.get("task"), record.get("dataset"))] += 1
    return sum(kinds.values()), kinds


# ---- collecting sources -------------------------------------------------------------------

@dataclass
class _Found:
    """Shards of one task found at one location, before hashing."""

    task: str | None
    paths: list[str]  # as written into the manifest
    samples: list[int | None]  # per shard from the report; None = count by reading
    bytes: list[int | None]
    provenance: ManifestProvenance | None
    where: str
    sample_kinds: Counter = field(default_factory=Counter)


def _collect(spec: SourceSpec, base_dir: str | None, problems: list[str]) -> list[_Found]:
    location = resolve_path(spec.location, base_dir)
    if any(c in spec.location for c in GLOB_CHARS) or spec.location.endswith((".tar", ".parquet")):
        matches = expand_glob(location) if any(c in location for c in GLOB_CHARS) else (
            [location] if path_exists(location) else [])
        matches = [m for m in matches if m.endswith((".tar", ".parquet"))]
        if not matches:
            problems.append(f"{spec.location}: no .tar or .parquet shard matches")
            return []
        written = [_as_written(m, spec.location, base_dir) for m in matches]
        return [_Found(spec.task, written, [None] * len(written), [None] * len(written), None,
                       spec.location)]
    run_dirs = find_run_dirs(location) if _isdir(location) else []
    if not run_dirs:
        problems.append(f"{spec.location}: no {REPORT_NAME} there or in its sub-folders "
                        "(give a run's output directory, or a glob of shards)")
        return []
    found = []
    for run_dir in run_dirs:
        written_dir = _as_written(run_dir, spec.location, base_dir)
        report_path = _join(written_dir, REPORT_NAME)
        try:
            report = read_report(_join(run_dir, REPORT_NAME))
        except (OSError, ValueError) as error:
            problems.append(f"{report_path}: unreadable report: {error}")
            continue
        task = report.get("task")
        if spec.task is None and task is None:
            problems.append(f"{report_path}: the report names no task; give it as TASK=LOCATION")
            continue
        if spec.task is not None and spec.task != task and task in TASKS:
            problems.append(f"{report_path}: the report's task is {task!r}, not {spec.task!r} "
                            f"(leave out '{spec.task}=' to take the report's task)")
            continue
        try:
            shards = [(_join(written_dir, s["path"]), int(s["samples"]), int(s["bytes"]))
                      for s in report.get("shards") or []]
        except (KeyError, TypeError, ValueError) as error:
            problems.append(f"{report_path}: malformed shard list ({error!r})")
            continue
        found.append(_Found(
            spec.task or task, [path for path, _, _ in shards],
            [samples for _, samples, _ in shards], [size for _, _, size in shards],
            ManifestProvenance(report_path, report.get("pipeline"), report.get("dataset"),
                               report.get("config") or {}),
            report_path))
    return found


def _as_written(found: str, given: str, base_dir: str | None) -> str:
    """A path found under `given`, spelled the way `given` was (relative stays relative)."""
    if is_uri(given) or os.path.isabs(given) or not base_dir:
        return found
    return os.path.relpath(found, base_dir)


def _hash_and_count(found: list[_Found], base_dir: str | None, problems: list[str]
                    ) -> dict[str, tuple[str, int, int]]:
    """Per written path: (sha256, bytes, samples), hashing shards in parallel, in input order."""
    jobs = [(f, i) for f in found for i in range(len(f.paths))]

    def work(job):
        item, i = job
        path = resolve_path(item.paths[i], base_dir)
        try:
            sha, size = shard_digest(path)
            samples = item.samples[i]
            kinds = Counter()
            if samples is None:
                samples, kinds = count_shard(path)
            return sha, size, samples, kinds, None
        except FileNotFoundError:
            return None, 0, 0, Counter(), "missing"
        except (OSError, ValueError) as error:
            return None, 0, 0, Counter(), f"unreadable: {error}"

    with ThreadPoolExecutor(max_workers=HASH_WORKERS) as pool:
        results = list(pool.map(work, jobs))
    digests = {}
    for (item, i), (sha, size, samples, kinds, error) in zip(jobs, results):
        path = item.paths[i]
        if error:
            problems.append(f"{item.where}: shard {path}: {error}")
            continue
        if item.bytes[i] is not None and item.bytes[i] != size:
            problems.append(f"{item.where}: shard {path} changed since the report: "
                            f"{size} bytes, the report says {item.bytes[i]}")
            continue
        item.sample_kinds.update(kinds)
        digests[path] = (sha, size, samples)
    return digests


def _label_glob_sources(found: list[_Found], problems: list[str]) -> None:
    """Shards found by a glob: their task comes from their samples unless it was given."""
    for item in found:
        if item.provenance is not None:
            continue
        tasks = sorted({task for task, _ in item.sample_kinds}, key=str)
        if item.task is None:
            if len(tasks) == 1:
                item.task = tasks[0]
            elif tasks:
                problems.append(f"{item.where}: the shards hold several tasks {tasks}; "
                                "name the source's task as TASK=LOCATION")
        if item.task is not None:
            stray = [t for t in tasks if t not in sample_tasks_allowed(item.task)]
            if stray:
                problems.append(f"{item.where}: samples of task(s) {stray} in a "
                                f"{item.task!r} source")


def _check_task(task: str | None, stage: int, where: str, problems: list[str]) -> bool:
    if task not in TASKS:
        problems.append(f"{where}: unknown task {task!r}; known: {', '.join(TASKS)}")
        return False
    if task not in STAGES[stage].tasks:
        problems.append(f"{where}: task {task!r} is not allowed in stage {stage} "
                        f"(allowed: {', '.join(STAGES[stage].tasks)})")
        return False
    return True


# ---- weights --------------------------------------------------------------------------------

def default_weights(stage: int, samples: dict[str, int]) -> dict[str, float]:
    """Stage 1: captioning only. Stage 2: Table 3's sample counts, over the tasks present.
    Stage 3: the paper mixes multi-modal and pure-text dialogue (350k in all) without giving
    the split, so the default keeps the mix as built: weight proportional to samples."""
    if stage == 2:
        raw = {task: TABLE3_SAMPLES_M[task] for task in samples}
    else:
        raw = dict(samples)
    return _normalise(raw)


def mix_weights(stage: int, samples: dict[str, int], given: dict[str, float],
                problems: list[str]) -> dict[str, float]:
    """Given weights win; the other tasks share what is left in default proportions.
    Weights given for every task are relative: they are scaled to sum to 1."""
    for task, weight in sorted(given.items()):
        if task not in samples:
            problems.append(f"--weight {task}: no source has task {task!r}")
        if not (math.isfinite(weight) and weight > 0):
            problems.append(f"--weight {task}={weight}: a weight must be a positive number")
    if problems:
        return {}
    if set(given) == set(samples):
        return _normalise(given)
    rest = {t: w for t, w in default_weights(stage, samples).items() if t not in given}
    left = 1.0 - sum(given.values())
    if left <= 0:
        problems.append(f"--weight: the given weights sum to {sum(given.values()):g}, leaving "
                        f"nothing for {', '.join(sorted(rest))}")
        return {}
    scale = left / sum(rest.values())
    return _round({**given, **{t: w * scale for t, w in rest.items()}})


def _normalise(raw: dict[str, float]) -> dict[str, float]:
    total = sum(raw.values())
    return _round({task: value / total for task, value in raw.items()})


def _round(weights: dict[str, float]) -> dict[str, float]:
    return {task: round(weight, WEIGHT_DECIMALS) for task, weight in weights.items()}


# ---- the manifest ---------------------------------------------------------------------------

def build_manifest(stage: int, sources: list[SourceSpec], *,
                   weights: dict[str, float] | None = None, seed: int = 0,
                   tokenizer: str | None = None, image_size: int | None = None,
                   seq_len: int | None = None, packing: bool | None = None,
                   base_dir: str | None = None) -> Manifest:
    """Build (not write) a manifest. Relative locations are relative to `base_dir`, the
    directory the manifest will be written to, and are written relative to it.
    Raises ManifestError listing every problem found."""
    if stage not in STAGES:
        raise ManifestError([f"stage {stage!r}: expected one of {sorted(STAGES)}"])
    if not sources:
        raise ManifestError(["no sources: give at least one --source TASK=DIR_OR_GLOB"])
    problems: list[str] = []
    found: list[_Found] = []
    for spec in sources:
        if spec.task is not None and not _check_task(spec.task, stage, spec.location, problems):
            continue
        found += [f for f in _collect(spec, base_dir, problems)
                  if f.task is None or _check_task(f.task, stage, f.where, problems)]
    digests = _hash_and_count(found, base_dir, problems)
    unlabelled = {id(f) for f in found if f.task is None}
    _label_glob_sources(found, problems)
    found = [f for f in found if id(f) not in unlabelled or f.task is None
             or _check_task(f.task, stage, f.where, problems)]
    by_task = _group(found, digests, problems)
    if problems:
        raise ManifestError(problems)
    samples = {task: sum(s.samples for s in shards) for task, (shards, _) in by_task.items()}
    mixture = mix_weights(stage, samples, dict(weights or {}), problems)
    if problems:
        raise ManifestError(problems)
    manifest_sources = [
        ManifestSource(task=task, weight=mixture[task], samples=samples[task],
                       bytes=sum(s.bytes for s in shards), shards=shards, provenance=provenance)
        for task, (shards, provenance) in sorted(by_task.items())]
    settings = STAGES[stage]
    return Manifest(
        stage=stage,
        image_size=settings.image_size if image_size is None else image_size,
        seq_len=settings.seq_len if seq_len is None else seq_len,
        packing=settings.packing if packing is None else packing,
        seed=seed, tokenizer=tokenizer,
        expected_samples_per_epoch=expected_samples_per_epoch(manifest_sources),
        sources=manifest_sources, base_dir=base_dir)


def _group(found: list[_Found], digests: dict[str, tuple[str, int, int]], problems: list[str]):
    """task -> (shards sorted by path, provenance sorted by report); duplicates and empty
    tasks are problems."""
    shards: dict[str, dict[str, ManifestShard]] = {}
    provenance: dict[str, list[ManifestProvenance]] = {}
    unreadable: set[str] = set()  # tasks with a shard problem reported already
    for item in found:
        if item.task is None:
            continue
        task_shards = shards.setdefault(item.task, {})
        for path in item.paths:
            if any(path in other for other in shards.values()):
                problems.append(f"{item.where}: shard {path} is listed twice")
            elif path not in digests:
                unreadable.add(item.task)
            else:
                sha, size, samples = digests[path]
                task_shards[path] = ManifestShard(path, samples, size, sha)
        entries = provenance.setdefault(item.task, [])
        if item.provenance is not None:
            entries.append(item.provenance)
        else:
            datasets = sorted({d for _, d in item.sample_kinds if d is not None})
            entries += [ManifestProvenance(None, None, d, {}) for d in datasets]
    grouped = {}
    for task, task_shards in shards.items():
        if sum(s.samples for s in task_shards.values()) == 0:
            if task not in unreadable:
                problems.append(f"{task}: no samples (its runs kept nothing)")
            continue
        entries = sorted(provenance[task], key=lambda p: (p.report or "", p.dataset or ""))
        grouped[task] = ([task_shards[p] for p in sorted(task_shards)], entries)
    return grouped
