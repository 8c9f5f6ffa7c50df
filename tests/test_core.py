"""The small core pieces: ids, config loading, report accounting, tokenizer, packing, CLI."""
import json
import subprocess
import sys

import pytest
import yaml

from dataclasses import dataclass, field

from conftest import make_image, make_sample
from corpus.config import ConfigError, load_config
from corpus.formats import format_sample
from corpus.ids import sample_id
from corpus.packing import oversized, plan_packs
from corpus.report import AccountingError, build_report, retention_rows
from corpus.shards import ShardInfo
from corpus.tokens import IMAGE_TOKENS, TextTokenizer, count_span_tokens


def test_ids_are_stable():
    assert sample_id("laion", "00001.tar#000010001") == sample_id("laion", "00001.tar#000010001")
    assert sample_id("laion", "a") != sample_id("coyo", "a")
    assert len(sample_id("x", "y")) == 20


@dataclass
class Inner:
    threshold: float = 0.3


@dataclass
class Settings:
    name: str = "x"
    limit: int = 10
    inner: Inner = field(default_factory=Inner)

    def validate(self):
        if self.limit < 0:
            raise ValueError("limit must be >= 0")


def test_config_defaults_overrides_and_errors(tmp_path):
    assert load_config(Settings, None) == Settings()
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"limit": 3, "inner": {"threshold": 0.2},
                                    "datasets": {"coyo": {"inner": {"threshold": 0.28}}}}))
    assert load_config(Settings, str(path)).inner.threshold == 0.2
    coyo = load_config(Settings, str(path), dataset="coyo")
    assert (coyo.limit, coyo.inner.threshold) == (3, 0.28)
    path.write_text(yaml.safe_dump({"limt": 3}))
    with pytest.raises(ConfigError, match="limt"):
        load_config(Settings, str(path))
    path.write_text(yaml.safe_dump({"limit": -1}))
    with pytest.raises(ValueError, match="limit"):
        load_config(Settings, str(path))


def test_report_accounts_for_every_input():
    shards = [ShardInfo("shards/b.tar", 3, 100), ShardInfo("shards/a.tar", 2, 50)]
    report = build_report(pipeline="p", dataset="d", task="captioning", input_count=10,
                          outcome_counts={("dropped", "too_small"): 2, ("dropped", "aspect"): 1,
                                          ("errored", "corrupt_image"): 2},
                          shards=shards, reason_order=["aspect", "too_small", "emoji"])
    assert report["kept"] == 5 and list(report["dropped"]) == ["aspect", "too_small"]
    assert [s["path"] for s in report["shards"]] == ["shards/a.tar", "shards/b.tar"]
    # errored inputs first (no rule saw them), then every rule, one that dropped nothing too
    assert retention_rows(report) == [("error: corrupt_image", 2, 8), ("aspect", 1, 7),
                                      ("too_small", 2, 5), ("emoji", 0, 5)]
    with pytest.raises(AccountingError, match="!= input 11"):
        build_report(pipeline="p", dataset="d", task="captioning", input_count=11,
                     outcome_counts={}, shards=shards, reason_order=[])


def test_tokenizer_keeps_special_tokens_whole_and_counts_images():
    tokenizer = TextTokenizer.default()
    ids = tokenizer.encode("<ref>cat</ref><box>(1,2),(3,4)</box><|im_start|>")
    assert tokenizer.token_id("<ref>") in ids and tokenizer.token_id("<|im_start|>") in ids
    assert tokenizer.decode(tokenizer.encode("一只猫 on a mat")) == "一只猫 on a mat"
    spans = format_sample(make_sample(text="a cat"))
    text_only = sum(tokenizer.count(s.text) for s in spans if s.image is None)
    assert count_span_tokens(spans, tokenizer) == text_only + IMAGE_TOKENS + 2


def test_tokenizer_saves_and_loads(tmp_path):
    tokenizer = TextTokenizer.train(["hello world", "你好 世界"] * 20, vocab_size=300)
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    loaded = TextTokenizer.load(str(tmp_path))
    assert loaded.encode("hello <img>") == tokenizer.encode("hello <img>")


def test_packing_plan_respects_the_budget_and_uses_every_sample():
    import random

    rng = random.Random(0)
    lengths = [rng.randint(1, 600) for _ in range(500)] + [3000]
    packs = plan_packs(lengths, 2048)
    assert sorted(i for p in packs for i in p) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in p) <= 2048 for p in packs if len(p) > 1)
    assert oversized(lengths, 2048) == [500]
    lower_bound = sum(lengths) / 2048
    assert len(packs) <= 11 / 9 * lower_bound + 2
    assert plan_packs(lengths, 2048) == packs  # deterministic


def _corpus(*args):
    return subprocess.run([sys.executable, "-m", "corpus.cli", *args], capture_output=True,
                          text=True)


def test_cli_lists_the_planned_commands():
    result = _corpus("--help")
    assert result.returncode == 0
    for name in ("pairs", "pdf", "html", "synthdog", "grounding", "vqa", "sft", "manifest",
                 "train", "export", "inspect", "demo", "text"):
        assert name in result.stdout
    assert _corpus("nonsense").returncode == 2


def test_cli_runs_a_pipeline_on_forked_workers(tmp_path):
    """`--workers` is the command's own flag; the run's report says the work was done."""
    from corpus.samples.text import write_demo_inputs

    inputs = write_demo_inputs(str(tmp_path / "in"))
    result = _corpus("text", "--input", *inputs.patterns, "--output", str(tmp_path / "out"),
                     "--workers", "2")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["kept"] > 0 and report["input"] == report["kept"] + report["dropped_total"] \
        + report["errored_total"]
    assert "--workers" in _corpus("text", "--help").stdout


def test_inspect_prints_and_draws(tmp_path):
    from corpus.schema import Region
    from corpus.shards import write_tar

    sample = make_sample("i", "OCR", task="ocr", images=[make_image(200, 100, (255, 255, 255))],
                         regions=[Region("line", "OCR", (10, 10, 90, 40)),
                                  Region("word", "OCR", quad=(100, 50, 150, 50, 150, 80, 100, 80))])
    shard = tmp_path / "s.tar"
    with open(shard, "wb") as f:
        write_tar([sample, make_sample("t", "only text", task="text", images=[])], f)
    result = _corpus("inspect", str(shard), "--output", str(tmp_path / "png"))
    assert result.returncode == 0, result.stderr
    assert "OCR with grounding: <ref>OCR</ref> <quad>(50,100), (450,100)" in result.stdout
    assert "only text" in result.stdout
    from PIL import Image

    preview = Image.open(tmp_path / "png" / f"001-ocr-{sample.id}.png")  # order, task, id
    assert preview.getpixel((10, 20)) == (255, 40, 40)  # the line box is drawn in red
    assert preview.getpixel((125, 50)) == (0, 160, 255)  # the word quad in blue
    # the legend right of the image: each region's text in its kind's colour
    from corpus.inspect import LEGEND_WIDTH
    assert preview.width == 200 + LEGEND_WIDTH
    legend = [colour for _, colour in
              preview.crop((200, 0, preview.width, preview.height)).getcolors(1 << 16)]
    assert any(r < 80 and g < 80 and b < 80 for r, g, b in legend)  # the head, in black
    assert any(r > 200 and g < 120 and b < 120 for r, g, b in legend)  # the line's text, red
    assert any(r < 100 and g > 120 and b > 200 for r, g, b in legend)  # the word's, blue


def test_cli_reports_user_errors_without_a_traceback(tmp_path):
    result = _corpus("text", "--input", str(tmp_path / "missing" / "*.txt"), "--output",
                     str(tmp_path / "out"))
    assert result.returncode == 2
    assert "no input matched" in result.stderr and "Traceback" not in result.stderr
    config = tmp_path / "bad.yaml"
    config.write_text("bogus_key: 1\n")
    result = _corpus("vqa", "--input", str(tmp_path), "--dataset", "d", "--output",
                     str(tmp_path / "out"), "--config", str(config))
    assert result.returncode == 2 and "bogus_key" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--samples-per-shards", "5"],
     "unknown option --samples-per-shards (did you mean --samples-per-shard?)"),
    (["--dpii", "100"], "unknown option --dpii"),
    (["-n", "3"], "unknown option -n"),
])
def test_an_unknown_flag_stops_the_command_before_it_runs(tmp_path, args, message):
    result = _corpus("synthdog", "--count", "2", "--output", str(tmp_path / "out"), *args)
    assert result.returncode == 2 and message in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


def test_an_output_that_cannot_be_a_folder_stops_the_command(tmp_path):
    (tmp_path / "taken").write_text("a file")
    for output in (tmp_path / "taken", tmp_path / "taken" / "out"):
        result = _corpus("synthdog", "--count", "1", "--output", str(output))
        assert result.returncode == 2 and "is a file, not a folder" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert _corpus("--version").stdout.startswith("corpus ")


def test_beam_flags_pass_through(tmp_path):
    result = _corpus("synthdog", "--count", "1", "--output", str(tmp_path / "out"),
                     "--runner=DirectRunner", "--direct_running_mode", "in_memory",
                     "--direct_num_workers=1", "--samples-per-shard", "1")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "out" / "report.json").read_text())["kept"] == 1


@pytest.mark.parametrize("config, message", [
    ("image: {min_side: '200'}", "image.min_side: expected int | None, got '200'"),
    ("text: {languages: en}", "text.languages: expected list[str] | None, got 'en'"),
    ("image: 5", "image: expected a mapping, got 5"),
])
def test_a_config_value_of_the_wrong_type_stops_the_command(tmp_path, config, message):
    path = tmp_path / "bad.yaml"
    path.write_text(config + "\n")
    result = _corpus("pairs", "--input", str(tmp_path), "--dataset", "d", "--output",
                     str(tmp_path / "out"), "--config", str(path))
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_tar_records_are_sorted_compact_json_and_take_numpy_numbers():
    import numpy as np

    from corpus.schema import Image, Region, Sample, Source
    from corpus.shards import tar_members

    sample = Sample(id="s1", dataset="d", task="ocr", source=Source(uri="u", key="k"),
                    images=[Image(b"\xff\xd8", "jpeg", 4, 4)], text="é",
                    regions=[Region("word", "é", (np.float64(1.5), np.float32(2.0), 3, 4.0))])
    (name, record), *_ = tar_members(sample)
    assert name == "s1.json"
    assert record.startswith(b'{"answer":null,"clip_score":null,') and "é".encode() in record
    assert json.loads(record)["regions"][0]["box"] == [1.5, 2.0, 3, 4.0]
