"""Manifest building: run outputs and globs in, a deterministic, loadable manifest out."""
import hashlib
import os

import fsspec
import pytest

from conftest import make_sample
from corpus.report import build_report, dumps
from corpus.schema import Region, Turn
from corpus.shards import ShardInfo, atomic_write, read_shard, write_parquet, write_tar
from manifests.build import TABLE3_SAMPLES_M, SourceSpec, parse_source
from manifests.manifest import (Manifest, ManifestError, ManifestShard, ManifestSource,
                                build_manifest, load_manifest, validate_manifest, write_manifest)


def task_samples(task, n, dataset="unit"):
    """n small samples of `task`, filled in enough for the task's text format."""
    samples = []
    for i in range(n):
        key = f"{task}-{i}"
        if task == "text":
            samples.append(make_sample(key, f"plain text number {i}", task, dataset, images=[]))
        elif task == "sft":
            samples.append(make_sample(key, "", task, dataset, turns=[
                Turn("user", "<image>What is this?"), Turn("assistant", "A red square.")]))
        elif task in ("ocr", "grounding", "ref_grounding", "grounded_captioning"):
            samples.append(make_sample(key, "a red square", task, dataset, regions=[
                Region("line" if task == "ocr" else "ref", "red", (2, 2, 30, 20), None, 2, 5)]))
        elif task == "vqa":
            samples.append(make_sample(key, "", task, dataset, question="Colour?", answer="red"))
        else:
            samples.append(make_sample(key, f"a red square {i}", task, dataset))
    return samples


def write_run_dir(run_dir, task, samples, shards=1, pipeline="unit", dataset="unit", dropped=0):
    """A run output as a pipeline leaves it: shards/ and report.json."""
    os.makedirs(os.path.join(run_dir, "shards"), exist_ok=True)
    infos = []
    for index in range(shards):
        chunk = samples[index::shards]
        name = f"{task}-{index:05d}-of-{shards:05d}.tar"
        path = os.path.join(run_dir, "shards", name)
        with atomic_write(path) as f:
            count = write_tar(chunk, f)
        infos.append(ShardInfo(f"shards/{name}", count, os.path.getsize(path)))
    outcomes = {("dropped", "too_short"): dropped} if dropped else {}
    report = build_report(pipeline=pipeline, dataset=dataset, task=task,
                          input_count=len(samples) + dropped, outcome_counts=outcomes,
                          shards=infos, reason_order=["too_short"], config={"min_words": 3})
    with open(os.path.join(run_dir, "report.json"), "w", encoding="utf-8") as f:
        f.write(dumps(report))
    return report


@pytest.fixture
def runs(tmp_path):
    """Three stage-2 runs: captioning (2 shards), ocr, text."""
    root = tmp_path / "out"
    write_run_dir(str(root / "pairs"), "captioning", task_samples("captioning", 5), shards=2,
                  pipeline="pairs", dropped=2)
    write_run_dir(str(root / "pdf"), "ocr", task_samples("ocr", 3), pipeline="pdf")
    write_run_dir(str(root / "text"), "text", task_samples("text", 4), pipeline="text")
    return root


def _stage2(root, base_dir=None, **options):
    return build_manifest(2, [SourceSpec(str(root / "pairs"), "captioning"),
                              SourceSpec(str(root / "text")), SourceSpec(str(root / "pdf"), "ocr")],
                          base_dir=base_dir, **options)


def test_build_from_run_dirs_reads_reports_and_hashes_shards(runs):
    manifest = _stage2(runs)
    assert [s.task for s in manifest.sources] == ["captioning", "ocr", "text"]
    assert (manifest.image_size, manifest.seq_len, manifest.packing) == (448, 2048, True)
    captioning = manifest.sources[0]
    assert captioning.samples == 5 and len(captioning.shards) == 2
    assert [s.samples for s in captioning.shards] == [3, 2]
    for shard in captioning.shards:
        with open(shard.path, "rb") as f:
            data = f.read()
        assert shard.sha256 == hashlib.sha256(data).hexdigest() and shard.bytes == len(data)
    assert captioning.bytes == sum(s.bytes for s in captioning.shards)
    provenance = captioning.provenance[0]
    assert provenance.report == str(runs / "pairs" / "report.json")
    assert (provenance.pipeline, provenance.dataset, provenance.config) == (
        "pairs", "unit", {"min_words": 3})
    assert manifest.expected_samples_per_epoch == 12
    assert validate_manifest(manifest) == []


def test_stage2_default_weights_follow_table3(runs):
    weights = {s.task: s.weight for s in _stage2(runs).sources}
    total = 19.7 + 24.8 + 7.8  # Table 3: captioning, OCR, pure-text autoregression (millions)
    assert weights == {task: round(TABLE3_SAMPLES_M[task] / total, 6) for task in weights}
    assert weights["ocr"] == pytest.approx(24.8 / total, abs=1e-6)
    assert sum(weights.values()) == pytest.approx(1.0, abs=1e-5)


def test_given_weights_win_and_the_rest_keep_their_proportions(runs):
    weights = {s.task: s.weight for s in _stage2(runs, weights={"ocr": 0.5}).sources}
    assert weights["ocr"] == 0.5
    assert weights["captioning"] == pytest.approx(0.5 * 19.7 / (19.7 + 7.8), abs=1e-6)
    assert weights["text"] == pytest.approx(0.5 * 7.8 / (19.7 + 7.8), abs=1e-6)
    every = {s.task: s.weight for s in _stage2(runs, weights={
        "captioning": 2, "ocr": 1, "text": 1}).sources}
    assert every == {"captioning": 0.5, "ocr": 0.25, "text": 0.25}


def test_stage1_and_stage3_settings_and_weights(tmp_path):
    write_run_dir(str(tmp_path / "pairs"), "captioning", task_samples("captioning", 2))
    write_run_dir(str(tmp_path / "sft"), "sft", task_samples("sft", 3))
    write_run_dir(str(tmp_path / "text"), "text", task_samples("text", 1))
    stage1 = build_manifest(1, [SourceSpec(str(tmp_path / "pairs"))])
    assert (stage1.image_size, stage1.seq_len, stage1.packing) == (224, 512, False)
    assert [(s.task, s.weight) for s in stage1.sources] == [("captioning", 1.0)]
    stage3 = build_manifest(3, [SourceSpec(str(tmp_path / "sft")),
                                SourceSpec(str(tmp_path / "text"))], seed=7)
    assert (stage3.image_size, stage3.seq_len, stage3.packing, stage3.seed) == (448, 2048, False, 7)
    assert {s.task: s.weight for s in stage3.sources} == {"sft": 0.75, "text": 0.25}


def test_write_load_round_trip_resolves_relative_paths(runs, tmp_path, monkeypatch):
    manifest_path = runs / "manifests" / "stage2.yaml"
    base_dir = str(runs / "manifests")
    manifest = build_manifest(2, [SourceSpec("../pairs", "captioning"), SourceSpec("../pdf")],
                              base_dir=base_dir)
    assert manifest.sources[0].shards[0].path == "../pairs/shards/captioning-00000-of-00002.tar"
    write_manifest(manifest, str(manifest_path))
    monkeypatch.chdir(tmp_path.parent)  # the manifest must not depend on the working directory
    loaded = load_manifest(str(manifest_path))
    shard = loaded.sources[0].shards[0]
    assert shard.path == str(runs / "pairs" / "shards" / "captioning-00000-of-00002.tar")
    assert [s.task for s in read_shard(shard.path)] == ["captioning"] * shard.samples
    assert loaded.sources[0].provenance[0].report == str(runs / "pairs" / "report.json")
    assert isinstance(loaded, Manifest) and isinstance(loaded.sources[0], ManifestSource)
    assert isinstance(shard, ManifestShard)
    assert validate_manifest(loaded) == []


def test_same_inputs_give_byte_identical_manifests(runs, tmp_path):
    texts = []
    for name in ("a.yaml", "b.yaml"):
        # sources given in another order: the manifest is sorted by task
        manifest = build_manifest(2, [SourceSpec("../pdf"), SourceSpec("../text"),
                                      SourceSpec("../pairs")], base_dir=str(runs / "m"))
        write_manifest(manifest, str(runs / "m" / name))
        texts.append((runs / "m" / name).read_bytes())
    assert texts[0] == texts[1]
    text = texts[0].decode()
    keys = [line.split(":")[0] for line in text.splitlines() if line and line[0].isalpha()]
    assert keys == ["manifest_version", "stage", "image_size", "seq_len", "packing", "seed",
                    "tokenizer", "expected_samples_per_epoch", "sources"]
    assert "  - {path: ../pairs/shards/captioning-00000-of-00002.tar, samples: 3, bytes: " in text


def test_json_manifest_loads_the_same(runs):
    manifest = _stage2(runs)
    write_manifest(manifest, str(runs / "m.json"))
    write_manifest(manifest, str(runs / "m.yaml"))
    assert load_manifest(str(runs / "m.json")) == load_manifest(str(runs / "m.yaml"))


def test_glob_of_shards_counts_samples_by_reading(tmp_path):
    shard_dir = tmp_path / "loose"
    shard_dir.mkdir()
    with open(shard_dir / "a.tar", "wb") as f:
        write_tar(task_samples("ocr", 3, dataset="synth"), f)
    with open(shard_dir / "b.parquet", "wb") as f:
        write_parquet(task_samples("ocr", 2, dataset="cc-pdf"), f)
    manifest = build_manifest(2, [SourceSpec(str(shard_dir / "*"))])
    (source,) = manifest.sources
    assert source.task == "ocr" and source.samples == 5
    assert [(s.path.rsplit("/", 1)[1], s.samples) for s in source.shards] == [
        ("a.tar", 3), ("b.parquet", 2)]
    assert [(p.report, p.dataset) for p in source.provenance] == [(None, "cc-pdf"), (None, "synth")]


def test_grounding_source_may_hold_its_duality_tasks(tmp_path):
    with open(tmp_path / "g.tar", "wb") as f:
        write_tar(task_samples("grounding", 1) + task_samples("ref_grounding", 2), f)
    with pytest.raises(ManifestError, match="several tasks"):
        build_manifest(2, [SourceSpec(str(tmp_path / "*.tar"))])
    manifest = build_manifest(2, [SourceSpec(str(tmp_path / "*.tar"), "grounding")])
    assert manifest.sources[0].samples == 3
    assert validate_manifest(manifest, deep=True) == []


def test_folder_of_runs_takes_each_reports_task(tmp_path):
    write_run_dir(str(tmp_path / "grounding" / "grit"), "grounding", task_samples("grounding", 2))
    write_run_dir(str(tmp_path / "grounding" / "refcoco"), "ref_grounding",
                  task_samples("ref_grounding", 3, dataset="refcoco"))
    manifest = build_manifest(2, [SourceSpec(str(tmp_path / "grounding"))])
    assert [(s.task, s.samples) for s in manifest.sources] == [("grounding", 2),
                                                               ("ref_grounding", 3)]


def test_fsspec_uris_are_written_as_given():
    fs = fsspec.filesystem("memory")
    local = "/tmp-manifest-test"
    try:
        report = None
        for sample in [task_samples("captioning", 2)]:
            with fsspec.open(f"memory://{local}/run/shards/captioning-00000-of-00001.tar",
                             "wb") as f:
                write_tar(sample, f)
            size = fs.size(f"{local}/run/shards/captioning-00000-of-00001.tar")
            report = build_report(pipeline="pairs", dataset="unit", task="captioning",
                                  input_count=2, outcome_counts={},
                                  shards=[ShardInfo("shards/captioning-00000-of-00001.tar", 2,
                                                    size)], reason_order=[])
        with fsspec.open(f"memory://{local}/run/report.json", "w") as f:
            f.write(dumps(report))
        manifest = build_manifest(1, [SourceSpec(f"memory://{local}/run")])
        shard = manifest.sources[0].shards[0]
        assert shard.path == f"memory://{local}/run/shards/captioning-00000-of-00001.tar"
        assert manifest.sources[0].provenance[0].report == f"memory://{local}/run/report.json"
        globbed = build_manifest(1, [SourceSpec(f"memory://{local}/run/shards/*.tar")])
        assert globbed.sources[0].shards == manifest.sources[0].shards
        assert validate_manifest(manifest, deep=True) == []
    finally:
        fs.rm(local, recursive=True)


class _GivenSamples:
    def __init__(self, samples):
        self.samples = samples

    def setup(self, worker):
        pass

    def __call__(self, index):
        yield self.samples[index]


def test_pipeline_sink_output_builds_and_validates(tmp_path, beam_argv):
    from pipelines.common import run_pipeline
    from pipelines.sinks import RunSpec
    from pipelines.tasks import plan_tasks, run_tasks

    samples = task_samples("vqa", 4)
    spec = RunSpec("vqa", "unit", "vqa", str(tmp_path / "vqa"), [],
                   formats=["webdataset", "parquet"], samples_per_shard=2)
    run_pipeline(lambda pipeline, execution: run_tasks(
        pipeline, [spec], _GivenSamples(samples), plan_tasks(list(range(4)), 4), execution),
        beam_argv, str(tmp_path / "vqa"))
    manifest = build_manifest(2, [SourceSpec(str(tmp_path / "vqa"))])
    (source,) = manifest.sources
    assert source.task == "vqa" and source.samples == 4
    assert all(s.path.endswith(".tar") for s in source.shards)  # the report's primary format
    assert validate_manifest(manifest, deep=True) == []


@pytest.mark.parametrize("text, expected", [
    ("ocr=out/pdf", SourceSpec("out/pdf", "ocr")),
    ("out/pdf", SourceSpec("out/pdf", None)),
    ("text=gs://bucket/run", SourceSpec("gs://bucket/run", "text")),
    ("gs://bucket/a=b/run", SourceSpec("gs://bucket/a=b/run", None)),
])
def test_parse_source(text, expected):
    assert parse_source(text) == expected


def test_table3_weights_with_every_stage2_task():
    from manifests.build import default_weights

    weights = default_weights(2, {task: 1 for task in TABLE3_SAMPLES_M})
    assert weights == {"captioning": 0.256510, "vqa": 0.046875, "grounding": 0.045573,
                       "ref_grounding": 0.113281, "grounded_captioning": 0.113281,
                       "ocr": 0.322917, "text": 0.101562}
