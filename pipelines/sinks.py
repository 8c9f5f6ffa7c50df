"""Where one task's results land: its shard files, its part of the rejects table, its marker.

A run is cut into tasks (`pipelines.tasks`); the process that runs a task writes everything the
task produces itself, so samples never travel through the runner: only a `TaskSummary` (counts,
file names, shard sizes) leaves the task. Task `i` of `n` writes

  shards/TASK-0000i-of-0000n.tar            the kept samples in the order the task made them,
  shards/TASK-0000i-of-0000n-p1.tar, ...    cut into parts of `samples_per_shard` (and 1 GiB)
  rejects/rejects-0000i-of-0000n.parquet    every reject of the task, sorted
  _done/TASK-0000i-of-0000n.json            the marker, written last

so a shard's name and bytes depend only on the task's inputs and the config: any runner and any
number of workers give the same files.

Every file is written under a temporary name of its own and renamed into place, so a reader never
sees half a shard and two attempts at one task (a retry, a speculative copy) never mix bytes.

Resume: the marker holds the task's fingerprint (its inputs' names, sizes and modification times,
the run's config and the project's version), each file's size and sha256, and the task's summary.
A re-run whose task has the same fingerprint and whose files verify skips the task entirely and
reports the stored summary. The report is written last: its presence means the run finished.

A run that chooses among samples of different tasks (the longest caption per image, one copy of
a duplicated document: `Choice`) first stages each task's samples and rejects in a file under
`_spill/` and sends only small keys out; once the choice is made, each task writes its shards
from its staged file (`finish_staged`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import json
import logging
import pickle
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import BeamIOError, CompressionTypes
from apache_beam.io.filesystems import FileSystems

from corpus.report import REPORT_NAME, build_report, dumps
from corpus.schema import IMAGE_FORMATS, Sample
from corpus.shards import SHARD_FORMATS, WRITERS, ShardInfo, tar_members, write_tar_members
from filters.base import Reject
from filters.image_rules import reencoded

REJECT_SCHEMA = pa.schema([(name, pa.string()) for name in
                           ("id", "dataset", "uri", "key", "reason", "status", "detail", "text")])
MAX_SHARD_BYTES = 1 << 30  # a part larger than this is cut, whatever its sample count
MARKER_DIR = "_done"
SPILL_DIR = "_spill"
TMP_INFIX = ".tmp-"

_LOG = logging.getLogger(__name__)


def shard_name(task: str, index: int, count: int, part: int, extension: str) -> str:
    suffix = f"-p{part}" if part else ""
    return f"{_stem(task, index, count)}{suffix}.{extension}"


def _stem(task: str, index: int, count: int) -> str:
    return f"{task}-{index:05d}-of-{count:05d}"


# ---- files: temp name, rename, checksums ------------------------------------------------------

class _HashingWriter:
    """A write-only file that counts and hashes what passes through (tarfile and pyarrow only
    write, flush and close)."""

    def __init__(self, raw):
        self.raw, self.sha256, self.size = raw, hashlib.sha256(), 0

    def write(self, data) -> int:
        self.raw.write(data)
        self.sha256.update(data)
        self.size += len(data)
        return len(data)

    def tell(self) -> int:
        return self.size

    def flush(self):
        self.raw.flush()

    def close(self):
        self.raw.close()

    @property
    def closed(self) -> bool:
        return self.raw.closed

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readable(self) -> bool:
        return False


@dataclass
class WrittenFile:
    name: str  # relative to the run's output directory
    size: int
    sha256: str


def write_atomically(output_dir: str, name: str, write: Callable[[Any], Any]) -> WrittenFile:
    """`write(file)` under a temporary name unique to this attempt, then rename into place."""
    path = FileSystems.join(output_dir, name)
    tmp = f"{path}{TMP_INFIX}{uuid.uuid4().hex}"
    with FileSystems.create(tmp, compression_type=CompressionTypes.UNCOMPRESSED) as raw:
        hashed = _HashingWriter(raw)
        write(hashed)
        hashed.flush()
    try:
        FileSystems.rename([tmp], [path])
    except (BeamIOError, OSError):  # file systems that refuse to replace: delete, then rename
        if FileSystems.exists(path):
            FileSystems.delete([path])
        FileSystems.rename([tmp], [path])
    return WrittenFile(name, hashed.size, hashed.sha256.hexdigest())


def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verified(output_dir: str, written: WrittenFile) -> bool:
    path = FileSystems.join(output_dir, written.name)
    if not FileSystems.exists(path):
        return False
    size = FileSystems.match([path])[0].metadata_list[0].size_in_bytes
    return size == written.size and _file_sha256(path) == written.sha256


@contextlib.contextmanager
def collector_paused():
    """Python's cyclic garbage collector off for a block that builds many objects which all
    stay alive: each collection it would trigger walks every object of the process, and
    rebuilding a task's OCR pages cost five times as much with it on. Nothing built here forms
    cycles; the next collection finds any garbage. Re-enabled by whoever paused it first, so
    concurrent blocks leave it on."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


# ---- what a task reports ---------------------------------------------------------------------

def add_counts(total: dict, more: dict) -> dict:
    """Adds nested counts (`{"kept_languages": {"en": 3}, "lines": 40}`) into `total`."""
    for key, value in more.items():
        if isinstance(value, dict):
            add_counts(total.setdefault(key, {}), value)
        else:
            total[key] = total.get(key, 0) + value
    return total


@dataclass
class Counts:
    """Counts a task's work yields for the report's stats (CLIP score bins, render counts),
    summed over every task; `task` routes them in a run writing several tasks."""

    values: dict
    task: str = ""


@dataclass
class TaskSummary:
    """All that leaves a task: what it counted and what it wrote, for the report."""

    output_dir: str
    index: int
    input: int = 0
    outcomes: dict = field(default_factory=dict)  # "status/reason" -> rejects written
    shards: list = field(default_factory=list)  # ShardInfo of every file, every format
    files: list = field(default_factory=list)  # every other file it wrote or kept
    counts: dict = field(default_factory=dict)
    keys: list = field(default_factory=list)  # a staged task's choice keys (`Choice`)
    fingerprint: str = ""  # a staged task's: what its finishing step's fingerprint builds on
    staged: str = ""  # a staged task's file
    reused: bool = False  # what an earlier run left, found whole: the task was not run again

    def to_json(self) -> dict:
        return {"input": self.input, "outcomes": self.outcomes,
                "shards": [asdict(s) for s in self.shards], "files": self.files,
                "counts": self.counts}

    @classmethod
    def from_json(cls, output_dir: str, index: int, data: dict) -> "TaskSummary":
        return cls(output_dir, index, data["input"], data["outcomes"],
                   [ShardInfo(**s) for s in data["shards"]], data["files"], data["counts"])


# ---- a task's outputs --------------------------------------------------------------------------

@dataclass(frozen=True)
class Choice:
    """One sample kept among those sharing a key, across the whole run: `key(sample)` gives
    (group, rank, member): the member of lowest rank in each group is kept, every other member
    dropped with `reason`. A member is the unit kept or dropped whole (a sample, or all chunks
    of one document)."""

    key: Callable[[Sample], tuple[str, Any, str]]
    reason: str


@dataclass
class ShardImages:
    """The one image format of a task's shards: loaders expect one extension per dataset
    (`to_tuple("jpg", "txt")`), so images of other formats are re-encoded as the shards are
    written; `keep` writes every image as it came."""

    format: str = "jpeg"  # jpeg, png, webp, or keep
    quality: int = 95  # JPEG and WebP

    def validate(self) -> None:
        if self.format not in (*IMAGE_FORMATS, "keep"):
            raise ValueError(f"shard_images.format must be one of {[*IMAGE_FORMATS, 'keep']}, "
                             f"not {self.format!r}")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"shard_images.quality must be 1-100, not {self.quality}")

    def applied(self, sample: Sample) -> Sample:
        """The sample with every image in the one format (the decision recorded)."""
        if self.format == "keep" or all(i.format == self.format for i in sample.images):
            return sample
        changed = [f"{i.format}->{self.format}" for i in sample.images if i.format != self.format]
        images = [i if i.format == self.format else reencoded(i, self.format, self.quality)
                  for i in sample.images]
        quality = "" if self.format == "png" else f" quality {self.quality}"
        return dataclasses.replace(sample, images=images, decisions=sample.decisions + [
            f"image_reencoded: {', '.join(changed)}{quality}"])


@dataclass
class RunSpec:
    """The one description of a run's output that every pipeline fills in: where it goes, in
    which formats and shard sizes, what its report says. A command writing several tasks (GRIT
    into grounding and its duality tasks) fills in one per task."""

    pipeline: str
    dataset: str
    task: str  # the Appendix B task of its samples; names the shards
    output_dir: str
    reason_order: list[str]  # drop reasons in the order the rules run, for the report
    formats: list[str] = field(default_factory=lambda: ["webdataset"])
    samples_per_shard: int = 1000
    config: dict = field(default_factory=dict)  # the config the report records
    stats: dict = field(default_factory=dict)  # fixed stats for the report
    kept_counts: Callable[[Sample], dict] | None = None  # counts summed over kept samples
    finish_stats: Callable[[dict], dict] | None = None  # summed counts -> the report's stats
    choice: Choice | None = None  # one sample among several of the whole run
    images: ShardImages | None = None  # one image format for the shards; None: as they come


class ShardWriter:
    """Writes one task's samples as they come, in parts of `samples_per_shard` samples (and at
    most MAX_SHARD_BYTES), in every format of the run; then its rejects and its marker. Memory
    holds one part at most."""

    def __init__(self, spec: RunSpec, index: int, count: int):
        self.spec, self.index, self.count = spec, index, count
        self.summary = TaskSummary(spec.output_dir, index)
        self.rejects: list[Reject] = []
        self._part: list[tuple[Sample, list]] = []
        self._part_bytes = 0
        self._parts = 0
        self._written: list[WrittenFile] = []

    def input(self, units: int = 1) -> None:
        self.summary.input += units

    def add(self, sample: Sample) -> None:
        try:
            if self.spec.images is not None:
                sample = self.spec.images.applied(sample)
            members = tar_members(sample)
        # no shard writer could hold it (or its image could not be re-encoded)
        except (UnicodeError, ValueError, TypeError, OSError) as error:
            self.reject(Reject.of(sample, "unwritable_sample", "errored",
                                  f"{type(error).__name__}: {error}"[:1000]))
            return
        size = sum(len(data) for _, data in members)
        if self._part and self._part_bytes + size > MAX_SHARD_BYTES:
            self._flush()
        self._part.append((sample, members))
        self._part_bytes += size
        if self.spec.kept_counts is not None:
            add_counts(self.summary.counts, self.spec.kept_counts(sample))
        if len(self._part) >= self.spec.samples_per_shard:
            self._flush()

    def reject(self, reject: Reject) -> None:
        self.rejects.append(reject)

    def add_counts(self, counts: dict) -> None:
        add_counts(self.summary.counts, counts)

    def _flush(self) -> None:
        samples = [sample for sample, _ in self._part]
        members = [sample_members for _, sample_members in self._part]
        for shard_format in self.spec.formats:
            name = "shards/" + shard_name(self.spec.task, self.index, self.count, self._parts,
                                          SHARD_FORMATS[shard_format])
            written = write_atomically(self.spec.output_dir, name,
                                       lambda f, fmt=shard_format: _write_shard(fmt, samples,
                                                                                members, f))
            self._written.append(written)
            self.summary.shards.append(ShardInfo(name, len(samples), written.size))
        self._parts += 1
        self._part, self._part_bytes = [], 0

    def close(self, fingerprint: str) -> TaskSummary:
        """The last part, the rejects, then the marker; returns the task's summary."""
        if self._part:
            self._flush()
        if self.rejects:
            written = _write_rejects(self.spec.output_dir, self.index, self.count, self.rejects)
            self._written.append(written)
            self.summary.files.append(written.name)
            for reject in self.rejects:
                outcome = f"{reject.status}/{reject.reason}"
                self.summary.outcomes[outcome] = self.summary.outcomes.get(outcome, 0) + 1
        marker = _marker_name(self.spec.task, self.index, self.count)
        self.summary.files.append(marker)
        content = {"fingerprint": fingerprint, "files": [asdict(w) for w in self._written],
                   "summary": self.summary.to_json()}
        # Written last: a marker exists only when every file it names is complete.
        write_atomically(self.spec.output_dir, marker,
                         lambda f: f.write(json.dumps(content, indent=1).encode("utf-8")))
        return self.summary


def _write_shard(shard_format: str, samples: list[Sample], members: list, fileobj) -> int:
    """One shard file; a tar from the members already built, other formats from the samples."""
    if shard_format == "webdataset":
        return write_tar_members(members, fileobj)
    return WRITERS[shard_format](samples, fileobj)


def _marker_name(task: str, index: int, count: int) -> str:
    return f"{MARKER_DIR}/{_stem(task, index, count)}.json"


def completed(spec: RunSpec, index: int, count: int, fingerprint: str) -> TaskSummary | None:
    """The stored summary of a task an earlier run finished with the same fingerprint, when
    every file it names is still in place and intact; else None."""
    name = _marker_name(spec.task, index, count)
    path = FileSystems.join(spec.output_dir, name)
    if not FileSystems.exists(path):
        return None
    try:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            marker = json.loads(f.read().decode("utf-8"))
        files = [WrittenFile(**written) for written in marker["files"]]
        summary = TaskSummary.from_json(spec.output_dir, index, marker["summary"])
    except (ValueError, KeyError, TypeError) as error:
        _LOG.warning("ignoring unreadable marker %s: %s", name, error)
        return None
    if marker.get("fingerprint") != fingerprint:
        return None
    if not all(_verified(spec.output_dir, written) for written in files):
        return None
    summary.reused = True
    return summary


# ---- staged tasks (a choice among samples of several tasks) ------------------------------------

class StagedWriter:
    """A task's samples and rejects, pickled in order into a file of this attempt's under
    `_spill/`, and the choice key of each member; `finish_staged` writes the task's shards from
    it. A marker beside it (written last) lets a re-run after a crash skip the staging of the
    tasks that had finished it (`staged_completed`)."""

    def __init__(self, spec: RunSpec, index: int, count: int):
        self.spec, self.index, self.count, self.choice = spec, index, count, spec.choice
        self.summary = TaskSummary(spec.output_dir, index)
        stem = _stem(spec.task, index, count)
        self.summary.staged = FileSystems.join(spec.output_dir, SPILL_DIR,
                                               f"{stem}-{uuid.uuid4().hex}.pkl")
        self._file = FileSystems.create(self.summary.staged,
                                        compression_type=CompressionTypes.UNCOMPRESSED)
        self._size = 0
        self._members: set[str] = set()

    def input(self, units: int = 1) -> None:
        self.summary.input += units

    def _write(self, item) -> None:
        data = pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)
        self._file.write(data)
        self._size += len(data)

    def add(self, sample: Sample) -> None:
        group, rank, member = self.choice.key(sample)
        if member not in self._members:
            self._members.add(member)
            self.summary.keys.append((group, rank, member))
        self._write((member, sample))

    def reject(self, reject: Reject) -> None:
        self._write((None, reject))

    def add_counts(self, counts: dict) -> None:
        add_counts(self.summary.counts, counts)

    def close(self, fingerprint: str) -> TaskSummary:
        self._file.close()
        self.summary.fingerprint = fingerprint
        marker = {"fingerprint": fingerprint, "staged": self.summary.staged, "size": self._size,
                  "summary": self.summary.to_json(), "keys": self.summary.keys}
        write_atomically(self.spec.output_dir, _staged_marker(self.spec, self.index, self.count),
                         lambda f: f.write(pickle.dumps(marker, protocol=pickle.HIGHEST_PROTOCOL)))
        return self.summary


def _staged_marker(spec: RunSpec, index: int, count: int) -> str:
    return f"{SPILL_DIR}/{_stem(spec.task, index, count)}.done"


def staged_completed(spec: RunSpec, index: int, count: int,
                     fingerprint: str) -> TaskSummary | None:
    """The summary of a task staged by an earlier attempt of this run (one that crashed before
    its report) from the same inputs, while its staged file is whole; else None."""
    path = FileSystems.join(spec.output_dir, _staged_marker(spec, index, count))
    if not FileSystems.exists(path):
        return None
    try:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            marker = pickle.loads(f.read())
        staged = FileSystems.match([marker["staged"]])[0].metadata_list
    except (pickle.UnpicklingError, EOFError, KeyError, BeamIOError, OSError) as error:
        _LOG.warning("ignoring unreadable staging marker %s: %s", path, error)
        return None
    if marker["fingerprint"] != fingerprint or not staged or \
            staged[0].size_in_bytes != marker["size"]:
        return None
    summary = TaskSummary.from_json(spec.output_dir, index, marker["summary"])
    summary.keys, summary.fingerprint, summary.staged = marker["keys"], fingerprint, \
        marker["staged"]
    summary.reused = True
    return summary


def _staged_items(path: str) -> Iterator[tuple[str | None, Sample | Reject]]:
    # a fresh unpickler per item: one reused across pickles resolves memo references against
    # the previous pickle's objects
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        while True:
            try:
                with collector_paused():
                    yield pickle.load(f)
            except EOFError:
                return


def finish_staged(spec: RunSpec, index: int, count: int, staged: str, losers: dict[str, str],
                  fingerprint: str) -> TaskSummary:
    """Writes a staged task's shards, dropping the members that lost the choice (`losers`:
    member -> the member kept instead). The fingerprint covers the losers, so a re-run that
    makes the same choice keeps the files an earlier run wrote."""
    done = completed(spec, index, count, fingerprint)
    if done is not None:
        return _without_input(done)
    writer = ShardWriter(spec, index, count)
    for member, item in _staged_items(staged):
        if member is None:
            writer.reject(item)
        elif member in losers:
            writer.reject(Reject.of(item, spec.choice.reason, detail=f"kept {losers[member]}"))
        else:
            writer.add(item)
    return _without_input(writer.close(fingerprint))


def _without_input(summary: TaskSummary) -> TaskSummary:
    summary.input = 0  # the staging step counted the task's input
    return summary


def choose(grouped: tuple[str, list]) -> Iterator[tuple[int, tuple[str, str]]]:
    """(task, (member, kept member)) for every member of a group but the one of lowest rank;
    ties go to the smallest member, so the choice does not depend on arrival order."""
    _, members = grouped
    if len(members) < 2:
        return
    ranked = sorted(members, key=lambda m: (m[1], m[2]))
    kept = ranked[0][2]
    for task, _, member in ranked[1:]:
        yield task, (member, kept)


# ---- rejects --------------------------------------------------------------------------------

def _utf8(value: str) -> str:
    """The value, with anything UTF-8 cannot hold (lone surrogates of undecodable input)
    escaped, so the rejects table can always be written."""
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        return value.encode("utf-8", "backslashreplace").decode("utf-8")


def _reject_row(reject: Reject) -> dict:
    # the schema's columns are the Reject's fields, all flat: no `asdict` deep copy needed
    return {name: _utf8(str(getattr(reject, name))) for name in REJECT_SCHEMA.names}


def _reject_row_key(row: dict) -> tuple:
    return tuple(row[name] for name in REJECT_SCHEMA.names)


def _write_rejects(output_dir: str, index: int, count: int, rejects: list[Reject]) -> WrittenFile:
    # The full row is the sort key, so rejects sharing an id and reason still come out in one
    # order whatever order the task met them in.
    rows = sorted((_reject_row(r) for r in rejects), key=_reject_row_key)
    name = f"rejects/rejects-{index:05d}-of-{count:05d}.parquet"
    return write_atomically(output_dir, name, lambda f: pq.write_table(
        pa.Table.from_pylist(rows, schema=REJECT_SCHEMA), f, compression="zstd"))


# ---- report ---------------------------------------------------------------------------------

def _list_names(output_dir: str, folder: str) -> list[str]:
    pattern = FileSystems.join(output_dir, folder, "*") if folder else FileSystems.join(
        output_dir, "*")
    prefix = FileSystems.join(output_dir, "")
    return [m.path[len(prefix):] for m in FileSystems.match([pattern])[0].metadata_list]


def _stale_files(output_dir: str, task: str, produced: set[str]) -> list[str]:
    """Files an earlier attempt left that this run did not produce: other task counts,
    temporary files of killed writers, old markers."""
    stale = []
    for folder, prefix in (("shards", f"{task}-"), ("rejects", "rejects-"),
                           (MARKER_DIR, f"{task}-")):
        for name in _list_names(output_dir, folder):
            base = name.rsplit("/", 1)[-1]
            if name not in produced and (base.startswith(prefix) or TMP_INFIX in base):
                stale.append(name)
    stale += [name for name in _list_names(output_dir, "")
              if name.startswith(REPORT_NAME + TMP_INFIX)]
    return sorted(stale)


def _remove_spill(output_dir: str) -> None:
    """The staged files, then their folder where the file system has folders (object stores
    have none left once the files are gone)."""
    spilled = [FileSystems.join(output_dir, name) for name in _list_names(output_dir, SPILL_DIR)]
    if spilled:
        FileSystems.delete(spilled)
    folder = FileSystems.join(output_dir, SPILL_DIR)
    if FileSystems.exists(folder):
        FileSystems.delete([folder])


def write_report(spec: RunSpec, summaries: list[TaskSummary]) -> dict:
    """Sums the task summaries into `report.json`, after removing the files of earlier runs
    that this run did not produce and the staged files."""
    counts: dict = {}
    outcomes: Counter = Counter()
    shards, produced, input_count = [], set(), 0
    for summary in summaries:
        input_count += summary.input
        outcomes.update(summary.outcomes)
        add_counts(counts, summary.counts)
        shards += summary.shards
        produced |= {s.path for s in summary.shards} | set(summary.files)
    stats = {**spec.stats, **(spec.finish_stats(counts) if spec.finish_stats else counts)}
    primary = "." + SHARD_FORMATS[spec.formats[0]]
    outcome_counts = {tuple(outcome.split("/", 1)): n for outcome, n in outcomes.items()}
    report = build_report(pipeline=spec.pipeline, dataset=spec.dataset, task=spec.task,
                          input_count=input_count, outcome_counts=outcome_counts,
                          shards=[s for s in shards if s.path.endswith(primary)],
                          reason_order=spec.reason_order, stats=stats, config=spec.config)
    report["other_shards"] = [asdict(s) for s in sorted(shards, key=lambda s: s.path)
                              if not s.path.endswith(primary)]
    # the tasks that wrote shards (a staged task also reports its staging), and those of them
    # whose shards an earlier run of the same inputs had written
    writing = [summary for summary in summaries if not summary.staged]
    report["task_count"] = len(writing)
    report["tasks_reused"] = sum(summary.reused for summary in writing)
    stale = _stale_files(spec.output_dir, spec.task, produced)
    if stale:
        _LOG.info("removing %d file(s) of earlier runs: %s", len(stale), stale[:5])
        FileSystems.delete([FileSystems.join(spec.output_dir, name) for name in stale])
    _remove_spill(spec.output_dir)  # every task is written by now
    write_atomically(spec.output_dir, REPORT_NAME,
                     lambda f: f.write(dumps(report).encode("utf-8")))
    return report
