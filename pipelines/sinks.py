"""Where a pipeline's results land: shards, the rejects table and `report.json`.

Why not Beam's `WriteToText`/`fileio`: they do temp-then-finalize, but spread records over
shards in an order that depends on the runner and its bundling, so re-runs differ byte for byte.
Here the shard of a sample is a function of its id (`corpus.ids.bucket_of`), the number of
shards a function of the kept count, and samples are sorted by id inside a shard; each file is
written under a temporary name and renamed into place, so a reader never sees half a shard.
"""
from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from corpus.ids import bucket_of
from corpus.report import REPORT_NAME, build_report, dumps
from corpus.schema import Sample
from corpus.shards import SHARD_FORMATS, WRITERS, ShardInfo, tar_members
from filters.base import Reject

REJECT_SCHEMA = pa.schema([(name, pa.string()) for name in
                           ("id", "dataset", "uri", "key", "reason", "status", "detail", "text")])
REJECTS_PER_FILE = 200_000
MAX_SHARD_BYTES = 1 << 30  # a bucket larger than this is split into parts


def shard_name(task: str, bucket: int, num_buckets: int, part: int, extension: str) -> str:
    suffix = f"-p{part}" if part else ""
    return f"{task}-{bucket:05d}-of-{num_buckets:05d}{suffix}.{extension}"


def _sample_bytes(sample: Sample) -> int:
    return sum(len(data) for _, data in tar_members(sample))


def _atomic_create(path: str):
    return FileSystems.create(path + ".tmp")


def _finalize(path: str) -> int:
    tmp = path + ".tmp"
    if FileSystems.exists(path):
        FileSystems.delete([path])
    FileSystems.rename([tmp], [path])
    return FileSystems.match([path])[0].metadata_list[0].size_in_bytes


class WriteShardBucket(beam.DoFn):
    """Writes one bucket of samples, sorted by id, as one or more files per format."""

    def __init__(self, shard_dir: str, task: str, formats: list[str]):
        self.shard_dir, self.task, self.formats = shard_dir, task, formats

    def process(self, element, num_buckets):
        bucket, samples = element
        samples = sorted(samples, key=lambda s: (s.id, s.text))
        for part, chunk in enumerate(_split_by_bytes(samples, MAX_SHARD_BYTES)):
            for shard_format in self.formats:
                name = shard_name(self.task, bucket, num_buckets, part,
                                  SHARD_FORMATS[shard_format])
                path = FileSystems.join(self.shard_dir, name)
                with _atomic_create(path) as f:
                    count = WRITERS[shard_format](chunk, f)
                # Paths in reports are relative to the run's output directory, so a run can
                # move and two runs into different directories report the same.
                yield ShardInfo(path=f"shards/{name}", samples=count, bytes=_finalize(path))


def _split_by_bytes(samples: list[Sample], max_bytes: int):
    chunk, size = [], 0
    for sample in samples:
        sample_size = _sample_bytes(sample)
        if chunk and size + sample_size > max_bytes:
            yield chunk
            chunk, size = [], 0
        chunk.append(sample)
        size += sample_size
    if chunk:
        yield chunk


class WriteRejectBucket(beam.DoFn):
    def __init__(self, reject_dir: str):
        self.reject_dir = reject_dir

    def process(self, element, num_buckets):
        bucket, rejects = element
        rows = sorted((asdict(r) for r in rejects), key=lambda r: (r["id"], r["reason"]))
        path = FileSystems.join(self.reject_dir,
                                f"rejects-{bucket:05d}-of-{num_buckets:05d}.parquet")
        with _atomic_create(path) as f:
            pq.write_table(pa.Table.from_pylist(rows, schema=REJECT_SCHEMA), f,
                           compression="zstd")
        _finalize(path)
        yield path


def _num_buckets(count: int, per_bucket: int) -> int:
    return max(1, math.ceil(count / per_bucket))


class WriteReport(beam.DoFn):
    def __init__(self, output_dir: str, header: dict[str, Any]):
        self.output_dir, self.header = output_dir, header

    def process(self, _, input_count, outcome_counts, shards, stats):
        report = build_report(input_count=input_count, outcome_counts=dict(outcome_counts),
                              shards=[s for s in shards if s.path.endswith(self.header["primary"])],
                              stats=stats, **{k: v for k, v in self.header.items()
                                              if k != "primary"})
        report["other_shards"] = [asdict(s) for s in sorted(shards, key=lambda s: s.path)
                                  if not s.path.endswith(self.header["primary"])]
        path = FileSystems.join(self.output_dir, REPORT_NAME)
        with _atomic_create(path) as f:
            f.write(dumps(report).encode("utf-8"))
        _finalize(path)
        yield report["kept"]


def write_run(pipeline, samples, rejects: list, input_count, *, output_dir: str, pipeline_name: str,
              dataset: str, task: str, reason_order: list[str], formats: list[str],
              samples_per_shard: int, config: dict[str, Any] | None = None, stats=None) -> None:
    """Write shards, the rejects table and the report of one run.

    `input_count` is a one-element PCollection counted where inputs entered the pipeline;
    `stats` an optional one-element PCollection of a JSON-able dict for the report.
    """
    shard_dir = FileSystems.join(output_dir, "shards")
    kept_buckets = (samples | "CountKept" >> beam.combiners.Count.Globally()
                    | "KeptBuckets" >> beam.Map(_num_buckets, samples_per_shard))
    shard_infos = (
        samples
        | "KeyByBucket" >> beam.Map(lambda s, n: (bucket_of(s.id, n), s),
                                    beam.pvalue.AsSingleton(kept_buckets))
        | "GroupBuckets" >> beam.GroupByKey()
        | "WriteShards" >> beam.ParDo(WriteShardBucket(shard_dir, task, formats),
                                      beam.pvalue.AsSingleton(kept_buckets)))

    all_rejects = rejects | "FlattenRejects" >> beam.Flatten()
    outcome_counts = (all_rejects | "OutcomeKey" >> beam.Map(lambda r: ((r.status, r.reason), 1))
                      | "CountOutcomes" >> beam.CombinePerKey(sum))
    reject_buckets = (all_rejects | "CountRejects" >> beam.combiners.Count.Globally()
                      | "RejectBuckets" >> beam.Map(_num_buckets, REJECTS_PER_FILE))
    _ = (all_rejects
         | "KeyRejects" >> beam.Map(lambda r, n: (bucket_of(r.id, n), r),
                                    beam.pvalue.AsSingleton(reject_buckets))
         | "GroupRejects" >> beam.GroupByKey()
         | "WriteRejects" >> beam.ParDo(WriteRejectBucket(FileSystems.join(output_dir, "rejects")),
                                        beam.pvalue.AsSingleton(reject_buckets)))
    if stats is None:
        stats = pipeline | "NoStats" >> beam.Create([{}])
    header = {"pipeline": pipeline_name, "dataset": dataset, "task": task,
              "reason_order": reason_order, "config": config or {},
              "primary": "." + SHARD_FORMATS[formats[0]]}
    _ = (pipeline
         | "ReportTrigger" >> beam.Create([None])
         | "WriteReport" >> beam.ParDo(WriteReport(output_dir, header),
                                       beam.pvalue.AsSingleton(input_count),
                                       beam.pvalue.AsList(outcome_counts),
                                       beam.pvalue.AsList(shard_infos),
                                       beam.pvalue.AsSingleton(stats)))
