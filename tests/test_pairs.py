"""`corpus pairs` end to end on small inputs of every supported form, in-memory runner."""
import argparse
import dataclasses
import glob
import hashlib
import io
import json
import os
import subprocess
import sys
from collections import Counter

import pyarrow.parquet as pq
import pytest

from corpus.config import load_config
from corpus.inputs import expand_inputs
from corpus.profiles import profile_of
from corpus.samples.pairs import Pair, academic_rows, demo_pairs, write_image_folder, \
    write_img2dataset_parquet
from corpus.shards import read_shard
from pipelines import pairs


def rejects_by_key(output_dir):
    rows = pq.read_table(glob.glob(os.path.join(output_dir, "rejects", "*.parquet"))).to_pylist()
    return {row["key"]: row for row in rows}


def kept_by_key(output_dir):
    return {s.source.key: s for path in glob.glob(os.path.join(output_dir, "shards", "*.tar"))
            for s in read_shard(path)}


def test_demo_inputs_every_rule_with_clip(tmp_path, beam_argv, capsys):
    totals = pairs.run_demo(str(tmp_path), beam_argv)
    web, academic = totals["runs"]["web"], totals["runs"]["academic"]
    assert totals["kept"] + totals["dropped_total"] + totals["errored_total"] == \
        totals["input"] == web["input"] + academic["input"]
    # The academic set: its own rules only, the longest caption, no CLIP.
    assert academic["input"] == len(academic_rows())
    assert academic["dropped"] == {"shorter_caption_same_image": 2, "academic_special_tag": 1}
    assert academic["errored"] == {"missing_image": 1}
    assert academic["stats"]["clip"] == "off: the academic rule set has no CLIP step"
    academic_kept = kept_by_key(tmp_path / "academic")
    assert sorted(academic_kept) == [f"captions.tsv#{i}" for i, row in
                                     enumerate(academic_rows(), start=1) if row[3] == "kept"]
    assert "no dataset profile for 'demo-academic'" in capsys.readouterr().out
    # The web set: demo tar + truncated tar (2 read + 1 reject), every web rule and CLIP.
    report = web
    assert report["input"] == 27 + 3
    rejects, kept = rejects_by_key(tmp_path / "web"), kept_by_key(tmp_path / "web")
    order = report["rules"]  # the rules this run checked, in order
    after_clip = set(order[order.index("clip_score_too_low"):])
    expectations = [(f"00000.tar#{p.key}", p.expect) for p in demo_pairs()]
    for key, expect in expectations:
        # The random-weight CLIP step may take any pair that reaches it (the paper runs it
        # before the text rules); everything else must end exactly as expected.
        outcome = "kept" if key in kept else rejects[key]["reason"]
        may_be_clip = expect == "kept" or expect in after_clip
        assert outcome == expect or (may_be_clip and outcome == "clip_score_too_low"), key
    assert rejects["00001.tar#100000002"]["reason"] == "truncated_tar"
    assert rejects["00000.tar#000000019"]["status"] == "errored"
    # The CLIP step ran: every kept sample carries its score, above the threshold.
    threshold = report["config"]["clip"]["threshold"]
    assert kept and all(s.clip_score is not None and s.clip_score >= threshold
                        for s in kept.values())
    histogram = report["stats"]["histogram"]
    assert histogram["threshold"] == threshold
    assert sum(histogram["counts"]) == report["stats"]["clip_scored"]
    assert len(histogram["edges"]) == len(histogram["counts"]) + 1
    # Cleaned and original text are both kept; languages tagged.
    strawberries = kept.get("00000.tar#000000012")
    if strawberries is not None:
        assert strawberries.text == "Fresh strawberries & cream on a plate"
        assert strawberries.original_text.startswith("<b>Fresh</b>")
        assert strawberries.decisions == ["html_cleaned"]
    assert {s.language for s in kept.values()} <= {"en", "zh"}
    assert list(report["dropped"])[:2] == ["aspect_ratio_too_large", "image_too_small"]
    assert os.path.exists(tmp_path / "web" / "report.png")


def test_img2dataset_parquet_and_jsonl_folder_without_clip(tmp_path, beam_argv, capsys):
    photo_pairs = [p for p in demo_pairs() if p.image and p.expect in (
        "kept", "aspect_ratio_too_large", "emoji")]
    os.makedirs(tmp_path / "in")
    write_img2dataset_parquet(str(tmp_path / "in" / "part-00000.parquet"), photo_pairs)
    rows = academic_rows()
    write_image_folder(str(tmp_path / "in" / "coco"), [(n, d, c) for n, d, c, _ in rows],
                       table="captions.jsonl")
    parser = argparse.ArgumentParser()
    pairs.add_arguments(parser)
    args, extra = parser.parse_known_args(
        ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--dataset", "web",
         "--shard-format", "webdataset", "parquet"] + beam_argv)
    assert pairs.main(args, extra) == 0
    printed = capsys.readouterr().out
    assert "no dataset profile for 'web': the generic web profile" in printed
    assert "CLIP step: off: no clip.checkpoint configured" in printed
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["input"] == len(photo_pairs) + len(rows)
    # The web rules keep every caption of an image, and the academic sets' tags.
    expected_kept = sum(p.expect == "kept" for p in photo_pairs) + sum(
        outcome != "missing_image" for *_, outcome in rows)
    assert report["kept"] == expected_kept
    assert report["dropped"] == {"aspect_ratio_too_large": 1, "emoji": 1}
    assert report["errored"] == {"missing_image": 1}
    assert "histogram" not in report["stats"]
    assert report["stats"]["clip"].startswith("off")
    assert sum(report["stats"]["kept_languages"].values()) == expected_kept
    kept = kept_by_key(tmp_path / "out")
    assert kept["coco/captions.jsonl#1"].text == "a man riding a red bike down a city street"
    # The phone photo is stored upright, the GIF read (as PNG, then written as the shards' one
    # format, JPEG); the source hash is of the input's bytes.
    phone, drawing = kept["coco/captions.jsonl#5"], kept["coco/captions.jsonl#6"]
    assert (phone.image.format, phone.image.width, phone.image.height) == ("jpeg", 240, 320)
    assert (drawing.image.format, drawing.image.width, drawing.image.height) == ("jpeg", 300, 240)
    assert "image_reencoded: png->jpeg quality 95" in drawing.decisions
    assert phone.source.sha256 == hashlib.sha256(rows[5][1]).hexdigest()
    assert all(s.clip_score is None for s in kept.values())
    parquet_shards = glob.glob(str(tmp_path / "out" / "shards" / "*.parquet"))
    assert sum(1 for p in parquet_shards for _ in read_shard(p)) == expected_kept


def test_input_score_field(tmp_path, beam_argv):
    """CLIP from a score the input already carries (LAION's `similarity`)."""
    photo = demo_pairs()[0].image
    scored = [Pair("a", photo, "a kite over a field", "kept", {"similarity": 0.35}),
              Pair("b", photo[:-1] + b"\xd9", "a kite over green grass", "x", {"similarity": 0.1}),
              Pair("c", photo + b"\x00", "a kite in the sky above", "x", {})]
    from corpus.samples.pairs import write_img2dataset_tar
    write_img2dataset_tar(str(tmp_path / "00000.tar"), scored)
    config = pairs.PairsConfig(clip=pairs.ClipConfig(score_field="similarity", threshold=0.3))
    report = pairs.run([str(tmp_path / "00000.tar")], str(tmp_path / "out"), "laion", config,
                       beam_argv)
    assert report["kept"] == 1
    assert report["dropped"] == {"clip_score_too_low": 1, "clip_score_missing": 1}
    assert report["stats"]["histogram"]["counts"] == [1]


def test_expand_inputs_relative_keys(tmp_path):
    for name in ("a/00000.tar", "a/b/00001.tar", "a/notes.txt", "a/c.tsv"):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    files = expand_inputs([str(tmp_path / "a")], pairs.INPUT_EXTENSIONS)
    assert [f.relative for f in files] == ["00000.tar", "b/00001.tar", "c.tsv"]
    files = expand_inputs([str(tmp_path / "a" / "*.tar")], pairs.INPUT_EXTENSIONS)
    assert [f.relative for f in files] == ["00000.tar"]


def test_config_rejects_unknown_keys(tmp_path):
    from corpus.config import ConfigError
    path = tmp_path / "bad.yaml"
    path.write_text("text:\n  min_charz: 3\n")
    with pytest.raises(ConfigError, match="min_charz"):
        load_config(pairs.PairsConfig, str(path))
    example = os.path.join(os.path.dirname(pairs.__file__), "configs", "pairs.yaml")
    config = load_config(pairs.PairsConfig, example, "my-crawl")
    assert config.text.languages == ["en", "zh"] and not config.clip.enabled
    assert config == load_config(pairs.PairsConfig, example, "my-crawl",
                                 profile_of("my-crawl").for_pipeline("pairs"))


def test_dataset_profiles_scope_the_rules(tmp_path, caplog):
    """The academic profiles get the special tags and the longest caption, COCO every caption,
    the web sets steps 1-8; the config's top level lies under the profile, its `datasets:`
    entry over it."""
    def config_of(dataset, path=None):
        return load_config(pairs.PairsConfig, path, dataset,
                           profile_of(dataset).for_pipeline("pairs"))

    for name in ("cc12m", "cc3m", "sbu"):
        assert (config_of(name).rule_set, config_of(name).longest_caption_per_image) == \
            ("academic", True)
    assert (config_of("coco").rule_set, config_of("coco").longest_caption_per_image) == \
        ("academic", False)
    for name in ("laion-en", "laion-zh", "laion-coco", "datacomp", "coyo", "unknown-crawl"):
        assert (config_of(name).rule_set, config_of(name).longest_caption_per_image) == \
            ("web", False)
    assert config_of("laion-zh").text.min_chars == 2
    assert not profile_of("unknown-crawl").found and profile_of("coyo").found
    path = tmp_path / "c.yaml"
    path.write_text("longest_caption_per_image: false\n"
                    "datasets: {sbu: {text: {max_chars: 300}}}\n")
    with caplog.at_level("WARNING"):
        sbu = config_of("sbu", str(path))
    assert sbu.longest_caption_per_image and sbu.text.max_chars == 300
    assert "sets longest_caption_per_image over the top level" in caplog.text
    path.write_text("datasets: {cc12m: {longest_caption_per_image: false}}\n")
    assert not config_of("cc12m", str(path)).longest_caption_per_image


def test_clip_threshold_follows_the_model():
    assert pairs.ClipConfig().threshold == 0.28
    assert pairs.ClipConfig(model="ViT-L-14").threshold == 0.3
    assert pairs.ClipConfig(model="ViT-L-14", threshold=0.2).threshold == 0.2
    from corpus.config import ConfigError, from_mapping
    with pytest.raises(ConfigError, match="no known cut for model 'my-model'"):
        from_mapping(pairs.PairsConfig, {"clip": {"model": "my-model", "score_field": "sim"}})


@pytest.mark.parametrize("dataset, kept, dropped", [
    ("coco", 6, {"academic_special_tag": 1}),
    ("cc12m", 4, {"academic_special_tag": 1, "shorter_caption_same_image": 2}),
])
def test_academic_profiles_end_to_end(tmp_path, beam_argv, dataset, kept, dropped):
    """`corpus pairs --dataset coco` keeps every COCO caption; `--dataset cc12m` drops the
    tagged ones and keeps the longest caption of an image."""
    rows = academic_rows()
    write_image_folder(str(tmp_path / "in"), [(n, d, c) for n, d, c, _ in rows])
    result = subprocess.run(
        [sys.executable, "-m", "corpus.cli", "pairs", "--input", str(tmp_path / "in"),
         "--output", str(tmp_path / "out"), "--dataset", dataset] + beam_argv,
        capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert f"dataset profile {dataset!r}: academic" in result.stdout
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert (report["kept"], report["dropped"], report["errored"]) == \
        (kept, dropped, {"missing_image": 1})


def test_table_reader_rejects_bad_lines_without_holding_them(tmp_path):
    from corpus.samples.pairs import make_photo
    from filters.base import Reject

    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.jpg").write_bytes(make_photo(240, 240, seed=1))
    (tmp_path / "pairs.tsv").write_bytes(
        b"image\tcaption\n"
        b"images/a.jpg\ta photo of a thing\n"
        b"images/a.jpg\t" + b"x" * 200_000 + b"\n"
        b"images/a.jpg\tcaf\xe9\n"
        b"images/none.jpg\tmissing file\n")
    (tmp_path / "pairs.jsonl").write_bytes(
        b'{"image": "images/a.jpg", "caption": "a photo"}\n{"image": broken\n[1, 2]\n')
    reader = pairs.PairReader("unit", pairs.PairsConfig())
    tsv = list(reader(pairs.InputFile(str(tmp_path / "pairs.tsv"), "pairs.tsv")))
    assert [r.reason if isinstance(r, Reject) else "sample" for r in tsv] == [
        "sample", "caption_too_large", "caption_not_utf8", "missing_image"]
    assert tsv[0].images[0].width == 240 and tsv[0].source.key == "pairs.tsv#1"
    jsonl = list(reader(pairs.InputFile(str(tmp_path / "pairs.jsonl"), "pairs.jsonl")))
    assert [r.reason if isinstance(r, Reject) else "sample" for r in jsonl] == [
        "sample", "malformed_record", "malformed_record"]
    # LAION-style metadata: links, not images; a table with neither
    import pyarrow as pa
    pq.write_table(pa.table({"URL": ["http://a/1.jpg"], "TEXT": ["a kite"]}),
                   str(tmp_path / "laion.parquet"))
    (tmp_path / "captions.tsv").write_text("caption\tscore\na kite\t1\n")
    assert [r.reason for r in reader(pairs.InputFile(str(tmp_path / "laion.parquet"),
                                                      "laion.parquet"))] == ["urls_not_downloaded"]
    assert [r.reason for r in reader(pairs.InputFile(str(tmp_path / "captions.tsv"),
                                                      "captions.tsv"))] == ["no_image_column"]


def test_rule_order_follows_the_config():
    """The report lists exactly the rules the config runs, in their order."""
    config = pairs.PairsConfig(longest_caption_per_image=True)
    config.clip.score_field, config.text.languages = "similarity", ["en", "zh"]
    order = pairs.reason_order(config)
    assert order == ["aspect_ratio_too_large", "image_too_small", "clip_score_too_low",
                     "clip_score_missing", "non_en_zh_characters", "emoji", "text_too_short",
                     "text_too_long", "empty_after_html_cleaning", "empty_after_pattern_cleaning",
                     "text_too_short_after_cleaning", "text_too_long_after_cleaning",
                     "language_not_allowed", "language_uncertain", "shorter_caption_same_image"]
    config.clip.after_text_rules = True
    order = pairs.reason_order(config)
    assert order.index("language_not_allowed") < order.index("clip_score_too_low")
    config.rule_set = "academic"
    assert pairs.reason_order(config) == ["text_too_short", "text_too_long",
                                          "language_not_allowed", "language_uncertain",
                                          "academic_special_tag", "shorter_caption_same_image"]
    names = [getattr(r, "name", getattr(r, "__name__", "")) for r in
             pairs.text_rules(pairs.TextRulesConfig(tag_language=False))]
    assert names == ["non_en_zh_characters", "no_emoji", "text_length", "html_cleaner",
                     "pattern_cleaner", "text_length"]


def test_a_task_applies_the_rules_to_each_pair_of_its_file(tmp_path):
    from corpus.samples.pairs import make_photo, write_img2dataset_tar
    from filters.base import Reject

    tar = tmp_path / "00000.tar"
    write_img2dataset_tar(str(tar), [
        Pair("000000000", make_photo(240, 240, 1), "a red kite over a field", "kept"),
        Pair("000000001", make_photo(240, 240, 2), "explodes in a rule", "ValueError"),
        Pair("000000002", b"not an image", "a broken image", "corrupt_image"),
        Pair("000000003", make_photo(240, 240, 3), "short", "too_short")])

    def too_short(sample):
        if "explodes" in sample.text:
            raise ValueError("rule failed")
        return "too_short" if len(sample.text) < 8 else None

    work = pairs.CleanPairs("unit", pairs.PairsConfig())
    work.before = [too_short]
    work.setup(0)
    results = list(work(pairs.InputFile(str(tar), "00000.tar")))
    outcomes = {r.source.key if not isinstance(r, Reject) else r.key:
                "kept" if not isinstance(r, Reject) else (r.status, r.reason) for r in results}
    # A rule's exception costs its own pair only; the rest of the file is still read.
    assert outcomes == {"00000.tar#000000000": "kept",
                        "00000.tar#000000001": ("errored", "ValueError"),
                        "00000.tar#000000002": ("errored", "corrupt_image"),
                        "00000.tar#000000003": ("dropped", "too_short")}
    assert len(results) == 4


def test_clip_scores_a_batch_and_rejects_only_the_bad_images(tiny_clip_config):
    from conftest import make_sample
    from corpus.samples.pairs import make_photo
    from corpus.schema import Image

    good = [make_sample(key=f"k{i}", images=[Image(make_photo(120, 90, i), "jpeg", 120, 90)])
            for i in range(2)]
    bad = make_sample(key="bad", images=[Image(b"\xff\xd8 not a jpeg", "jpeg", 120, 90)])
    config = pairs.PairsConfig(clip=dataclasses.replace(tiny_clip_config, threshold=-1.0))
    work = pairs.CleanPairs("unit", config)
    work.setup(0)
    bins = Counter()
    results = list(work._scored([good[0], bad, good[1]], bins))
    assert [r.id for r in results] == [bad.id, good[0].id, good[1].id]
    assert (results[0].reason, results[0].status) == ("corrupt_image", "errored")
    assert all(-1 <= r.clip_score <= 1 for r in results[1:])
    assert sum(bins.values()) == 2  # the scored ones
    assert [r.reason for r in work._scored([bad], bins)] == ["corrupt_image"]


def test_same_image_in_two_tars_keeps_the_longest_caption_once(tmp_path, beam_argv):
    """Captions of one image meet in one shard bucket wherever they were read; the read step
    hands its samples to the sink as one spill chunk per tar."""
    from corpus.samples.pairs import make_photo, write_img2dataset_tar

    photo, other = make_photo(240, 240, 1), make_photo(240, 240, 2)
    os.makedirs(tmp_path / "in")
    write_img2dataset_tar(str(tmp_path / "in" / "00000.tar"), [
        Pair("000000000", photo, "a red kite", "shorter_caption_same_image"),
        Pair("000000001", other, "a green field in spring", "kept")])
    write_img2dataset_tar(str(tmp_path / "in" / "00001.tar"), [
        Pair("000000002", photo, "a red kite over a green field", "kept")])
    report = pairs.run([str(tmp_path / "in")], str(tmp_path / "out"), "web",
                       pairs.PairsConfig(longest_caption_per_image=True), beam_argv)
    assert (report["input"], report["kept"]) == (3, 2)
    assert report["dropped"] == {"shorter_caption_same_image": 1}
    assert sorted(s.text for s in kept_by_key(tmp_path / "out").values()) == \
        ["a green field in spring", "a red kite over a green field"]
    assert not (tmp_path / "out" / "_spill").exists()

    staged = [name for name in os.listdir(tmp_path / "out" / "_done")]
    assert staged == ["captioning-00000-of-00002.json", "captioning-00001-of-00002.json"]


@pytest.mark.parametrize("output_format", ["webdataset", "files"])
def test_img2dataset_output_folder_accounts_for_every_url(tmp_path, beam_argv, output_format):
    """img2dataset writes, per shard, the pairs that downloaded (NNNNN.tar, or a folder NNNNN/
    of KEY.jpg + KEY.txt + KEY.json) beside NNNNN.parquet, which lists every URL with its
    status: the failed downloads become errored units, so the report accounts for every URL and
    nothing is counted twice."""
    import pyarrow as pa
    from corpus.samples.pairs import make_photo, write_img2dataset_tar

    pairs_in = [Pair("000000000", make_photo(240, 240, 1), "a red kite over a field", "kept"),
                Pair("000000002", make_photo(240, 240, 2), "a green field in spring", "kept")]
    os.makedirs(tmp_path / "in")
    if output_format == "webdataset":
        write_img2dataset_tar(str(tmp_path / "in" / "00000.tar"), pairs_in)
    else:
        os.makedirs(tmp_path / "in" / "00000")
        for pair in pairs_in:
            (tmp_path / "in" / "00000" / f"{pair.key}.jpg").write_bytes(pair.image)
            (tmp_path / "in" / "00000" / f"{pair.key}.txt").write_text(pair.caption)
            (tmp_path / "in" / "00000" / f"{pair.key}.json").write_text(
                json.dumps({"key": pair.key, "url": f"http://a/{pair.key}.jpg"}))
        # a caption past input.max_caption_bytes is rejected unread, as in a tar
        (tmp_path / "in" / "00000" / "000000003.jpg").write_bytes(pairs_in[0].image)
        (tmp_path / "in" / "00000" / "000000003.txt").write_text("x" * 70_000)
    pq.write_table(pa.table({
        "caption": ["a red kite over a field", "a lost image", "a green field in spring", "x"],
        "url": ["http://a/0.jpg", "http://a/1.jpg", "http://a/2.jpg", "http://a/3.jpg"],
        "key": ["000000000", "000000001", "000000002", "000000003"],
        "status": ["success", "failed_to_download", "success",
                   "success" if output_format == "files" else "failed_to_download"],
        "error_message": [None, "HTTP Error 404: Not Found", None, None]}),
        str(tmp_path / "in" / "00000.parquet"))
    (tmp_path / "in" / "00000_stats.json").write_text("{}")
    report = pairs.run([str(tmp_path / "in")], str(tmp_path / "out"), "web", None, beam_argv)
    errored = {"download_failed": 1, "caption_too_large": 1} if output_format == "files" else \
        {"download_failed": 2}
    assert (report["input"], report["kept"], report["errored"]) == (4, 2, errored)
    prefix = "00000.tar" if output_format == "webdataset" else "00000"
    failed = rejects_by_key(tmp_path / "out")[f"{prefix}#000000001"]
    assert failed["detail"] == "failed_to_download: HTTP Error 404: Not Found"
    kept = kept_by_key(tmp_path / "out")
    assert kept[f"{prefix}#000000002"].text == "a green field in spring"
    if output_format == "files":  # the metadata comes from KEY.json
        assert kept["00000#000000000"].extra["url"] == "http://a/000000000.jpg"


def test_folder_of_images_with_same_named_captions(tmp_path, beam_argv, monkeypatch):
    """KEY.jpg + KEY.txt (+ KEY.json) in a folder, as img2dataset's files format without its
    Parquet or any captioned photo folder: read in parts of the folder's names, any extension
    case, and the half of a pair that is missing is a counted reject. A folder with a table and a README
    holds no pairs of its own."""
    from corpus.samples.pairs import make_photo

    photos = tmp_path / "in" / "trip"
    os.makedirs(photos)
    (photos / "IMG_0001.JPG").write_bytes(make_photo(320, 240, 1))
    (photos / "IMG_0001.txt").write_text("a red kite over the beach at noon")
    (photos / "IMG_0002.jpeg").write_bytes(make_photo(320, 240, 2))
    (photos / "IMG_0002.txt").write_text("fishing boats in the harbour")
    (photos / "IMG_0002.json").write_text(json.dumps({"url": "http://a/2.jpg"}))
    (photos / "IMG_0003.jpg").write_bytes(make_photo(320, 240, 3))  # no caption
    (photos / "IMG_0004.txt").write_text("a caption whose photo was deleted")
    rows = academic_rows()
    write_image_folder(str(tmp_path / "in" / "coco"), [(n, d, c) for n, d, c, _ in rows])
    (tmp_path / "in" / "coco" / "README.txt").write_text("COCO captions, a sample")

    assert [(f.relative, len(getattr(f, "members", ()))) for f in pairs.pair_inputs(
        [str(tmp_path / "in")])] == [("coco/captions.tsv", 0), ("trip", 4)]
    # A large folder is read in parts, by as many workers: here two names a part.
    parts = [part for part in pairs.pair_inputs([str(tmp_path / "in")], pairs_per_part=2)
             if isinstance(part, pairs.FolderPart)]
    assert [[key for key, _ in part.members] for part in parts] == [
        ["IMG_0001", "IMG_0002"], ["IMG_0003", "IMG_0004"]]
    monkeypatch.setattr(pairs, "PAIRS_PER_PART", 2)
    report = pairs.run([str(tmp_path / "in")], str(tmp_path / "out"), "photos", None, beam_argv)
    assert report["input"] == 4 + len(rows)
    assert report["errored"] == {"missing_caption": 1, "missing_image": 2}  # and coco_3
    kept = kept_by_key(tmp_path / "out")
    assert kept["trip#IMG_0001"].text == "a red kite over the beach at noon"
    assert kept["trip#IMG_0002"].extra["url"] == "http://a/2.jpg"
    assert {r["key"] for r in rejects_by_key(tmp_path / "out").values()} >= {
        "trip#IMG_0003", "trip#IMG_0004"}


def test_no_pairs_at_all_is_a_clear_error(tmp_path):
    (tmp_path / "notes.txt").write_text("nothing here")
    with pytest.raises(FileNotFoundError, match="same-named .txt captions"):
        pairs.pair_inputs([str(tmp_path)])


def test_gzipped_tars_and_upper_case_extensions(tmp_path, beam_argv):
    """Some sets ship their WebDataset tars gzipped (`.tar.gz`, `.tgz`), and some members are
    named `KEY.JPG`; a gzip cut short is a truncated_tar reject like a cut tar."""
    import gzip
    import tarfile

    from corpus.samples.pairs import make_photo, write_img2dataset_tar

    os.makedirs(tmp_path / "in")
    pair = Pair("000000000", make_photo(240, 240, 1), "a red kite over a field", "kept")
    write_img2dataset_tar(str(tmp_path / "plain.tar"), [pair])
    data = gzip.compress((tmp_path / "plain.tar").read_bytes())
    (tmp_path / "in" / "a.tar.gz").write_bytes(data)
    (tmp_path / "in" / "b.tgz").write_bytes(data[: len(data) // 2])
    upper = io.BytesIO()
    with tarfile.open(fileobj=upper, mode="w") as tar:
        for name, member in [("k1.JPG", make_photo(240, 240, 2)), ("k1.TXT", b"a green field")]:
            info = tarfile.TarInfo(name)
            info.size = len(member)
            tar.addfile(info, io.BytesIO(member))
    (tmp_path / "in" / "c.tar").write_bytes(upper.getvalue())
    report = pairs.run([str(tmp_path / "in")], str(tmp_path / "out"), "web", None, beam_argv)
    assert (report["input"], report["kept"], report["errored"]) == (3, 2, {"truncated_tar": 1})
    kept = kept_by_key(tmp_path / "out")
    assert kept["a.tar.gz#000000000"].text == "a red kite over a field"
    assert kept["c.tar#k1"].text == "a green field"


def test_line_spans_cut_a_table_at_line_starts(tmp_path):
    table = tmp_path / "t.tsv"
    table.write_bytes(b"h\na\nbb\n\nccc\n")  # lines 0-4
    spans = pairs.line_spans(str(table), 2)
    assert spans == [(0, 0, 2), (4, 2, 2), (8, 4, None)]
    data = table.read_bytes()
    assert [data[start:].split(b"\n")[0] for start, _, _ in spans] == [b"h", b"bb", b"ccc"]
    table.write_bytes(b"h\na\nbb\nc")  # ends right after a full span, without a newline
    assert pairs.line_spans(str(table), 2) == [(0, 0, 2), (4, 2, None)]
    table.write_bytes(b"h\na\n")
    assert pairs.line_spans(str(table), 2) == [(0, 0, None)]


@pytest.mark.parametrize("table", ["captions.tsv", "captions.jsonl"])
def test_a_table_read_in_parts_gives_what_it_gives_whole(tmp_path, beam_argv, monkeypatch, table):
    """Tables of image paths (COCO's captions) are cut into parts of lines, each read by its own
    worker: the same samples, keys and rejects as one reader gets."""
    rows = academic_rows() + [("coco_1.jpg", None, "x" * 70_000, "caption_too_large")]
    write_image_folder(str(tmp_path / "in"), [(n, d, c) for n, d, c, _ in rows], table=table)
    whole = pairs.run([str(tmp_path / "in")], str(tmp_path / "whole"), "coco", None, beam_argv)
    monkeypatch.setattr(pairs, "PAIRS_PER_PART", 2)
    lines = len(rows) + table.endswith(".tsv")  # and the header
    assert len(pairs.pair_inputs([str(tmp_path / "in")])) == (lines + 1) // 2
    parted = pairs.run([str(tmp_path / "in")], str(tmp_path / "parts"), "coco", None, beam_argv)
    for field in ("input", "kept", "dropped", "errored"):
        assert parted[field] == whole[field], field
    assert parted["input"] == len(rows)
    assert kept_by_key(tmp_path / "parts").keys() == kept_by_key(tmp_path / "whole").keys()
    assert rejects_by_key(tmp_path / "parts") == rejects_by_key(tmp_path / "whole")


@pytest.mark.parametrize("shared", [False, True])
def test_worker_processes_and_a_shared_model_write_the_bytes_of_one_process(tmp_path, shared):
    """CLIP on: two forked workers, each with its model or both sending their batches to one
    model process, write what one process writes."""
    from conftest import IN_MEMORY
    from corpus.config import load_config
    from corpus.samples.pairs import write_demo_inputs
    from test_sinks import assert_same_outputs

    inputs = write_demo_inputs(str(tmp_path / "inputs"))
    config = load_config(pairs.PairsConfig, inputs.config_path, "demo")
    config = dataclasses.replace(config, longest_caption_per_image=True, clip=dataclasses.replace(
        config.clip, batch_size=3, share_model_across_processes=shared))
    patterns = inputs.web + inputs.academic
    one = pairs.run(patterns, str(tmp_path / "one"), "demo", config, IN_MEMORY)
    two = pairs.run(patterns, str(tmp_path / "two"), "demo", config, ["--workers=2"])
    assert one["stats"]["clip_scored"] == two["stats"]["clip_scored"] > 20
    assert_same_outputs(tmp_path / "one", tmp_path / "two")
