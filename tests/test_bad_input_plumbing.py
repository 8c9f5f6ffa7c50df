"""The plumbing fed the worst a step can do, all in one run: exceptions (with huge messages,
after partial output), a step returning nothing iterable, reader rejects with free-form ids,
text that is not valid Unicode, a 1 MB caption, something that is not a sample. The run
completes and every input ends under a named reason, counted exactly once."""
from __future__ import annotations

import os

import apache_beam as beam
import pyarrow.parquet as pq

from conftest import make_sample
from corpus.shards import read_shard
from filters.base import Reject
from pipelines.common import RulesStep, apply_step, count_elements, run_pipeline
from pipelines.sinks import write_run

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
    yield make_sample(key=key, text="this one is never kept", dataset=DATASET)
    raise OSError("broke halfway")


def caption_too_short(sample):
    return "caption_too_short" if len(sample.text) < 8 else None


def caption_too_long(sample):
    return "caption_too_long" if len(sample.text) > 100_000 else None


KEYS = ["good0", "good1", "good2", "raises_huge", "raises_after_output", "returns_none",
        "reader_reject", "two_rejects", "undecodable", "megabyte_caption", "short", "not_a_sample"]


def build(output_dir: str, long_captions_allowed: bool):
    rules = [caption_too_short] + ([] if long_captions_allowed else [caption_too_long])

    def build_pipeline(pipeline):
        keys = pipeline | beam.Create(KEYS)
        samples, read_rejects = apply_step(keys, "Read", read_nasty, DATASET)
        input_count = count_elements("CountInput", samples, read_rejects)
        kept, dropped = apply_step(samples, "Rules", RulesStep(rules), DATASET)
        write_run(pipeline, kept, [read_rejects, dropped], input_count, output_dir=output_dir,
                  pipeline_name="nasty", dataset=DATASET, task="captioning",
                  reason_order=["caption_too_short", "caption_too_long"],
                  formats=["webdataset", "parquet"], samples_per_shard=2)
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
    # 12 inputs; "two_rejects" is two units, "returns_none" and "raises_*" one each.
    assert report["input"] == 13
    assert report["kept"] == 3
    assert report["dropped"] == {"caption_too_short": 1, "caption_too_long": 1}
    assert report["errored"] == {"AttributeError": 1, "OSError": 1, "RuntimeError": 1,
                                 "TypeError": 1, "corrupt_image": 1, "truncated_tar": 2,
                                 "unwritable_sample": 1}
    rows = rejects_table(tmp_path)
    assert len(rows) == report["dropped_total"] + report["errored_total"] == 10
    by_reason = {}
    for row in rows:
        by_reason.setdefault(row["reason"], []).append(row)
    assert len(by_reason["RuntimeError"][0]["detail"]) == 1000  # huge messages are cut
    assert by_reason["corrupt_image"][0]["id"] == "free-form id, not hex"
    assert "\\udcff" in by_reason["unwritable_sample"][0]["text"]  # escaped, not lost
    assert "surrogates not allowed" in by_reason["unwritable_sample"][0]["detail"]
    # A failing element that is not a sample is described by its text.
    assert by_reason["OSError"][0]["uri"] == "raises_after_output"
    assert by_reason["TypeError"][0]["uri"] == "returns_none"
    assert by_reason["AttributeError"][0]["uri"] == "just a string"  # the rule got a str
    kept = [s.source.key for shard in report["shards"]
            for s in read_shard(str(tmp_path / shard["path"]))]
    assert sorted(kept) == ["good0", "good1", "good2"]


def test_a_megabyte_caption_is_written_whole(tmp_path, beam_argv):
    report = run_pipeline(build(str(tmp_path), long_captions_allowed=True), beam_argv,
                          str(tmp_path))
    assert report["kept"] == 4
    texts = {s.source.key: s.text for shard in report["shards"]
             for s in read_shard(str(tmp_path / shard["path"]))}
    assert texts["megabyte_caption"] == "word " * 200_000
    parquet = [s for shard in report["other_shards"]
               for s in read_shard(str(tmp_path / shard["path"]))]
    assert sorted(s.source.key for s in parquet) == sorted(texts)
