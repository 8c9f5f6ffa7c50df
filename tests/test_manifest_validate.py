"""Bad input: every problem is named, at build time and when validating a written manifest."""
import dataclasses
import os

import pytest
import yaml

from conftest import make_sample
from corpus.shards import write_tar
from manifests.build import SourceSpec
from manifests.manifest import (ManifestError, build_manifest, load_manifest, validate_manifest,
                                write_manifest)
from test_manifest import task_samples, write_run_dir


@pytest.fixture
def written(tmp_path):
    """A valid stage-2 manifest on disk, with its runs."""
    write_run_dir(str(tmp_path / "pairs"), "captioning", task_samples("captioning", 3))
    write_run_dir(str(tmp_path / "pdf"), "ocr", task_samples("ocr", 2))
    manifest = build_manifest(2, [SourceSpec("../pairs"), SourceSpec("../pdf")],
                              base_dir=str(tmp_path / "m"))
    path = str(tmp_path / "m" / "stage2.yaml")
    write_manifest(manifest, path)
    return path


def _problems(build):
    with pytest.raises(ManifestError) as caught:
        build()
    return caught.value.problems


def _edit(path, change):
    with open(path, encoding="utf-8") as f:
        document = yaml.safe_load(f)
    change(document)
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(document, f, sort_keys=False)


# ---- at build time ----------------------------------------------------------------------------

def test_build_rejects_a_task_not_allowed_in_the_stage(tmp_path):
    write_run_dir(str(tmp_path / "pdf"), "ocr", task_samples("ocr", 1))
    problems = _problems(lambda: build_manifest(1, [SourceSpec(str(tmp_path / "pdf"))]))
    assert problems == [f"{tmp_path / 'pdf' / 'report.json'}: task 'ocr' is not allowed in "
                        "stage 1 (allowed: captioning)"]


def test_build_rejects_an_unknown_task_name(tmp_path):
    write_run_dir(str(tmp_path / "pairs"), "captioning", task_samples("captioning", 1))
    problems = _problems(lambda: build_manifest(2, [SourceSpec(str(tmp_path / "pairs"),
                                                               "captions")]))
    assert len(problems) == 1 and "unknown task 'captions'" in problems[0]


def test_build_rejects_an_empty_task(tmp_path):
    write_run_dir(str(tmp_path / "text"), "text", [], dropped=3)
    problems = _problems(lambda: build_manifest(2, [SourceSpec(str(tmp_path / "text"))]))
    assert problems == ["text: no samples (its runs kept nothing)"]


def test_build_rejects_a_missing_or_changed_shard(tmp_path):
    write_run_dir(str(tmp_path / "pairs"), "captioning", task_samples("captioning", 4), shards=2)
    shards = sorted(os.listdir(tmp_path / "pairs" / "shards"))
    os.remove(tmp_path / "pairs" / "shards" / shards[0])
    with open(tmp_path / "pairs" / "shards" / shards[1], "ab") as f:
        f.write(b"\0" * 512)
    problems = _problems(lambda: build_manifest(1, [SourceSpec(str(tmp_path / "pairs"))]))
    report = tmp_path / "pairs" / "report.json"
    assert problems[0] == f"{report}: shard {tmp_path / 'pairs' / 'shards' / shards[0]}: missing"
    assert problems[1].startswith(f"{report}: shard {tmp_path / 'pairs' / 'shards' / shards[1]} "
                                  "changed since the report: ")
    assert len(problems) == 2


def test_build_rejects_a_mislabelled_run_and_a_location_without_shards(tmp_path):
    write_run_dir(str(tmp_path / "pdf"), "ocr", task_samples("ocr", 1))
    (tmp_path / "empty").mkdir()
    problems = _problems(lambda: build_manifest(2, [
        SourceSpec(str(tmp_path / "pdf"), "vqa"), SourceSpec(str(tmp_path / "empty")),
        SourceSpec(str(tmp_path / "nothing" / "*.tar"))]))
    assert problems[0] == (f"{tmp_path / 'pdf' / 'report.json'}: the report's task is 'ocr', not "
                           "'vqa' (leave out 'vqa=' to take the report's task)")
    assert problems[1].startswith(f"{tmp_path / 'empty'}: no report.json there")
    assert problems[2] == f"{tmp_path / 'nothing' / '*.tar'}: no .tar or .parquet shard matches"


def test_build_rejects_stage1_shards_holding_ocr_samples(tmp_path):
    with open(tmp_path / "mixed.tar", "wb") as f:
        write_tar(task_samples("captioning", 1) + task_samples("ocr", 1), f)
    problems = _problems(lambda: build_manifest(1, [SourceSpec(str(tmp_path / "*.tar"),
                                                               "captioning")]))
    assert problems == [f"{tmp_path / '*.tar'}: samples of task(s) ['ocr'] in a 'captioning' "
                        "source"]


def test_build_rejects_bad_weights(tmp_path):
    write_run_dir(str(tmp_path / "pairs"), "captioning", task_samples("captioning", 1))
    write_run_dir(str(tmp_path / "text"), "text", task_samples("text", 1))
    sources = [SourceSpec(str(tmp_path / "pairs")), SourceSpec(str(tmp_path / "text"))]
    assert _problems(lambda: build_manifest(2, sources, weights={"ocr": 0.2, "text": -1})) == [
        "--weight ocr: no source has task 'ocr'",
        "--weight text=-1: a weight must be a positive number"]
    assert _problems(lambda: build_manifest(2, sources[:1] + sources[1:], weights={
        "captioning": 1.0})) == ["--weight: the given weights sum to 1, leaving nothing for text"]


# ---- validating a written manifest ------------------------------------------------------------

def test_a_valid_manifest_has_no_problems(written):
    assert validate_manifest(load_manifest(written), deep=True) == []


def test_validate_names_missing_and_changed_shards(written):
    manifest = load_manifest(written)
    captioning, ocr = manifest.sources
    os.remove(captioning.shards[0].path)
    with open(ocr.shards[0].path, "r+b") as f:
        f.seek(700)
        f.write(b"X")  # same size, other bytes
    problems = validate_manifest(manifest)
    assert problems[0] == f"captioning: shard {captioning.shards[0].path}: missing"
    assert problems[1].startswith(f"ocr: shard {ocr.shards[0].path}: changed: sha256 ")
    assert len(problems) == 2


def test_validate_names_stage_task_weight_and_count_problems(written):
    def change(document):
        document["stage"] = 1
        document["sources"][0]["weight"] = 0.9
        document["sources"][0]["samples"] = 7
        document["sources"][1]["task"] = "ocr_pages"

    _edit(written, change)
    problems = validate_manifest(load_manifest(written))
    assert problems == [
        "expected_samples_per_epoch 5: the sources hold 9",
        "captioning: samples 7 but its shards hold 3",
        "ocr_pages: unknown task; known: captioning, vqa, grounding, ref_grounding, "
        "grounded_captioning, ocr, text, sft",
        "weights sum to 1.457303, not 1"]  # 0.9 + 24.8 / (19.7 + 24.8)


def test_validate_flags_ocr_in_a_stage1_manifest(written):
    _edit(written, lambda d: d.update(stage=1))
    problems = validate_manifest(load_manifest(written))
    assert problems == ["ocr: not allowed in stage 1 (allowed: captioning)"]


def test_validate_flags_empty_duplicate_and_unsorted_sources(written):
    manifest = load_manifest(written)
    empty = dataclasses.replace(manifest.sources[1], task="captioning", shards=[], samples=0,
                                bytes=0)
    manifest.sources = [manifest.sources[1], manifest.sources[0], empty]
    problems = validate_manifest(manifest)
    assert "sources are not sorted by task: ['ocr', 'captioning', 'captioning']" in problems
    assert "captioning: listed 2 times; one source per task" in problems
    assert "captioning: empty (no shards or no samples)" in problems


def test_deep_validation_reads_counts_and_sample_tasks(written, tmp_path):
    manifest = load_manifest(written)
    shard = manifest.sources[0].shards[0]
    with open(shard.path, "wb") as f:
        write_tar([make_sample("x", task="captioning"), make_sample("y", task="vqa",
                                                                    question="q", answer="a")], f)
    manifest.sources[0].bytes += os.path.getsize(shard.path) - shard.bytes
    shard.bytes = os.path.getsize(shard.path)
    from manifests.build import shard_digest
    shard.sha256 = shard_digest(shard.path)[0]
    assert validate_manifest(manifest) == []  # the checksums agree; only reading tells
    assert validate_manifest(manifest, deep=True) == [
        f"captioning: shard {shard.path}: holds 2 samples, the manifest says 3",
        f"captioning: shard {shard.path}: holds samples of task(s) ['vqa'] in a 'captioning' "
        "source"]


def test_load_lists_structural_problems(written):
    def change(document):
        del document["seed"]
        document["colour"] = "red"
        document["packing"] = "yes"
        document["sources"][0]["shards"][0]["samples"] = "three"

    _edit(written, change)
    with pytest.raises(ManifestError) as caught:
        load_manifest(written)
    problems = caught.value.problems
    assert problems[0] == f"{written}: missing key(s) ['seed']"
    assert problems[1].startswith(f"{written}: unknown key(s) ['colour']")
    assert problems[2] == f"{written}: packing: expected bool, got 'yes'"
    assert problems[3] == (f"{written}: sources[0] (captioning): shards[0]: samples: expected int, "
                           "got 'three'")


def test_load_names_a_missing_or_broken_file(tmp_path):
    with pytest.raises(ManifestError, match="no such manifest"):
        load_manifest(str(tmp_path / "none.yaml"))
    (tmp_path / "bad.yaml").write_text("stage: [1\n")
    with pytest.raises(ManifestError, match=r"bad.yaml:2:1: invalid YAML"):
        load_manifest(str(tmp_path / "bad.yaml"))


def test_build_names_a_broken_report(tmp_path):
    write_run_dir(str(tmp_path / "pairs"), "captioning", task_samples("captioning", 1))
    (tmp_path / "vqa").mkdir()
    (tmp_path / "vqa" / "report.json").write_text('{"task": "vqa", "shards": [{"path": "x"}]}')
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "report.json").write_text("{not json")
    problems = _problems(lambda: build_manifest(2, [SourceSpec(str(tmp_path / d))
                                                    for d in ("pairs", "vqa", "text")]))
    assert problems[0] == (f"{tmp_path / 'vqa' / 'report.json'}: malformed shard list "
                           "(KeyError('samples'))")
    assert problems[1].startswith(f"{tmp_path / 'text' / 'report.json'}: unreadable report: ")
    assert len(problems) == 2
