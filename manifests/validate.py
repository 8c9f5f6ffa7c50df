"""Check a manifest against its stage and its shards; every problem is listed, none is fatal.

Checked: the stage and its settings, each task known, allowed in the stage, listed once, sorted
and not empty; weights positive and summing to 1; counts adding up; every shard present with
the recorded size and sha256. `deep=True` also reads every shard: sample counts, and each
sample's own task against its source's task.
"""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

from corpus.schema import TASKS
from manifests.build import (HASH_WORKERS, count_shard, path_exists, sample_tasks_allowed,
                             shard_digest)
from manifests.manifest import MANIFEST_VERSION, STAGES, Manifest, expected_samples_per_epoch

WEIGHT_TOLERANCE = 1e-5  # weights are written with 6 decimals


def validate_manifest(manifest: Manifest, deep: bool = False) -> list[str]:
    problems: list[str] = []
    _check_settings(manifest, problems)
    _check_sources(manifest, problems)
    _check_shards(manifest, deep, problems)
    return problems


def _check_settings(manifest: Manifest, problems: list[str]) -> None:
    if manifest.manifest_version != MANIFEST_VERSION:
        problems.append(f"manifest_version {manifest.manifest_version}: expected "
                        f"{MANIFEST_VERSION}")
    if manifest.stage not in STAGES:
        problems.append(f"stage {manifest.stage}: expected one of {sorted(STAGES)}")
    for key in ("image_size", "seq_len"):
        if getattr(manifest, key) <= 0:
            problems.append(f"{key} {getattr(manifest, key)}: must be positive")
    if manifest.seed < 0:
        problems.append(f"seed {manifest.seed}: must be zero or positive")
    tokenizer = manifest.tokenizer
    if tokenizer is not None and not path_exists(manifest.resolve(tokenizer)):
        problems.append(f"tokenizer {tokenizer}: not found")
    expected = expected_samples_per_epoch(manifest.sources)
    if manifest.expected_samples_per_epoch != expected:
        problems.append(f"expected_samples_per_epoch {manifest.expected_samples_per_epoch}: "
                        f"the sources hold {expected}")


def _check_sources(manifest: Manifest, problems: list[str]) -> None:
    if not manifest.sources:
        problems.append("no sources")
        return
    tasks = [source.task for source in manifest.sources]
    if tasks != sorted(tasks):
        problems.append(f"sources are not sorted by task: {tasks}")
    for task in sorted({t for t in tasks if tasks.count(t) > 1}):
        problems.append(f"{task}: listed {tasks.count(task)} times; one source per task")
    allowed = STAGES[manifest.stage].tasks if manifest.stage in STAGES else TASKS
    seen_paths: set[str] = set()
    for source in manifest.sources:
        where = source.task
        if source.task not in TASKS:
            problems.append(f"{where}: unknown task; known: {', '.join(TASKS)}")
        elif source.task not in allowed:
            problems.append(f"{where}: not allowed in stage {manifest.stage} "
                            f"(allowed: {', '.join(allowed)})")
        if not (math.isfinite(source.weight) and source.weight > 0):
            problems.append(f"{where}: weight {source.weight} must be a positive number")
        if not source.shards or source.samples <= 0:
            problems.append(f"{where}: empty (no shards or no samples)")
        shard_samples = sum(s.samples for s in source.shards)
        shard_bytes = sum(s.bytes for s in source.shards)
        if source.samples != shard_samples:
            problems.append(f"{where}: samples {source.samples} but its shards hold "
                            f"{shard_samples}")
        if source.bytes != shard_bytes:
            problems.append(f"{where}: bytes {source.bytes} but its shards hold {shard_bytes}")
        for shard in source.shards:
            if shard.path in seen_paths:
                problems.append(f"{where}: shard {shard.path} is listed twice")
            seen_paths.add(shard.path)
    total = sum(s.weight for s in manifest.sources if math.isfinite(s.weight))
    if abs(total - 1.0) > WEIGHT_TOLERANCE:
        problems.append(f"weights sum to {total:.6f}, not 1")


def _check_shards(manifest: Manifest, deep: bool, problems: list[str]) -> None:
    jobs = [(source, shard) for source in manifest.sources for shard in source.shards]

    def check(job) -> list[str]:
        source, shard = job
        path = manifest.resolve(shard.path)
        where = f"{source.task}: shard {shard.path}"
        try:
            sha, size = shard_digest(path)
        except FileNotFoundError:
            return [f"{where}: missing"]
        except OSError as error:
            return [f"{where}: unreadable: {error}"]
        found = []
        if size != shard.bytes:
            found.append(f"{where}: changed: {size} bytes, the manifest says {shard.bytes}")
        if sha != shard.sha256:
            found.append(f"{where}: changed: sha256 {sha[:12]}…, the manifest says "
                         f"{shard.sha256[:12]}…")
        if deep:
            found += _read_back(source.task, shard, path, where)
        return found

    with ThreadPoolExecutor(max_workers=HASH_WORKERS) as pool:
        for found in pool.map(check, jobs):
            problems.extend(found)


def _read_back(task: str, shard, path: str, where: str) -> list[str]:
    try:
        samples, kinds = count_shard(path)
    except (OSError, ValueError) as error:
        return [f"{where}: unreadable: {error}"]
    found = []
    if samples != shard.samples:
        found.append(f"{where}: holds {samples} samples, the manifest says {shard.samples}")
    stray = sorted({t for t, _ in kinds if t not in sample_tasks_allowed(task)}, key=str)
    if stray:
        found.append(f"{where}: holds samples of task(s) {stray} in a {task!r} source")
    return found
