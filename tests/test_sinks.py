"""The generic plumbing (steps, counting, shards, rejects, report) on a tiny pipeline of its own.

`build_plumbing_pipeline` is the pipeline the Dask, resume and determinism tests run too; run as
a script, this module runs it (the resume test kills such a process midway).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time

import apache_beam as beam
import pyarrow.parquet as pq
import pytest

from conftest import IN_MEMORY, make_sample
from corpus.ids import bucket_of, id_number, sample_id
from corpus.report import REPORT_NAME
from corpus.shards import read_shard
from filters.base import Reject
from pipelines.common import RulesStep, apply_step, count_elements, run_pipeline
from pipelines.sinks import MARKER_DIR, SPILL_DIR, ById, CountAll, GroupIntoBuckets, SpillFile, \
    cut_chunk, read_spilled, write_run

DATASET = "plumbing"
REASON_ORDER = ["caption_too_short"]


class ReadNumber:
    """The reader of the plumbing pipeline: input `i` becomes a sample, a named reader reject
    (every 7th) or an exception (every 11th). It can log its process id (which workers ran)
    and sleep (to be killed midway)."""

    def __init__(self, pid_dir: str | None = None, seconds: float = 0.0):
        self.pid_dir, self.seconds = pid_dir, seconds

    def __call__(self, i: int):
        if self.pid_dir:
            open(os.path.join(self.pid_dir, str(os.getpid())), "a").close()
        time.sleep(self.seconds)
        key = f"k{i}"
        if i % 7 == 3:
            return [Reject(sample_id(DATASET, key), DATASET, f"mem://{key}", key, "corrupt_image",
                           "errored", "not an image")]
        if i % 11 == 5:
            raise ValueError(f"cannot read {key}")
        text = "short" if i % 5 == 0 else f"caption number {i} of the plumbing test"
        return [make_sample(key=key, text=text, dataset=DATASET,
                            images=[_image(i)])]


def _image(i: int):
    from conftest import make_image

    return make_image(16 + i % 5, 12, ((37 * i) % 256, (91 * i) % 256, 128))


def caption_too_short(sample):
    return "caption_too_short" if len(sample.text) < 8 else None


def build_plumbing_pipeline(output_dir: str, count: int, samples_per_shard: int,
                            reader: ReadNumber | None = None):
    def build(pipeline):
        numbers = pipeline | "Numbers" >> beam.Create(list(range(count)))
        samples, read_rejects = apply_step(numbers, "Read", reader or ReadNumber(), DATASET)
        kept, rule_rejects = apply_step(samples, "Rules", RulesStep([caption_too_short]), DATASET)
        input_count = count_elements("CountInput", samples, read_rejects)
        stats = input_count | "Stats" >> beam.Map(lambda n: {"read": n})
        write_run(pipeline, kept, [read_rejects, rule_rejects], input_count,
                  output_dir=output_dir, pipeline_name="plumbing", dataset=DATASET,
                  task="captioning", reason_order=REASON_ORDER,
                  formats=["webdataset", "parquet"], samples_per_shard=samples_per_shard,
                  config={"count": count}, stats=stats)
    return build


def run_plumbing(output_dir, beam_argv, count=40, samples_per_shard=4, reader=None):
    return run_pipeline(build_plumbing_pipeline(str(output_dir), count, samples_per_shard, reader),
                        beam_argv, str(output_dir))


def expected_counts(count: int) -> dict:
    errored = {"ValueError": 0, "corrupt_image": 0}
    dropped, kept = 0, 0
    for i in range(count):
        if i % 7 == 3:
            errored["corrupt_image"] += 1
        elif i % 11 == 5:
            errored["ValueError"] += 1
        elif i % 5 == 0:
            dropped += 1
        else:
            kept += 1
    return {"kept": kept, "dropped": {"caption_too_short": dropped} if dropped else {},
            "errored": {k: v for k, v in sorted(errored.items()) if v}}


def output_files(output_dir) -> dict[str, bytes]:
    """Every file of a run, relative path -> bytes; the report without its timing, no plot."""
    files = {}
    for root, _, names in os.walk(output_dir):
        for name in names:
            path = os.path.join(root, name)
            relative = os.path.relpath(path, output_dir)
            if os.path.basename(relative) == "report.png":
                continue
            with open(path, "rb") as f:
                data = f.read()
            if os.path.basename(relative) == REPORT_NAME:
                report = json.loads(data)
                report.pop("wall_seconds", None)
                data = json.dumps(report, sort_keys=True).encode()
            files[relative] = data
    return files


def assert_same_outputs(first, second):
    a, b = output_files(first), output_files(second)
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name] == b[name], f"{name} differs"


# ---- the plumbing on the in-memory runner ------------------------------------------------------

def test_plumbing_accounts_for_every_input(tmp_path, beam_argv):
    report = run_plumbing(tmp_path, beam_argv, count=40, samples_per_shard=4)
    expected = expected_counts(40)
    assert (report["input"], report["kept"]) == (40, expected["kept"])
    assert report["dropped"] == expected["dropped"]
    assert report["errored"] == expected["errored"]
    assert report["stats"] == {"read": 40}
    assert len(report["shards"]) == -(-expected["kept"] // 4)
    ids = []
    for shard in report["shards"]:
        samples = list(read_shard(str(tmp_path / shard["path"])))
        assert len(samples) == shard["samples"]
        assert [s.id for s in samples] == sorted(s.id for s in samples)
        bucket = int(shard["path"].split("-")[1])
        assert all(bucket_of(s.id, len(report["shards"])) == bucket for s in samples)
        ids += [s.id for s in samples]
    assert len(ids) == len(set(ids)) == expected["kept"]
    assert sorted(os.listdir(tmp_path / MARKER_DIR)) == sorted(
        s["path"].split("/")[1].replace(".tar", ".json") for s in report["shards"])
    assert not [n for n in os.listdir(tmp_path / "shards") if ".tmp-" in n]
    assert not (tmp_path / SPILL_DIR).exists()  # the spill files go once every bucket is written
    # each bucket writes its part of the rejects table: the rejects whose ids fall in it
    rows = 0
    for name in os.listdir(tmp_path / "rejects"):
        bucket, of = int(name.split("-")[1]), int(name.split("-")[3].split(".")[0])
        table = pq.read_table(tmp_path / "rejects" / name).to_pylist()
        assert of == len(report["shards"])
        assert all(bucket_of(row["id"], of) == bucket for row in table)
        rows += len(table)
    assert rows == report["dropped_total"] + report["errored_total"]


def test_empty_input_writes_a_report_and_no_shards(tmp_path, beam_argv):
    report = run_plumbing(tmp_path, beam_argv, count=0)
    assert (report["input"], report["kept"], report["shards"]) == (0, 0, [])
    assert not (tmp_path / "shards").exists()


def test_count_all_is_nothing_for_nothing_and_sums_several(beam_argv):
    from apache_beam.testing.util import assert_that, equal_to

    with beam.Pipeline(argv=beam_argv) as pipeline:
        empty = pipeline | "Empty" >> beam.Create([])
        three = pipeline | "Three" >> beam.Create([1, 2, 3])
        assert_that(empty | "CountEmpty" >> CountAll(), equal_to([]), label="Nothing")
        assert_that((empty, three, three) | "CountMany" >> CountAll(), equal_to([6]), label="Six")
        assert_that(three | "Sizes" >> CountAll(lambda e: e), equal_to([6]), label="Sizes")


def test_group_into_buckets_follows_bucket_of(beam_argv):
    from apache_beam.testing.util import assert_that

    ids = [sample_id("unit", f"k{i}") for i in range(23)]

    def check(groups):
        assert {g[1] for g in groups} == {5}
        assert sorted(i for g in groups for i in g[2]) == sorted(ids)
        assert all(bucket_of(i, 5) == g[0] for g in groups for i in g[2])

    with beam.Pipeline(argv=beam_argv) as pipeline:
        groups = (pipeline | beam.Create(ids) | GroupIntoBuckets(ById(5, id_number)))
        assert_that(groups, check)


def write_batches(ids, folder: str, argv) -> None:
    """Run `Batches(4)` over ids; each batch lands in a file named after its first id."""
    from pipelines.common import Batches

    def save(batch):
        with open(os.path.join(folder, batch[0]), "w") as f:
            f.write(" ".join(batch))

    with beam.Pipeline(argv=argv) as pipeline:
        _ = (pipeline | beam.Create(ids) | Batches(4, id_of=lambda i: i) | beam.Map(save))


class Doubler:
    """A stand-in model: the "prediction" of an id is its first 4 hex digits, doubled."""

    def __call__(self, element_id: str) -> int:
        return int(element_id[:4], 16) * 2


class HexModelHandler:
    @staticmethod
    def make():
        from apache_beam.ml.inference.base import ModelHandler, PredictionResult

        class Handler(ModelHandler):
            def load_model(self):
                return Doubler()

            def run_inference(self, batch, model, inference_args=None):
                return [PredictionResult(i, model(i)) for i in batch]

        return Handler()


def write_predictions(ids, folder: str, argv) -> None:
    """RunInference over `Batches` (its own batching off): one file per prediction."""
    from apache_beam.ml.inference.base import RunInference

    from pipelines.common import Batches

    def save(result):
        with open(os.path.join(folder, result.example), "w") as f:
            f.write(str(result.inference))

    with beam.Pipeline(argv=argv) as pipeline:
        _ = (pipeline | beam.Create(ids) | Batches(4, id_of=lambda i: i)
             | RunInference(HexModelHandler.make().with_no_batching()) | beam.Map(save))


def read_predictions(folder) -> dict[str, str]:
    return {name: open(os.path.join(folder, name)).read() for name in os.listdir(folder)}


def test_run_inference_over_batches_sees_every_element(tmp_path, beam_argv):
    ids = [sample_id("unit", f"k{i}") for i in range(23)]
    write_predictions(ids, str(tmp_path), beam_argv)
    assert read_predictions(tmp_path) == {i: str(int(i[:4], 16) * 2) for i in ids}


def read_batches(folder) -> list[list[str]]:
    return sorted(open(os.path.join(folder, n)).read().split() for n in os.listdir(folder))


def test_batches_are_sorted_cuts_of_id_buckets(tmp_path, beam_argv):
    ids = [sample_id("unit", f"k{i}") for i in range(23)]
    write_batches(ids, str(tmp_path), beam_argv)
    batches = read_batches(tmp_path)
    assert sorted(i for b in batches for i in b) == sorted(ids)
    assert all(1 <= len(b) <= 4 and b == sorted(b) for b in batches)
    assert all(len({bucket_of(i, 6) for i in b}) == 1 for b in batches)  # ceil(23 / 4) buckets


def test_default_runner_flags_yield_to_the_command_line():
    from pipelines.common import pipeline_options

    options = pipeline_options(["--direct_num_workers=7"]).get_all_options()
    assert (options["runner"], options["direct_num_workers"]) == ("DirectRunner", 7)
    assert options["direct_running_mode"] == "multi_processing"


def test_id_number_takes_free_form_ids():
    assert id_number("00000000000a") == 10
    assert id_number("not hex at all") == id_number("not hex at all")


@pytest.mark.slow
def test_rerun_keeps_verified_buckets_and_rewrites_damaged_ones(tmp_path, beam_argv):
    run_plumbing(tmp_path, beam_argv)
    shards = sorted((tmp_path / "shards").iterdir())
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in shards}
    damaged = shards[0]
    data = bytearray(damaged.read_bytes())
    data[600] ^= 0xFF  # same size, other bytes: only the checksum can tell
    damaged.write_bytes(bytes(data))
    (tmp_path / "shards" / "captioning-00000-of-00002.tar").write_bytes(b"old bucket count")
    run_plumbing(tmp_path, beam_argv)
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns)
             for p in (tmp_path / "shards").iterdir()}
    assert sorted(after) == sorted(before)  # the stale file of another bucket count is gone
    same_bucket = damaged.name.rsplit(".", 1)[0]
    for name in before:
        if name.startswith(same_bucket):
            assert after[name] != before[name], f"{name} was not rewritten"
        else:
            assert after[name] == before[name], f"{name} was rewritten"
    clean = tmp_path.parent / (tmp_path.name + "-clean")
    run_plumbing(clean, beam_argv)
    assert_same_outputs(tmp_path, clean)


@pytest.mark.slow
def test_changed_content_is_rewritten(tmp_path, beam_argv):
    run_plumbing(tmp_path, beam_argv, count=12, samples_per_shard=100)
    (marker,) = (tmp_path / MARKER_DIR).iterdir()
    old = json.loads(marker.read_text())["content_sha256"]
    run_plumbing(tmp_path, beam_argv, count=13, samples_per_shard=100)  # one more kept sample
    assert json.loads(marker.read_text())["content_sha256"] != old
    assert sum(1 for _ in read_shard(str(tmp_path / "shards/captioning-00000-of-00001.tar"))) == \
        expected_counts(13)["kept"]


# ---- run as a script: the process the resume test kills ----------------------------------------

class _PausingFile:
    """Sleeps after the first write, so a kill lands while the file is half written."""

    def __init__(self, raw, seconds: float):
        self.raw, self.seconds, self.paused = raw, seconds, False

    def write(self, data):
        written = self.raw.write(data)
        if not self.paused:
            self.paused = True
            self.raw.flush()
            time.sleep(self.seconds)
        return written

    def __getattr__(self, name):
        return getattr(self.raw, name)


def _slow_writers(seconds: float) -> None:
    """Make every shard file take `seconds` to write, so a kill lands between buckets."""
    from corpus import shards

    for name, writer in list(shards.WRITERS.items()):
        def slow(samples, fileobj, writer=writer):
            return writer(samples, _PausingFile(fileobj, seconds))
        shards.WRITERS[name] = slow


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("output")
    parser.add_argument("--count", type=int, default=40)
    parser.add_argument("--samples-per-shard", type=int, default=4)
    parser.add_argument("--slow-read", type=float, default=0.0)
    parser.add_argument("--slow-write", type=float, default=0.0)
    parser.add_argument("--pid-dir", help="note the reading processes here")
    args = parser.parse_args(argv)
    if args.slow_write:
        _slow_writers(args.slow_write)
    report = run_plumbing(args.output, IN_MEMORY, args.count, args.samples_per_shard,
                          ReadNumber(args.pid_dir, args.slow_read))
    print(hashlib.sha256(json.dumps(report["shards"]).encode()).hexdigest())
    return 0


if __name__ == "__main__":
    sys.exit(main())


def test_spill_chunks_cut_by_bucket_read_back_every_sample(tmp_path):
    samples = [make_sample(key=f"k{i}", text=f"caption {i}") for i in range(9)]
    spill = SpillFile(str(tmp_path))
    chunk = (spill.path, [spill.add(s, id_number(s.id)) for s in samples])
    spill.close()
    pieces = dict(cut_chunk(chunk, 4))
    assert set(pieces) == {bucket_of(s.id, 4) for s in samples}
    for bucket, piece in pieces.items():
        assert [s.id for s in read_spilled([piece])] == \
            [s.id for s in samples if bucket_of(s.id, 4) == bucket]
    assert read_spilled([chunk]) == samples


def test_select_and_tally_run_per_bucket(tmp_path, beam_argv):
    """`select` sees every sample of a bucket (here keyed by caption, so equal captions meet)
    and its rejects are counted; `tally` counts over the kept samples only."""
    texts = ["a cat", "a dog", "a cat", "a bird", "a dog", "a cat"]
    samples = [make_sample(key=f"k{i}", text=t, dataset=DATASET) for i, t in enumerate(texts)]

    def first_per_text(bucket):
        kept, rejects, seen = [], [], set()
        for sample in sorted(bucket, key=lambda s: s.id):
            if sample.text in seen:
                rejects.append(Reject.of(sample, "same_text"))
            else:
                seen.add(sample.text)
                kept.append(sample)
        return kept, rejects

    def text_number(sample):
        return int(hashlib.sha256(sample.text.encode()).hexdigest()[:8], 16)

    def build(pipeline):
        created = pipeline | beam.Create(samples)
        write_run(pipeline, created, [], count_elements("Count", created),
                  output_dir=str(tmp_path), pipeline_name="unit", dataset=DATASET, task="unit",
                  reason_order=["same_text"], formats=["webdataset"], samples_per_shard=2,
                  stats={"fixed": 1}, bucket_number=text_number, select=first_per_text,
                  tally=("kept_texts", lambda s: s.text))

    report = run_pipeline(build, beam_argv, str(tmp_path))
    assert (report["input"], report["kept"], report["dropped"]) == (6, 3, {"same_text": 3})
    assert report["stats"] == {"fixed": 1, "kept_texts": {"a bird": 1, "a cat": 1, "a dog": 1}}


def test_reject_table_columns_are_the_reject_fields():
    import dataclasses

    from pipelines.sinks import REJECT_SCHEMA

    assert [f.name for f in dataclasses.fields(Reject)] == REJECT_SCHEMA.names
