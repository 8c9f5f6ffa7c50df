"""`corpus manifest build | validate | show` and the demo's stage 1/2/3 manifests."""
import os

from corpus.cli import main as corpus
from manifests.demo import build_demo_manifests
from manifests.manifest import load_manifest, validate_manifest
from test_manifest import task_samples, write_run_dir


def test_build_validate_show(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_run_dir("out/pairs", "captioning", task_samples("captioning", 3), pipeline="pairs")
    write_run_dir("out/pdf", "ocr", task_samples("ocr", 2), pipeline="pdf")
    assert corpus(["manifest", "build", "--stage", "2", "--source", "captioning=out/pairs",
                   "--source", "out/pdf", "--weight", "ocr=0.4", "--seed", "3",
                   "--output", "m/stage2.yaml"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("wrote m/stage2.yaml: stage 2, 2 task(s), 2 shard(s), 5 samples\n")
    assert "  ocr                  weight 0.4000  2 samples in 1 shard(s)" in out
    text = (tmp_path / "m" / "stage2.yaml").read_text()
    assert "path: ../out/pairs/shards/captioning-00000-of-00001.tar" in text
    assert "seed: 3\n" in text

    assert corpus(["manifest", "validate", "m/stage2.yaml", "--deep"]) == 0
    assert capsys.readouterr().out == ("m/stage2.yaml: OK (stage 2, 2 task(s), 2 shard(s), "
                                       "5 samples, every sample read)\n")

    assert corpus(["manifest", "show", "m/stage2.yaml"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ("stage 2: image 448x448, seq_len 2048, packing on, seed 3, "
                        "tokenizer trainer default")
    assert lines[1] == "expected samples per epoch: 5"
    assert lines[2].split() == ["task", "weight", "shards", "samples", "bytes", "draws/epoch",
                                "passes", "tokens/sample", "tokens/epoch"]
    ocr = lines[4].split()
    assert ocr[:4] == ["ocr", "0.4000", "1", "2"] and ocr[6:8] == ["2", "1.00"]
    assert int(ocr[8]) > 258  # one image (256 + <img></img>) plus the OCR text
    assert lines[5].split()[:4] == ["total", "1.0000", "2", "5"]
    assert lines[6].startswith("packed into sequences of 2048: at least 1 sequences")


def test_validate_and_build_fail_with_a_list_of_problems(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_run_dir("out/pdf", "ocr", task_samples("ocr", 2))
    assert corpus(["manifest", "build", "--stage", "1", "--source", "out/pdf", "--source",
                   "captions=out/pdf", "--output", "m.yaml"]) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "corpus manifest build: 2 problem(s):",
        "  - out/pdf/report.json: task 'ocr' is not allowed in stage 1 (allowed: captioning)",
        "  - out/pdf: unknown task 'captions'; known: captioning, vqa, grounding, ref_grounding, "
        "grounded_captioning, ocr, text, sft"]
    assert not os.path.exists("m.yaml")

    assert corpus(["manifest", "build", "--stage", "2", "--source", "out/pdf",
                   "--output", "m.yaml"]) == 0
    os.remove("out/pdf/shards/ocr-00000-of-00001.tar")
    capsys.readouterr()
    assert corpus(["manifest", "validate", "m.yaml"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == ["m.yaml: 1 problem(s):",
                   f"  - ocr: shard {tmp_path}/out/pdf/shards/ocr-00000-of-00001.tar: missing"]
    assert corpus(["manifest", "show", "m.yaml"]) == 0  # still shows, tokens unknown
    assert capsys.readouterr().out.splitlines()[3].split()[-2:] == ["-", "-"]
    assert corpus(["manifest", "validate", "none.yaml"]) == 1
    assert "no such manifest" in capsys.readouterr().err


def test_demo_builds_every_stage_from_what_exists(tmp_path):
    out = tmp_path / "demo"
    write_run_dir(str(out / "pairs"), "captioning", task_samples("captioning", 3))
    write_run_dir(str(out / "grounding" / "grit"), "grounding", task_samples("grounding", 2))
    write_run_dir(str(out / "grounding" / "refcoco"), "ref_grounding",
                  task_samples("ref_grounding", 2))
    write_run_dir(str(out / "pdf"), "ocr", task_samples("ocr", 1))
    write_run_dir(str(out / "synthdog"), "ocr", task_samples("ocr", 2, dataset="synthdog"))
    write_run_dir(str(out / "html"), "ocr", [], dropped=2)  # kept nothing: left out
    write_run_dir(str(out / "text"), "text", task_samples("text", 2))
    write_run_dir(str(out / "sft"), "sft", task_samples("sft", 2))
    names = ["grounding", "html", "pairs", "pdf", "sft", "synthdog", "text", "vqa"]  # no vqa run

    written = build_demo_manifests(str(out), names)
    assert written == {stage: str(out / "manifests" / f"stage{stage}.yaml") for stage in (1, 2, 3)}
    tasks = {stage: [(s.task, s.samples) for s in load_manifest(path).sources]
             for stage, path in written.items()}
    assert tasks == {1: [("captioning", 3)],
                     2: [("captioning", 3), ("grounding", 2), ("ocr", 3), ("ref_grounding", 2),
                         ("text", 2)],
                     3: [("sft", 2), ("text", 2)]}
    stage2 = load_manifest(written[2])
    assert [len(s.provenance) for s in stage2.sources] == [1, 1, 2, 1, 1]
    assert all(validate_manifest(load_manifest(path)) == [] for path in written.values())
    assert "path: ../pairs/shards/captioning-00000-of-00001.tar" in open(written[1]).read()

    before = {stage: open(path, "rb").read() for stage, path in written.items()}
    build_demo_manifests(str(out), names)
    assert {stage: open(path, "rb").read() for stage, path in written.items()} == before


def test_demo_skips_stages_without_data(tmp_path):
    write_run_dir(str(tmp_path / "pdf"), "ocr", task_samples("ocr", 1))
    assert build_demo_manifests(str(tmp_path), ["pdf", "pairs"]) == {
        2: str(tmp_path / "manifests" / "stage2.yaml")}


def test_tokenizer_path_is_written_relative_and_used_by_show(tmp_path, monkeypatch, capsys):
    from corpus.tokens import TextTokenizer

    monkeypatch.chdir(tmp_path)
    write_run_dir("out/text", "text", task_samples("text", 2))
    TextTokenizer.train(["plain text number"] * 20, vocab_size=300).save("tok.json")
    assert corpus(["manifest", "build", "--stage", "3", "--source", "out/text", "--tokenizer",
                   "tok.json", "--output", "m/s3.yaml"]) == 0
    assert "tokenizer: ../tok.json\n" in (tmp_path / "m" / "s3.yaml").read_text()
    assert load_manifest("m/s3.yaml").tokenizer == str(tmp_path / "tok.json")
    capsys.readouterr()
    assert corpus(["manifest", "show", "m/s3.yaml"]) == 0
    out = capsys.readouterr().out
    assert f"tokenizer {tmp_path / 'tok.json'}" in out
    os.remove("tok.json")
    assert validate_manifest(load_manifest("m/s3.yaml")) == [
        f"tokenizer {tmp_path / 'tok.json'}: not found"]
