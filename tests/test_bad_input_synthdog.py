"""`corpus synthdog` fed the worst resources together in one run: its inputs are fonts, a text
corpus and background images. `test_synthdog.py` checks each kind of bad resource alone
(a font lacking characters, an unreadable font, a bad corpus, an unreadable background, a JPEG
cut short); this module gives one run all of them at once, with more: a 0-byte, a garbage and a
truncated font beside a font whose charset lacks "e", a corpus of one 1 MB line with control
characters and blank lines, and backgrounds that are 0 bytes, garbage, cut short, and
decompression bombs (one Pillow refuses to open, one it would decode: 432 MB as RGB). Every
rendered index ends kept or under a named reason, unreadable resources are counted in the
report's inventory, and the run's peak memory is measured. Input that leaves nothing to work
with (no readable background, a corpus that is a folder, binary or empty, a bad effect table)
stops `corpus synthdog` before the run with one line naming it."""
from __future__ import annotations

import io
import shutil

import pytest
from PIL import Image as PILImage

from bad_input import check_rejects_match_report, kept_samples, reason_of, rejects_table, \
    run_measured
from corpus.samples.pairs import png_bomb
from renderers.synthdog.config import DEJAVU

COUNT = 8


def jpeg(size=(640, 480)) -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", size, (90, 120, 200)).save(buffer, format="JPEG")
    return buffer.getvalue()


def write_inputs(folder) -> None:
    fonts = folder / "fonts"
    fonts.mkdir(parents=True)
    sans = f"{DEJAVU}/DejaVuSans.ttf"
    shutil.copy(sans, fonts / "Good.ttf")
    shutil.copy(sans, fonts / "NoE.ttf")
    (fonts / "NoE.txt").write_text("thsvngrabcdfijklmopquwxyz", encoding="utf-8")  # no "e"
    (fonts / "empty.ttf").write_bytes(b"")
    (fonts / "garbage.otf").write_bytes(b"not a font at all" * 100)
    with open(sans, "rb") as f:
        (fonts / "cut.ttf").write_bytes(f.read(2000))
    # One 1 MB line with control characters, between blank lines.
    (folder / "corpus.txt").write_bytes(
        b"\n\n\n" + b"the seven green trees\x07 stand\x0c by the river " * 24_000 + b"\n\n")
    backgrounds = folder / "backgrounds"
    backgrounds.mkdir()
    (backgrounds / "good.jpg").write_bytes(jpeg())
    (backgrounds / "empty.png").write_bytes(b"")
    (backgrounds / "garbage.jpg").write_bytes(b"not an image" * 50)
    data = jpeg()
    (backgrounds / "cut.jpg").write_bytes(data[: len(data) // 3])
    (backgrounds / "bomb.png").write_bytes(png_bomb())
    (backgrounds / "quiet-bomb.png").write_bytes(png_bomb(12_000, 12_000))


@pytest.fixture(scope="module")
def outcome(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthdog")
    write_inputs(root / "in")
    measured = run_measured("""
        from conftest import IN_MEMORY
        from corpus.config import from_mapping
        from pipelines import synthdog
        from renderers.synthdog.config import SynthDogConfig
    """, f"""
        config = from_mapping(SynthDogConfig, {{
            "short_size": [320, 384], "document": {{"short_size": [240, 384]}},
            "min_font_coverage": 0.5, "backgrounds": [{str(root / "in" / "backgrounds")!r}],
            "languages": {{"en": {{"fonts": [{str(root / "in" / "fonts")!r}],
                                   "corpus": [{str(root / "in" / "corpus.txt")!r}]}}}}}})
        report = synthdog.run({str(root / "out")!r}, "bad", config, IN_MEMORY, count={COUNT})
    """, root)
    return root / "out", measured


def test_every_index_is_counted_under_its_reason(outcome):
    report = outcome[1].report
    assert report["input"] == COUNT
    assert report["kept"] == 5 and report["dropped"] == {}
    # The JPEG cut short passes the header check and fails when drawn from (seed 0 picks it 3
    # times); the other bad backgrounds and fonts are left out before the run, and counted.
    assert report["errored"] == {"unreadable_background": 3}
    inventory = report["stats"]["inventory"]
    assert inventory["backgrounds"]["count"] == 2  # good.jpg and cut.jpg
    assert sorted(name.rsplit("/", 1)[1] for name in
                  inventory["backgrounds"]["unreadable_names"]) == [
        "bomb.png", "empty.png", "garbage.jpg", "quiet-bomb.png"]
    fonts = inventory["en"]["fonts"]
    assert fonts["faces"] == 2 and fonts["low_coverage"] == 0
    assert sorted(name.rsplit("/", 1)[1] for name in fonts["unreadable_names"]) == [
        "cut.ttf: TTLibError", "empty.ttf: TTLibError", "garbage.otf: TTLibError"]
    assert inventory["en"]["corpus_chars"] > 900_000
    assert report["stats"]["chars_skipped_missing_glyph"] > 0  # the "e"s NoE.ttf cannot draw


def test_the_rejects_table_names_each_bad_input(outcome):
    out, measured = outcome
    rows = rejects_table(out)
    check_rejects_match_report(measured.report, rows)
    assert reason_of(rows) == {"en/0/2": "unreadable_background",
                               "en/0/4": "unreadable_background",
                               "en/0/5": "unreadable_background"}
    assert all("cut.jpg" in row["detail"] for row in rows)
    kept = sorted(kept_samples(out, measured.report))
    assert kept == ["en/0/0", "en/0/1", "en/0/3", "en/0/6", "en/0/7"]


def test_memory_stays_bounded(outcome):
    # Measured: ~85 MiB (fonts, the 1 MB corpus, a few decoded backgrounds in the cache).
    # Decoding the quiet bomb would take 432 MiB.
    assert outcome[1].growth_mib < 250, outcome[1]


def _bad_cli_inputs(tmp_path) -> dict[str, tuple[list[str], str]]:
    """name -> (command-line flags, what the one-line error must say)."""
    broken = tmp_path / "broken-backgrounds"
    broken.mkdir()
    (broken / "empty.jpg").write_bytes(b"")
    (broken / "garbage.png").write_bytes(b"not an image" * 20)
    binary = tmp_path / "photo.jpg"
    binary.write_bytes(jpeg((32, 32)))
    blank = tmp_path / "blank.txt"
    blank.write_text("\n \t\n\x07\n", encoding="utf-8")
    table = tmp_path / "bad-table.yaml"
    table.write_text("document: {perspective: {args: {weights: [1, 1]}}}\n")
    return {
        "missing backgrounds": (["--backgrounds", str(tmp_path / "coco")],
                                "no such file or folder"),
        "no readable background": (["--backgrounds", str(broken)],
                                   "no readable background image"),
        "corpus is a folder": (["--corpus", str(tmp_path)], "is a folder"),
        "binary corpus": (["--corpus", str(binary)], "not UTF-8"),
        "blank corpus": (["--corpus", str(blank)], "corpus has no text"),
        "bad perspective table": (["--config", str(table)], "perspective"),
    }


@pytest.mark.parametrize("case", ["missing backgrounds", "no readable background",
                                  "corpus is a folder", "binary corpus", "blank corpus",
                                  "bad perspective table"])
def test_unusable_inputs_stop_before_the_run_with_one_line(case, tmp_path, capsys):
    from corpus.cli import main

    flags, message = _bad_cli_inputs(tmp_path)[case]
    out = tmp_path / "out"
    code = main(["synthdog", "--count", "1", "--output", str(out), *flags,
                 "--runner=DirectRunner", "--direct_running_mode=in_memory"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("corpus synthdog: ") and "\n" not in err and message in err, err
    assert not (out / "report.json").exists()

