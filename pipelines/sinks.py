"""Where a pipeline's results land: shards, the rejects table and `report.json`.

Samples do not travel through the runner's shuffle: each worker appends the samples it produces
to a spill file of its own under `_spill/` in the output directory, and only their places (file,
offset, length, bucket number) are grouped. The writer of a bucket reads its samples back. A
runner's shuffle then moves a few dozen bytes per sample instead of its image, the DirectRunner,
which holds a shuffle in memory, keeps memory flat, and a pipeline that already writes its
samples to files as it reads (`corpus pairs`) hands the sink one element per input file. The
spill files are deleted when the report is written.

Why not Beam's `WriteToText`/`fileio`: they do temp-then-finalize, but spread records over
shards in an order that depends on the runner and its bundling, so re-runs differ byte for byte.
Here the shard of a sample is a function of its id (`corpus.ids.bucket_of`), the number of
shards a function of the kept count, and samples are sorted by id inside a shard; the rejects
travel with the samples, keyed by their ids into the same buckets, and each bucket writes its
part of the rejects table beside its shard (one grouping for both); each file is
written under a temporary name of its own and renamed into place, so a reader never sees half a
shard and two attempts at the same bucket (a retry, a speculative copy) cannot mix their bytes.

The graph uses no side input, no multi-output ParDo and no `CombineGlobally`: every runner,
the Dask runner included, runs it the same way (docs/running-at-scale.md says why).

Resume: when a bucket's files are in place, a marker `_done/<shard name>.json` is written last,
holding each file's size and sha256 and a digest of the bucket's content. A re-run into the same
directory recomputes the samples (Beam keeps nothing between runs), but for each bucket whose
marker matches the same content and whose files verify, it keeps the files and skips encoding and
writing them. Files of earlier runs that the current run does not produce are removed before the
report, and the report is written last: its presence means the run finished.
"""
from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import math
import pickle
import uuid
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any, Callable

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import BeamIOError, CompressionTypes
from apache_beam.io.filesystems import FileSystems

from corpus.ids import id_number
from corpus.report import REPORT_NAME, build_report, dumps
from corpus.schema import Sample
from corpus.shards import SHARD_FORMATS, WRITERS, ShardInfo, tar_members, write_tar_members
from filters.base import Reject

REJECT_SCHEMA = pa.schema([(name, pa.string()) for name in
                           ("id", "dataset", "uri", "key", "reason", "status", "detail", "text")])
REJECTS_PER_FILE = 200_000
MAX_SHARD_BYTES = 1 << 30  # a bucket larger than this is split into parts
MARKER_DIR = "_done"
SPILL_DIR = "_spill"
JOIN_KEYS = 256  # how many groups carry the total count to the elements (see GroupIntoBuckets)
TMP_INFIX = ".tmp-"

_LOG = logging.getLogger(__name__)


def shard_name(task: str, bucket: int, num_buckets: int, part: int, extension: str) -> str:
    suffix = f"-p{part}" if part else ""
    return f"{task}-{bucket:05d}-of-{num_buckets:05d}{suffix}.{extension}"


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


# ---- grouping without side inputs -------------------------------------------------------------

@dataclass(frozen=True)
class _Total:
    kind: str
    count: int


def _one(_) -> int:
    return 1


class CountAll(beam.PTransform):
    """At most one int: how many elements the input PCollection(s) hold, nothing when they are
    empty (consumers read a missing count as 0); with `size`, the sum of `size(element)` (an
    element standing for several units).

    Formulated as a sum per constant int key, instead of `CombineGlobally`, whose empty-input
    default is injected through a side input."""

    def __init__(self, size: Callable[[Any], int] = _one):
        super().__init__()
        self.size = size

    def expand(self, pcolls):
        if isinstance(pcolls, beam.pvalue.PCollection):
            pcolls = (pcolls,)
        size = self.size
        sizes = [pc | f"Ones{i}" >> beam.Map(lambda e: (0, size(e))) for i, pc in enumerate(pcolls)]
        sizes = sizes[0] if len(sizes) == 1 else tuple(sizes) | "Flatten" >> beam.Flatten()
        return sizes | "Sum" >> beam.CombinePerKey(sum) | "Value" >> beam.Values()


def _buckets_for(count: int, per_bucket: int) -> int:
    return math.ceil(count / per_bucket)


class ById:
    """Bucketing of plain elements: `ceil(count / per_bucket)` buckets (at least one),
    `bucket = number(element) % num_buckets`."""

    def __init__(self, per_bucket: int, number: Callable[[Any], int]):
        self.per_bucket, self.number = per_bucket, number

    def kind_size(self, element) -> tuple[str, int]:
        return "elements", 1

    def num_buckets(self, totals: dict[str, int]) -> int:
        return max(1, _buckets_for(totals.get("elements", 0), self.per_bucket))

    def join_number(self, element) -> int:
        return self.number(element)

    def cut(self, element, buckets: int):
        yield self.number(element) % buckets, element


class BySpill(ById):
    """Bucketing of spill chunks (`SpillChunk`: a file and the places of several samples in
    it): each counts as its samples and is cut by bucket, so a bucket's elements are the pieces
    of chunks holding its samples."""

    def __init__(self, per_bucket: int):
        super().__init__(per_bucket, _chunk_number)

    def kind_size(self, chunk) -> tuple[str, int]:
        return "elements", chunk_size(chunk)

    def cut(self, chunk, buckets: int):
        yield from cut_chunk(chunk, buckets)


class ByRun(BySpill):
    """Bucketing of a run: spill chunks of its samples and its rejects together, so that each
    bucket writes its shard and its part of the rejects table in one step. The bucket count
    follows the samples, and the rejects where they would make a part larger than
    `rejects_per_bucket`."""

    def __init__(self, per_bucket: int, rejects_per_bucket: int):
        super().__init__(per_bucket)
        self.rejects_per_bucket = rejects_per_bucket

    def kind_size(self, element) -> tuple[str, int]:
        if isinstance(element, Reject):
            return "rejects", 1
        return super().kind_size(element)

    def num_buckets(self, totals: dict[str, int]) -> int:
        return max(1, super().num_buckets(totals),
                   _buckets_for(totals.get("rejects", 0), self.rejects_per_bucket))

    def join_number(self, element) -> int:
        return id_number(element.id) if isinstance(element, Reject) else _chunk_number(element)

    def cut(self, element, buckets: int):
        if isinstance(element, Reject):
            yield id_number(element.id) % buckets, element
        else:
            yield from cut_chunk(element, buckets)


class GroupIntoBuckets(beam.PTransform):
    """(bucket, num_buckets, elements), the buckets as `bucketing` (`ById`, `BySpill`, `ByRun`)
    derives them from the totals of the input.

    The totals reach the elements by a join, not a side input: they are copied to JOIN_KEYS
    keys, grouped with the elements keyed the same way, and each group then keys its elements
    by bucket for the final grouping. This costs one more shuffle than a side input would, and
    works the same on every runner."""

    def __init__(self, bucketing):
        super().__init__()
        self.bucketing = bucketing

    def expand(self, pcoll):
        bucketing = self.bucketing

        def spread(kind_total):
            return [(j, _Total(*kind_total)) for j in range(JOIN_KEYS)]

        def to_buckets(joined):
            # Two passes over the group rather than a list: runners that page large groups from
            # their shuffle (Dataflow, Flink, Spark) then never hold one in memory.
            _, values = joined
            totals = [v for v in values if isinstance(v, _Total)]
            by_kind = {t.kind: t.count for t in totals}
            if len(by_kind) != len(totals):
                raise AssertionError(f"expected one total per kind and join key, got {totals}")
            buckets = bucketing.num_buckets(by_kind)
            for value in values:
                if not isinstance(value, _Total):
                    for bucket, piece in bucketing.cut(value, buckets):
                        yield (bucket, buckets), piece

        totals = (pcoll | "Sizes" >> beam.Map(bucketing.kind_size)
                  | "Count" >> beam.CombinePerKey(sum) | "Spread" >> beam.FlatMap(spread))
        keyed = pcoll | "JoinKey" >> beam.Map(lambda e: (bucketing.join_number(e) % JOIN_KEYS, e))
        return ((totals, keyed) | "Gather" >> beam.Flatten()
                | "Join" >> beam.GroupByKey()
                | "KeyByBucket" >> beam.FlatMap(to_buckets)
                | "Group" >> beam.GroupByKey()
                | "Unpack" >> beam.MapTuple(lambda key, items: (key[0], key[1], list(items))))


# ---- spill files --------------------------------------------------------------------------------

# A spill chunk: (path of a spill file, [(bucket number, offset, length), ...]), plain tuples so
# that every runner encodes them with its fast coder.
SpillChunk = tuple


def chunk_size(chunk: SpillChunk) -> int:
    """How many samples a spill chunk holds."""
    return len(chunk[1])


def _chunk_number(chunk: SpillChunk) -> int:
    return chunk[1][0][0]


def cut_chunk(chunk: SpillChunk, buckets: int):
    """(bucket, piece of the chunk holding that bucket's samples) for each bucket it touches."""
    path, places = chunk
    by_bucket: dict[int, list] = {}
    for place in places:
        by_bucket.setdefault(place[0] % buckets, []).append(place)
    for bucket, bucket_places in sorted(by_bucket.items()):
        yield bucket, (path, bucket_places)


class SpillFile:
    """An append-only file of pickled samples under the run's `_spill/` folder, private to the
    worker that writes it (a name of its own per attempt, so a retried bundle never mixes its
    bytes with the failed attempt's); `add` returns where the sample went."""

    def __init__(self, output_dir: str):
        self.path = FileSystems.join(output_dir, SPILL_DIR, f"{uuid.uuid4().hex}.pkl")
        self._file = FileSystems.create(self.path, compression_type=CompressionTypes.UNCOMPRESSED)
        self._size = 0

    def add(self, sample: Sample, number: int) -> tuple[int, int, int]:
        data = pickle.dumps(sample, protocol=pickle.HIGHEST_PROTOCOL)
        self._file.write(data)
        place = (number, self._size, len(data))
        self._size += len(data)
        return place

    def close(self) -> None:
        self._file.close()


@contextlib.contextmanager
def collector_paused():
    """Python's cyclic garbage collector off for a block that builds many objects which all
    stay alive: each collection it would trigger walks every object of the process (a Beam
    worker holds hundreds of thousands), and rebuilding a bucket of OCR pages cost five times
    as much with it on. Nothing built here forms cycles; the next collection finds any garbage.
    Re-enabled by whoever paused it first, so concurrent blocks leave it on."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def read_spilled(pieces) -> list[Sample]:
    """The samples of some spill chunk pieces, each file opened once and read in order."""
    places_by_path: dict[str, list] = {}
    for path, places in pieces:
        places_by_path.setdefault(path, []).extend(places)
    samples = []
    with collector_paused():
        for path in sorted(places_by_path):
            with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
                for _, offset, length in sorted(places_by_path[path], key=lambda p: p[1]):
                    f.seek(offset)
                    samples.append(pickle.loads(f.read(length)))
    return samples


class SpillSamples(beam.DoFn):
    """Samples -> spill chunks of one sample each, in one spill file per bundle (closed when
    the bundle finishes, before any reader can see the chunks: a bundle's outputs reach the
    next grouping only once it is done). A step that makes samples can subclass it and
    `spill` them itself, emitting one chunk for many."""

    def __init__(self, output_dir: str, number: Callable[[Sample], int] | None = None):
        self.output_dir, self.number = output_dir, number or sample_number
        self._spill = None

    def start_bundle(self):
        self._spill = None

    def spill(self, sample: Sample) -> tuple[str, tuple[int, int, int]]:
        """(spill file, place) of the sample, appended to this bundle's spill file."""
        if self._spill is None:
            self._spill = SpillFile(self.output_dir)
        return self._spill.path, self._spill.add(sample, self.number(sample))

    def process(self, sample: Sample):
        path, place = self.spill(sample)
        yield path, [place]

    def finish_bundle(self):
        if self._spill is not None:
            self._spill.close()
            self._spill = None


# ---- shards ---------------------------------------------------------------------------------

def _digest_start(formats: list[str]):
    """A bucket's content digest covers the formats, the Parquet library's version (its bytes
    may change with it) and every tar member of its samples, in order."""
    return hashlib.sha256(json.dumps([formats, MAX_SHARD_BYTES, pa.__version__]).encode("utf-8"))


def _writable(samples: list[Sample], formats: list[str]):
    """(samples, tar members of each, rejects, content digest): the tar members of each sample
    are built once here and serve the digest, the size split and the tar writer. A sample the
    writers would fail on (text that is not valid Unicode, a record JSON cannot hold) becomes an
    errored reject instead of stopping the run inside a shard writer."""
    digest, kept, members_of, rejects = _digest_start(formats), [], [], []
    for sample in samples:
        try:
            members = tar_members(sample)
        except (UnicodeError, ValueError, TypeError) as error:
            rejects.append(Reject.of(sample, "unwritable_sample", "errored",
                                     f"{type(error).__name__}: {error}"[:1000]))
            continue
        for name, data in members:
            encoded = name.encode("utf-8")
            for part in (len(encoded).to_bytes(8, "little"), encoded,
                         len(data).to_bytes(8, "little"), data):
                digest.update(part)
        kept.append(sample)
        members_of.append(members)
    return kept, members_of, rejects, digest.hexdigest()


def _write_shard(shard_format: str, samples: list[Sample], members: list, fileobj) -> int:
    """One shard file; a tar from the members already built, other formats from the samples."""
    if shard_format == "webdataset":
        return write_tar_members(members, fileobj)
    return WRITERS[shard_format](samples, fileobj)


def _marker_name(task: str, bucket: int, num_buckets: int) -> str:
    return f"{MARKER_DIR}/{task}-{bucket:05d}-of-{num_buckets:05d}.json"


@dataclass(frozen=True)
class _Tally:
    """Counts of a value over the kept samples of one bucket (`write_run`'s `tally`)."""

    counts: dict


@dataclass(frozen=True)
class _Outcomes:
    """Counts of the rejects one bucket wrote, by (status, reason): every reject, whether the
    pipeline or the writer made it, is in exactly one bucket's part of the rejects table."""

    counts: dict


Select = Callable[[list[Sample]], tuple[list[Sample], list[Reject]]]


class WriteShardBucket(beam.DoFn):
    """Writes one bucket of a run: reads its samples back from the spill files, lets `select`
    drop some (a choice among samples sharing a bucket key), writes the rest sorted by id as
    one or more files per format and then its completion marker (or keeps the files of an
    earlier run when its marker verifies), and writes the bucket's part of the rejects table.
    Emits shard infos, the files it produced, tallies and the counts of the rejects it wrote."""

    def __init__(self, output_dir: str, task: str, formats: list[str],
                 select: Select | None = None, tally: Callable[[Sample], str] | None = None):
        self.output_dir, self.task, self.formats = output_dir, task, formats
        self.select, self.tally = select, tally

    def process(self, element):
        bucket, num_buckets, pieces = element
        rejects = [piece for piece in pieces if isinstance(piece, Reject)]
        samples = read_spilled([piece for piece in pieces if not isinstance(piece, Reject)])
        made = []
        if self.select is not None:
            samples, made = self.select(samples)
        samples = sorted(samples, key=lambda s: (s.id, s.text))
        samples, members, unwritable, content = _writable(samples, self.formats)
        written_rejects = rejects + made + unwritable
        if written_rejects:
            yield _OutputFile(_write_rejects(self.output_dir, bucket, num_buckets,
                                             written_rejects))
            yield _Outcomes(dict(Counter((r.status, r.reason) for r in written_rejects)))
        if samples:
            yield from self._write_samples(bucket, num_buckets, samples, members, content)

    def _write_samples(self, bucket, num_buckets, samples, members, content):
        if self.tally is not None:
            yield _Tally(dict(Counter(map(self.tally, samples))))
        marker_name = _marker_name(self.task, bucket, num_buckets)
        done = self._completed(marker_name, content)
        if done is None:
            done = self._write(bucket, num_buckets, samples, members, content, marker_name)
        else:
            _LOG.info("kept %s: marker and files verified", marker_name)
        for shard in done["shards"]:
            yield ShardInfo(path=shard["name"], samples=shard["samples"], bytes=shard["size"])
        yield _OutputFile(marker_name)

    def _completed(self, marker_name: str, content: str) -> dict | None:
        path = FileSystems.join(self.output_dir, marker_name)
        if not FileSystems.exists(path):
            return None
        try:
            with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
                marker = json.loads(f.read().decode("utf-8"))
            files = [WrittenFile(s["name"], s["size"], s["sha256"]) for s in marker["shards"]]
        except (ValueError, KeyError, TypeError) as error:
            _LOG.warning("ignoring unreadable marker %s: %s", marker_name, error)
            return None
        if marker.get("content_sha256") != content:
            return None
        if not all(_verified(self.output_dir, f) for f in files):
            return None
        return marker

    def _write(self, bucket, num_buckets, samples, members, content, marker_name) -> dict:
        shards = []
        sizes = [sum(len(data) for _, data in sample_members) for sample_members in members]
        parts = _split_by_bytes(list(zip(samples, members)), sizes, MAX_SHARD_BYTES)
        for part, pairs in enumerate(parts):
            chunk, chunk_members = [s for s, _ in pairs], [m for _, m in pairs]
            for shard_format in self.formats:
                # Paths in reports are relative to the run's output directory, so a run can
                # move and two runs into different directories report the same.
                name = "shards/" + shard_name(self.task, bucket, num_buckets, part,
                                              SHARD_FORMATS[shard_format])
                counted = []
                written = write_atomically(
                    self.output_dir, name,
                    lambda f, chunk=chunk, chunk_members=chunk_members, fmt=shard_format:
                    counted.append(_write_shard(fmt, chunk, chunk_members, f)))
                shards.append({**asdict(written), "samples": counted[0]})
        marker = {"bucket": bucket, "num_buckets": num_buckets, "content_sha256": content,
                  "shards": shards}
        # Written last: a marker exists only when every file it names is complete.
        write_atomically(self.output_dir, marker_name,
                         lambda f: f.write(json.dumps(marker, indent=1).encode("utf-8")))
        return marker


def _split_by_bytes(items: list, sizes: list[int], max_bytes: int):
    chunk, size = [], 0
    for item, item_size in zip(items, sizes):
        if chunk and size + item_size > max_bytes:
            yield chunk
            chunk, size = [], 0
        chunk.append(item)
        size += item_size
    if chunk:
        yield chunk


# ---- rejects --------------------------------------------------------------------------------

@dataclass(frozen=True)
class _OutputFile:
    """A file (relative to the output directory) the current run produced or kept."""

    name: str


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


def _write_rejects(output_dir: str, bucket: int, num_buckets: int, rejects: list[Reject]) -> str:
    # The full row is the sort key, so rejects sharing an id and reason still come out in
    # one order whatever order the runner delivered them in.
    rows = sorted((_reject_row(r) for r in rejects), key=_reject_row_key)
    name = f"rejects/rejects-{bucket:05d}-of-{num_buckets:05d}.parquet"
    write_atomically(output_dir, name, lambda f: pq.write_table(
        pa.Table.from_pylist(rows, schema=REJECT_SCHEMA), f, compression="zstd"))
    return name


# ---- report ---------------------------------------------------------------------------------

def _list_names(output_dir: str, folder: str) -> list[str]:
    pattern = FileSystems.join(output_dir, folder, "*") if folder else FileSystems.join(
        output_dir, "*")
    prefix = FileSystems.join(output_dir, "")
    return [m.path[len(prefix):] for m in FileSystems.match([pattern])[0].metadata_list]


def _stale_files(output_dir: str, task: str, produced: set[str]) -> list[str]:
    """Files an earlier attempt left that this run did not produce: other bucket counts,
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
    """The spill files, then their folder where the file system has folders (object stores
    have none left once the files are gone)."""
    spilled = [FileSystems.join(output_dir, name) for name in _list_names(output_dir, SPILL_DIR)]
    if spilled:
        FileSystems.delete(spilled)
    folder = FileSystems.join(output_dir, SPILL_DIR)
    if FileSystems.exists(folder):
        FileSystems.delete([folder])


class WriteReport(beam.DoFn):
    """Gets every piece of the report in one group (no side inputs), removes stale files of
    earlier runs, and writes `report.json` last."""

    def __init__(self, output_dir: str, header: dict[str, Any]):
        self.output_dir, self.header = output_dir, header

    def process(self, element):
        _, pieces = element
        by_kind: dict[str, list] = {}
        for kind, value in pieces:
            by_kind.setdefault(kind, []).append(value)
        (input_count,) = by_kind.get("input", [0])  # no count: no input
        stats_list = by_kind.get("stats", [{}])
        if len(stats_list) != 1:
            raise AssertionError(f"stats must be one element, got {len(stats_list)}")
        stats = {**self.header["static_stats"], **stats_list[0]}
        if self.header.get("tally_name"):
            kept_counts = sum((Counter(tally.counts) for tally in by_kind.get("tally", [])),
                              Counter())
            stats[self.header["tally_name"]] = dict(sorted(kept_counts.items()))
        shards = by_kind.get("shard", [])
        primary = self.header["primary"]
        outcome_counts = sum((Counter(o.counts) for o in by_kind.get("outcome", [])), Counter())
        report = build_report(input_count=input_count, outcome_counts=dict(outcome_counts),
                              shards=[s for s in shards if s.path.endswith(primary)],
                              stats=stats, **{k: v for k, v in self.header.items()
                                              if k not in ("primary", "tally_name",
                                                           "static_stats")})
        report["other_shards"] = [asdict(s) for s in sorted(shards, key=lambda s: s.path)
                                  if not s.path.endswith(primary)]
        produced = {s.path for s in shards} | {f.name for f in by_kind.get("file", [])}
        stale = _stale_files(self.output_dir, self.header["task"], produced)
        if stale:
            _LOG.info("removing %d file(s) of earlier runs: %s", len(stale), stale[:5])
            FileSystems.delete([FileSystems.join(self.output_dir, name) for name in stale])
        _remove_spill(self.output_dir)  # every bucket is written by now
        write_atomically(self.output_dir, REPORT_NAME,
                         lambda f: f.write(dumps(report).encode("utf-8")))
        yield report["kept"]


def _tagged(pcoll, label: str, kind: str):
    return pcoll | label >> beam.Map(lambda value: (0, (kind, value)))


_WRITTEN_KINDS = ((ShardInfo, "shard"), (_OutputFile, "file"), (_Tally, "tally"),
                  (_Outcomes, "outcome"))


def _tag_written(value):
    """A bucket writer's output as a report piece."""
    for cls, kind in _WRITTEN_KINDS:
        if isinstance(value, cls):
            return [(0, (kind, value))]
    return []


def write_run(pipeline, samples, rejects: list, input_count, *, output_dir: str, pipeline_name: str,
              dataset: str, task: str, reason_order: list[str], formats: list[str],
              samples_per_shard: int, config: dict[str, Any] | None = None, stats=None,
              spilled=None, bucket_number: Callable[[Sample], int] | None = None,
              select: Select | None = None, tally: tuple[str, Callable[[Sample], str]] | None = None):
    """Write shards, the rejects table and the report of one run.

    `samples` is a PCollection of samples (or None); `spilled` an optional PCollection of spill
    chunks a pipeline wrote itself (`SpillFile`, numbered with the same `bucket_number`).
    `input_count` is a PCollection of the count taken where inputs entered (`CountAll`);
    `stats` a JSON-able dict for the report, or a one-element PCollection of one.
    `bucket_number(sample)` decides the bucket (default: from the id, `corpus.ids.bucket_of`);
    `select(samples of a bucket) -> (kept, rejects)` runs before a bucket is written, for choices
    among samples that share the bucket key; `tally = (name, value_of)` counts `value_of` over
    the kept samples into `stats[name]`. Returns the one-element PCollection of the kept count,
    produced once the report is written.
    """
    items = [spilled] if spilled is not None else []
    if samples is not None:
        items.append(samples | "SpillSamples" >> beam.ParDo(SpillSamples(output_dir,
                                                                          bucket_number)))
    pipeline_rejects = (tuple(rejects) | "FlattenRejects" >> beam.Flatten() if rejects
                        else pipeline | "NoRejects" >> beam.Create([]))
    items.append(pipeline_rejects)
    written = (tuple(items) | "GatherRunItems" >> beam.Flatten()
               | "RunBuckets" >> GroupIntoBuckets(ByRun(samples_per_shard, REJECTS_PER_FILE))
               | "WriteRunBuckets" >> beam.ParDo(WriteShardBucket(
                   output_dir, task, formats, select, tally[1] if tally else None)))
    # what the writers report (shards, files, tallies, reject counts) goes to the report by kind
    written_pieces = written | "TagWritten" >> beam.FlatMap(_tag_written)

    header = {"pipeline": pipeline_name, "dataset": dataset, "task": task,
              "reason_order": reason_order, "config": config or {},
              "primary": "." + SHARD_FORMATS[formats[0]],
              "tally_name": tally[0] if tally else None,
              "static_stats": stats if isinstance(stats, dict) else {}}
    # One piece that is always there: the report is written for an empty input too.
    pieces = [pipeline | "ReportBase" >> beam.Create([(0, ("base", None))]),
              _tagged(input_count, "TagInput", "input"),
              written_pieces]
    if stats is not None and not isinstance(stats, dict):
        pieces.append(_tagged(stats, "TagStats", "stats"))
    return (tuple(pieces) | "GatherReport" >> beam.Flatten()
            | "GroupReport" >> beam.GroupByKey()
            | "WriteReport" >> beam.ParDo(WriteReport(output_dir, header)))


def sample_number(sample: Sample) -> int:
    """The default bucket number of a sample: from its id."""
    return id_number(sample.id)
