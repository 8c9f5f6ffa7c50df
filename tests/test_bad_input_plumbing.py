"""The plumbing fed the worst a task's work can do, all in one run: exceptions (with huge
messages, after partial output), a work returning nothing iterable, reader rejects with
free-form ids, text that is not valid Unicode, a 1 MB caption, something that is not a sample.
The run completes and every input ends under a named reason, counted exactly once."""
from __future__ import annotations

import os

import pyarrow.parquet as pq

from conftest import make_sample
from corpus.shards import read_shard
from corpus.schema import Sample
from filters.base import Reject, checked
from pipelines.common import run_pipeline
from pipelines.sinks import RunSpec
from pipelines.tasks import plan_tasks, run_tasks

DATASET = "nasty"
HUGE = "x" * 5000


def read_nasty(key: str):
    """One input per kind of trouble; the key names it."""
    if key.startswith("good"):
        return [make_sample(key=key, text=f"a perfectly good caption for {key}", dataset=DATASET)]
    if key == "raises_huge":
        raise RuntimeError(HUGE)
    if key == "raises_after_output":
        return _yield_then_fail(key)
    if key == "returns_none":
        return None
    if key == "reader_reject":
        return [Reject("free-form id, not hex", DATASET, "mem://reader_reject", key,
                       "corrupt_image", "errored", "cannot identify image file")]
    if key == "two_rejects":  # one input that a reader splits into two failed units
        return [Reject(f"unit-{i}", DATASET, "mem://two", f"{key}#{i}", "truncated_tar", "errored")
                for i in (2, 1)]
    if key == "undecodable":  # invalid UTF-8 read with errors="surrogateescape"
        text = b"caption \xff\xfe here".decode("utf-8", "surrogateescape")
        return [make_sample(key=key, text=text, dataset=DATASET)]
    if key == "megabyte_caption":
        return [make_sample(key=key, text="word " * 200_000, dataset=DATASET)]
    if key == "short":
        return [make_sample(key=key, text="tiny", dataset=DATASET)]
    if key == "not_a_sample":
        return ["just a string"]
    raise AssertionError(key)


def _yield_then_fail(key):
    yield make_sample(key=key, text="read before the input broke", dataset=DATASET)
    raise OSError("broke halfway")


def caption_too_short(sample):
    return "caption_too_short" if len(sample.text) < 8 else None


def caption_too_long(sample):
    return "caption_too_long" if len(sample.text) > 100_000 else None


KEYS = ["good0", "good1", "good2", "raises_huge", "raises_after_output", "returns_none",
        "reader_reject", "two_rejects", "undecodable", "megabyte_caption", "short", "not_a_sample"]


class ReadNasty:
    def __init__(self, rules):
        self.rules = rules

    def setup(self, worker):
        pass

    def __call__(self, key):
        for item in read_nasty(key):
            yield checked(item, self.rules) if isinstance(item, Sample) else item


def build(output_dir: str, long_captions_allowed: bool):
    rules = [caption_too_short] + ([] if long_captions_allowed else [caption_too_long])
    spec = RunSpec("nasty", DATASET, "captioning", output_dir,
                   ["caption_too_short", "caption_too_long"],
                   formats=["webdataset", "parquet"], samples_per_shard=2)

    def build_pipeline(pipeline, execution):
        run_tasks(pipeline, [spec], ReadNasty(rules), plan_tasks(KEYS, 3), execution)
    return build_pipeline


def rejects_table(output_dir) -> list[dict]:
    folder = os.path.join(output_dir, "rejects")
    rows = []
    for name in sorted(os.listdir(folder)):
        rows += pq.read_table(os.path.join(folder, name)).to_pylist()
    return rows


def test_every_nasty_input_is_accounted_for_once(tmp_path, beam_argv):
    report = run_pipeline(build(str(tmp_path), long_captions_allowed=False), beam_argv,
                          str(tmp_path))
    # 12 inputs; "two_rejects" is two units, "raises_after_output" a sample read before the
    # failure and the failure, "returns_none" and "raises_huge" one each.
    assert report["input"] == 14
    assert report["kept"] == 4
    assert report["dropped"] == {"caption_too_short": 1, "caption_too_long": 1}
    assert report["errored"] == {"OSError": 1, "RuntimeError": 1, "TypeError": 2,
                                 "corrupt_image": 1, "truncated_tar": 2, "unwritable_sample": 1}
    rows = rejects_table(tmp_path)
    assert len(rows) == report["dropped_total"] + report["errored_total"] == 10
    by_reason = {}
    for row in rows:
        by_reason.setdefault(row["reason"], []).append(row)
    assert len(by_reason["RuntimeError"][0]["detail"]) == 1000  # huge messages are cut
    assert by_reason["corrupt_image"][0]["id"] == "free-form id, not hex"
    assert "\\udcff" in by_reason["unwritable_sample"][0]["text"]  # escaped, not lost
    assert "surrogates not allowed" in by_reason["unwritable_sample"][0]["detail"]
    # A failing unit is described by its text.
    assert by_reason["OSError"][0]["uri"] == "raises_after_output"
    assert sorted(row["uri"] for row in by_reason["TypeError"]) == ["not_a_sample",
                                                                    "returns_none"]
    kept = [s.source.key for shard in report["shards"]
            for s in read_shard(str(tmp_path / shard["path"]))]
    assert sorted(kept) == ["good0", "good1", "good2", "raises_after_output"]


def test_a_megabyte_caption_is_written_whole(tmp_path, beam_argv):
    report = run_pipeline(build(str(tmp_path), long_captions_allowed=True), beam_argv,
                          str(tmp_path))
    assert report["kept"] == 5
    texts = {s.source.key: s.text for shard in report["shards"]
             for s in read_shard(str(tmp_path / shard["path"]))}
    assert texts["megabyte_caption"] == "word " * 200_000
    parquet = [s for shard in report["other_shards"]
               for s in read_shard(str(tmp_path / shard["path"]))]
    assert sorted(s.source.key for s in parquet) == sorted(texts)
