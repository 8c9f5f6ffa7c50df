"""SynthDoG: template, label fidelity, bad inputs and the pipeline (small images, few samples)."""
import io
import json
import os
import shutil
import statistics

import numpy as np
import pytest
from PIL import Image as PILImage

from corpus.config import ConfigError, from_mapping, load_config, to_mapping
from corpus.formats import format_sample, parse_quads, render as render_text
from corpus.shards import read_shard
from pipelines import synthdog as pipeline
from renderers.synthdog import text_source
from renderers.synthdog.config import DEJAVU, NOTO_CJK, LayoutConfig, SynthDogConfig
from renderers.synthdog.fonts import FontError, FontFace, discover_fonts
from renderers.synthdog.layouts import stack_layout
from renderers.synthdog.quads import quad_iou
from renderers.synthdog.template import SynthDoG, render
from renderers.synthdog.text_source import CorpusError, TextStream
from renderers.synthdog.textures import TextureError

DEJAVU_SANS = os.path.join(DEJAVU, "DejaVuSans.ttf")
SMALL = {"short_size": [320, 384], "document": {"short_size": [240, 384]}}


def small_config(**overrides) -> SynthDogConfig:
    return from_mapping(SynthDogConfig, {**SMALL, **overrides})


@pytest.fixture(scope="module")
def en_template():
    return SynthDoG(small_config(languages={"en": {"fonts": [DEJAVU_SANS]}}), keep_ink=True)


def test_compat_shims_make_synthtiger_work():
    from PIL import ImageFont

    import synthtiger  # noqa: F401  (imports imgaug, which needs np.sctypes)
    font = ImageFont.truetype(DEJAVU_SANS, 20)
    width, height = font.getsize("Hello")
    assert width >= font.getlength("Hello") and 10 < height < 30


def test_same_seed_and_index_give_the_same_sample(en_template):
    first, again = render(en_template, 7, 3), render(en_template, 7, 3)
    other = render(en_template, 7, 4)
    assert np.array_equal(first["image"], again["image"])
    assert first["lines"] == again["lines"]
    fresh = SynthDoG(small_config(languages={"en": {"fonts": [DEJAVU_SANS]}}))
    assert np.array_equal(render(fresh, 7, 3)["image"], first["image"])
    assert first["lines"] != other["lines"]


def _ious(template, indices):
    ious = []
    for index in indices:
        data = render(template, 1, index)
        for line, ink in zip(data["lines"], data["ink"]):
            if ink is not None:
                ious.append(quad_iou(line["quad"], ink))
    return ious


def test_quads_cover_the_ink_with_effects_off():
    template = SynthDoG(small_config(effects=False, languages={"en": {"fonts": [DEJAVU_SANS]}}),
                        keep_ink=True)
    ious = _ious(template, range(3))
    assert len(ious) > 20
    assert statistics.median(ious) >= 0.8, statistics.median(ious)


def test_quads_follow_the_document_effects(en_template):
    ious = _ious(en_template, range(3))
    # perspective and elastic distortion move the ink; the quads move with it
    assert statistics.median(ious) >= 0.75, statistics.median(ious)


def test_lines_are_clipped_inside_the_image(en_template):
    data = render(en_template, 2, 0)
    height, width = data["image"].shape[:2]
    for line in data["lines"]:
        xs, ys = line["quad"][0::2], line["quad"][1::2]
        assert all(0 <= x <= width for x in xs) and all(0 <= y <= height for y in ys)
        assert line["text"] == line["text"].strip() and line["text"]


def test_chinese_renders_with_a_collection_face():
    template = SynthDoG(small_config(lang="zh", languages={
        "zh": {"fonts": [f"{NOTO_CJK}/NotoSansCJK-Regular.ttc#2"]}}))
    data = render(template, 0, 0)
    assert data["language"] == "zh" and data["lines"]
    assert all(line["font"].endswith("NotoSansCJK-Regular.ttc#2") for line in data["lines"])
    assert any("\u4e00" <= c <= "\u9fff" for line in data["lines"] for c in line["text"])


def test_collection_without_index_gives_every_face():
    inventory = discover_fonts([f"{NOTO_CJK}/NotoSansCJK-Regular.ttc"], {"中": 1, "文": 1}, 1.0,
                               "zh")
    assert len(inventory.faces) >= 5
    assert FontFace(f"{NOTO_CJK}/NotoSansCJK-Regular.ttc", 2) in inventory.faces


def test_font_lacking_characters_skips_them_counted(tmp_path):
    # synthtiger's charset file beside the font says what it may draw: here no "e"
    font = tmp_path / "NoE.ttf"
    shutil.copy(DEJAVU_SANS, font)
    corpus = tmp_path / "text.txt"
    corpus.write_text("the seven green trees " * 40, encoding="utf-8")
    (tmp_path / "NoE.txt").write_text("thsvngr", encoding="utf-8")
    template = SynthDoG(small_config(min_font_coverage=0.5, languages={
        "en": {"fonts": [str(font)], "corpus": [str(corpus)]}}))
    data = render(template, 0, 0)
    assert data["lines"] and data["chars_skipped"] > 0
    assert not any("e" in line["text"] for line in data["lines"])


def test_font_without_the_corpus_characters_is_left_out():
    with pytest.raises(FontError, match="covering under"):
        SynthDoG(small_config(lang="zh", languages={"zh": {"fonts": [DEJAVU_SANS]}}))
    # coverage counts occurrences: one rare symbol does not rule a face out
    text = {"a": 500, "b": 300, "中": 1}
    assert len(discover_fonts([DEJAVU_SANS], text, 0.98, "en").faces) == 1
    with pytest.raises(FontError, match="covering under"):
        discover_fonts([DEJAVU_SANS], {"a": 1, "中": 1}, 0.98, "en")


def test_unreadable_font_is_counted_and_alone_is_an_error(tmp_path):
    broken = tmp_path / "broken.ttf"
    broken.write_bytes(b"not a font at all")
    inventory = discover_fonts([str(tmp_path), DEJAVU_SANS], {"a": 1}, 1.0, "en")
    assert inventory.unreadable and len(inventory.faces) == 1
    with pytest.raises(FontError, match="unreadable"):
        discover_fonts([str(broken)], {"a": 1}, 1.0, "en")


def test_bad_corpus_is_a_clear_error(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text(" \n\n\t", encoding="utf-8")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("café".encode("latin-1"))
    with pytest.raises(CorpusError, match="no text"):
        TextStream([str(empty)])
    with pytest.raises(CorpusError, match="not UTF-8"):
        TextStream([str(latin1)])
    with pytest.raises(CorpusError, match="not found"):
        TextStream([str(tmp_path / "missing.txt")])
    with pytest.raises(CorpusError, match="is a folder"):
        TextStream([str(tmp_path)])


def test_corpus_is_read_in_blocks_across_files(tmp_path, monkeypatch):
    # Blocks of a few bytes: characters of 1 to 4 bytes straddle every block boundary.
    monkeypatch.setattr(text_source, "BLOCK_BYTES", 5)
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text("中文 and ü é 𝄞\nsecond line", encoding="utf-8")
    second.write_text("another file", encoding="utf-8")
    stream = TextStream([str(first), str(second)])
    ring = first.read_text(encoding="utf-8") + " " + second.read_text(encoding="utf-8") + " "
    assert len(stream) == len(ring)
    assert all(stream.read(i, 40) == (ring * 3)[i:i + 40] for i in range(len(ring)))
    assert stream.chars()["中"] == 1 and " " not in stream.chars()

    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine text " * 3 + b"\xff more")  # the bad byte lies in a later block
    with pytest.raises(CorpusError, match="not UTF-8.*byte 30"):
        TextStream([str(bad)])


def _jpeg(path, size=(96, 64)):
    buffer = io.BytesIO()
    PILImage.new("RGB", size, (90, 120, 200)).save(buffer, format="JPEG")
    path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


def test_backgrounds_unreadable_files_counted_or_error(tmp_path):
    _jpeg(tmp_path / "good.jpg")
    (tmp_path / "bad.png").write_bytes(b"nope")
    template = SynthDoG(small_config(backgrounds=[str(tmp_path)]))
    assert template.inventory["backgrounds"] == {
        "count": 1, "generated": False, "unreadable": 1,
        "unreadable_names": [str(tmp_path / "bad.png")]}
    os.remove(tmp_path / "good.jpg")
    with pytest.raises(TextureError, match="no readable background"):
        SynthDoG(small_config(backgrounds=[str(tmp_path)]))


def test_pipeline_writes_ocr_samples_with_quads(tmp_path, beam_argv):
    config = small_config(lang="both")
    report = pipeline.run(str(tmp_path), "unit", config, beam_argv, count=3, seed=5)
    assert (report["input"], report["kept"]) == (3, 3)
    assert report["stats"]["en"] + report["stats"]["zh"] == 3
    # a task per index at this size (a small run spreads over many cores): a shard each
    samples = [s for shard in report["shards"] for s in read_shard(str(tmp_path / shard["path"]))]
    assert [s.extra["index"] for s in samples] == [0, 1, 2]
    for sample in samples:
        assert sample.task == "ocr" and sample.regions
        assert all(r.kind == "line" and len(r.quad) == 8 for r in sample.regions)
        text = render_text(format_sample(sample))
        assert "OCR with grounding:" in text
        assert [t for t, _ in parse_quads(text)] == [r.text for r in sample.regions]
        image = PILImage.open(io.BytesIO(sample.images[0].data))
        assert image.size == (sample.images[0].width, sample.images[0].height)


def test_pipeline_counts_pages_without_text_and_broken_backgrounds(tmp_path, beam_argv):
    # text rows as tall as the page: no grid fits, nothing is written on it
    config = small_config(document={"short_size": [240, 384], "content": {
        "layout": {"text_scale": [1.5, 2.0]}}})
    report = pipeline.run(str(tmp_path / "empty"), "unit", config, beam_argv, count=2)
    assert report["dropped"] == {"no_text_placed": 2} and report["kept"] == 0

    # a JPEG cut short passes the header check, then fails to decode: an errored unit
    backgrounds = tmp_path / "backgrounds"
    backgrounds.mkdir()
    data = _jpeg(backgrounds / "whole.jpg", (640, 480))
    (backgrounds / "whole.jpg").write_bytes(data[: len(data) // 3])
    config = small_config(backgrounds=[str(backgrounds)])
    report = pipeline.run(str(tmp_path / "broken"), "unit", config, beam_argv, count=2)
    assert report["errored"] == {"unreadable_background": 2}


def test_tasks_are_index_ranges_of_the_count_and_shard_size_only():
    def ranges(start, count, samples_per_shard):
        tasks = pipeline.plan_ranges(start, count, 3, "en", samples_per_shard)
        assert [task.index for task in tasks] == list(range(len(tasks)))
        units = [unit for task in tasks for unit in task.units]
        assert units[0].start == start and units[-1].stop == start + count
        assert all(a.stop == b.start for a, b in zip(units, units[1:]))
        return units

    assert len(ranges(0, 3, 1000)) == 3  # a small run still spreads: an index per task
    middle = ranges(10, 3000, 1000)  # ceil(3000 / 256) indices a task
    assert len(middle) == 250 and {u.stop - u.start for u in middle} == {12}
    large = ranges(0, 1_000_000, 1000)  # a shard's worth a task
    assert len(large) == 1000 and {u.stop - u.start for u in large} == {1000}
    assert {u.stop - u.start for u in ranges(0, 1_000_000, 64)} == {64}
    assert [i.key for i in middle[0].indices()][:2] == ["en/3/10", "en/3/11"]


def test_an_exception_on_one_index_errs_that_index_only(monkeypatch):
    work = pipeline.RenderSynthDog(small_config(languages={"en": {"fonts": [DEJAVU_SANS]}}),
                                   "unit")
    work.setup(0)

    def flaky(template, seed, index):
        if index == 1:
            raise RuntimeError("no memory left for this page")
        return render(template, seed, index)

    monkeypatch.setattr(pipeline, "render", flaky)
    items = list(work(pipeline.IndexRange(0, 3, 0, "en")))
    assert [type(item).__name__ for item in items] == ["Sample", "Reject", "Sample"]
    assert (items[1].key, items[1].reason, items[1].status) == ("en/0/1", "RuntimeError",
                                                                "errored")
    assert "no memory left" in items[1].detail


def test_cli_reports_an_empty_corpus(tmp_path, capsys):
    from corpus.cli import main

    empty = tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")
    code = main(["synthdog", "--count", "1", "--output", str(tmp_path / "out"), "--corpus",
                 str(empty), "--runner=DirectRunner", "--direct_running_mode=in_memory"])
    assert code == 2
    assert "corpus has no text" in capsys.readouterr().err


def test_example_config_is_the_defaults_and_partial_effects_keep_their_args():
    path = os.path.join(os.path.dirname(pipeline.__file__), "configs", "synthdog.yaml")
    default = SynthDogConfig()
    default.validate()
    assert to_mapping(load_config(SynthDogConfig, path)) == to_mapping(default)
    config = from_mapping(SynthDogConfig, {"effect": {"shadow": {"prob": 0.5}}})
    assert config.effect.shadow.prob == 0.5
    assert config.effect.shadow.args["intensity"] == [0, 160]


# SynthDoG's config_en.yaml (config_zh.yaml differs only in its corpus and font folders), in
# this project's key names: every value below is SynthDoG's.
SYNTHDOG = {
    "quality": [50, 95], "landscape": 0.5, "short_size": [720, 1024], "aspect_ratio": [1, 2],
    "background": {"blur": {"prob": 1, "args": {"sigma": [0, 10]}}},
    "document": {
        "fullscreen": 0.5, "landscape": 0.5, "short_size": [480, 1024], "aspect_ratio": [1, 2],
        "paper": {"alpha": [0, 0.2], "grayscale": 1, "crop": 1},
        "content": {
            "margin": [0, 0.1], "bold": 0,
            "layout": {"text_scale": [0.0334, 0.1], "max_row": 10, "max_col": 3,
                       "fill": [0.5, 1], "full": 0.1, "align": ["left", "right", "center"],
                       "stack_spacing": [0.0334, 0.0334], "stack_fill": [0.5, 1],
                       "stack_full": 0.1},
            "textbox_fill": [0.5, 1],
            "textbox_color": {"prob": 0.2, "args": {"gray": [0, 64], "colorize": 1}},
            "content_color": {"prob": 0.2, "args": {"gray": [0, 64], "colorize": 1}},
        },
        "elastic_distortion": {"prob": 1, "args": {"alpha": [0, 1], "sigma": [0, 0.5]}},
        "gaussian_noise": {"prob": 1, "args": {"scale": [0, 8], "per_channel": 0}},
        "perspective": {"prob": 1, "args": {
            "weights": [750, 50, 50, 25, 25, 25, 25, 50],
            "percents": [[[0.75, 1], [0.75, 1], [0.75, 1], [0.75, 1]],
                         [[0.75, 1], [1, 1], [0.75, 1], [1, 1]],
                         [[1, 1], [0.75, 1], [1, 1], [0.75, 1]],
                         [[0.75, 1], [1, 1], [1, 1], [1, 1]],
                         [[1, 1], [0.75, 1], [1, 1], [1, 1]],
                         [[1, 1], [1, 1], [0.75, 1], [1, 1]],
                         [[1, 1], [1, 1], [1, 1], [0.75, 1]],
                         [[1, 1], [1, 1], [1, 1], [1, 1]]]}},
    },
    "effect": {
        "color": {"prob": 0.2, "args": {"rgb": [[0, 255], [0, 255], [0, 255]],
                                        "alpha": [0, 0.2]}},
        "shadow": {"prob": 1, "args": {"intensity": [0, 160], "amount": [0, 1],
                                       "smoothing": [0.5, 1], "bidirectional": 0}},
        "contrast": {"prob": 1, "args": {"alpha": [1, 1.5]}},
        "brightness": {"prob": 1, "args": {"beta": [-48, 0]}},
        "motion_blur": {"prob": 0.5, "args": {"k": [3, 5], "angle": [0, 360]}},
        "gaussian_blur": {"prob": 1, "args": {"sigma": [0, 1.5]}},
    },
}


def _as_in(mapping, like):
    """`mapping` cut down to the keys of `like`, recursively."""
    return {key: _as_in(mapping[key], value) if isinstance(value, dict) else mapping[key]
            for key, value in like.items()}


def test_defaults_are_synthdogs():
    config = SynthDogConfig()
    config.validate()
    assert _as_in(to_mapping(config), SYNTHDOG) == SYNTHDOG
    # no other effect argument is set: the rest keep synthtiger's defaults, as in SynthDoG
    for section in ("effect", "document", "background"):
        for name, value in to_mapping(config)[section].items():
            if isinstance(value, dict) and "args" in value:
                assert value["args"].keys() == SYNTHDOG[section][name]["args"].keys()


def test_perspective_is_synthdogs_weighted_table(en_template):
    selector = en_template.documents["en"].effect.components[2].component
    table = SYNTHDOG["document"]["perspective"]["args"]
    assert selector.weights == table["weights"]
    assert [p.percents for p in selector.components] == table["percents"]
    assert all(p.aligns == ((-1, 1),) * 4 for p in selector.components)  # synthtiger's default
    with pytest.raises(ConfigError, match="1 weights and 8 choices"):
        from_mapping(SynthDogConfig, {"document": {"perspective": {"args": {"weights": [1]}}}})
    with pytest.raises(ConfigError, match="Shadow effect"):
        SynthDoG(small_config(effect={"shadow": {"args": {"intensty": [0, 9]}}}))


def test_grids_of_a_page_share_one_fill():
    # SynthDoG draws `fill` once per page: every grid's columns take the same share of the width
    config = LayoutConfig(text_scale=[0.0334, 0.05], fill=[0.5, 0.6], full=0)
    np.random.seed(3)
    for _ in range(5):
        grids = stack_layout([0, 0, 600, 800], config)
        shares = {round(sum({box[0]: box[2] for box, _ in grid}.values()) / 600, 6)
                  for grid in grids}
        assert len(grids) > 1 and len(shares) == 1 and 0.5 <= shares.pop() <= 0.6


def test_cli_takes_background_images_and_a_corpus(tmp_path, capsys):
    from corpus.cli import main

    backgrounds = tmp_path / "backgrounds"
    backgrounds.mkdir()
    for i, colour in enumerate([(200, 40, 40), (40, 160, 60), (30, 60, 190)]):
        PILImage.new("RGB", (160, 120), colour).save(backgrounds / f"photo-{i}.jpg")
    corpus = tmp_path / "wiki.txt"
    corpus.write_text("Paris is the capital of France.\n\nIts river is the Seine.\n" * 50,
                      encoding="utf-8")
    config = tmp_path / "small.yaml"
    config.write_text("short_size: [320, 384]\ndocument: {short_size: [240, 384]}\n")
    out = tmp_path / "out"
    code = main(["synthdog", "--count", "2", "--output", str(out), "--config", str(config),
                 "--backgrounds", str(backgrounds), "--corpus", str(corpus),
                 "--runner=DirectRunner", "--direct_running_mode=in_memory"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert report["kept"] == 2
    inventory = report["stats"]["inventory"]
    assert inventory["backgrounds"] == {"count": 3, "generated": False, "unreadable": 0,
                                        "unreadable_names": []}
    assert inventory["en"]["corpus"] == [str(corpus)]
    text = corpus.read_text(encoding="utf-8").replace("\n\n", " ").replace("\n", " ")
    lines = [r.text for shard in report["shards"]
             for s in read_shard(str(out / shard["path"])) for r in s.regions]
    assert lines and all(line in text for line in lines)
