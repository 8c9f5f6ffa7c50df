"""`corpus grounding`: region-set records into the duality tasks, GRIT into grounding and (by
default) the duality tasks too, and the reports of all three (counted after fan-out)."""
import glob
import io
import json
import os
import tarfile

import pytest

from conftest import make_image, make_sample
from corpus.formats import format_sample, parse_boxes, render, to_thousandths
from corpus.schema import Region
from corpus.shards import read_shard
from filters.grounding import empty_phrase, image_problem, region_box_valid
from pipelines.grounding import GroundingConfig, box_of, phrases_of, run
from corpus.samples.grounding import draw_scene, write_grit_sample, write_region_sample


def _samples(task_dir):
    return [s for path in sorted(glob.glob(os.path.join(task_dir, "shards", "*.tar")))
            for s in read_shard(path)]


def test_phrases_from_the_usual_fields():
    assert phrases_of({"sentences": [{"sent": "a", "raw": "A"}, {"raw": "B"}, "c"]}) == \
        ["a", "B", "c"]
    assert phrases_of({"phrase": "the ear on a giraffe"}) == ["the ear on a giraffe"]
    assert phrases_of({"expression": "left man"}) == ["left man"]
    assert phrases_of({"bbox": [1, 2, 3, 4]}) == []


def test_boxes_from_coco_xywh_xyxy_and_visual_genome():
    assert box_of({"bbox": [10, 20, 30, 40]}, "xywh") == (10, 20, 40, 60)
    assert box_of({"bbox": [10, 20, 30, 40]}, "xyxy") == (10, 20, 30, 40)
    assert box_of({"boxes": [[1, 2, 3, 4]]}, "xyxy") == (1, 2, 3, 4)
    assert box_of({"x": 5, "y": 6, "width": 10, "height": 20}, "xywh") == (5, 6, 15, 26)
    assert box_of({"bbox": [1, 2, "x", 4]}, "xywh") is None


@pytest.mark.parametrize("box, reason", [
    ((50, 10, 40, 20), "box_inverted"),
    ((10, 10, 80, 20), "box_outside_image"),
    ((-3, 10, 20, 20), "box_outside_image"),
    ((10, 10, 10, 20), "empty_box"),
])
def test_region_box_rules(box, reason):
    sample = make_sample(task="ref_grounding", images=[make_image(64, 48)],
                         regions=[Region("ref", "x", box=box)])
    assert region_box_valid(sample) == reason


def test_region_box_within_a_pixel_is_clamped_and_missing_box_rejected():
    sample = make_sample(task="ref_grounding", images=[make_image(64, 48)],
                         regions=[Region("ref", "x", box=(-0.5, 1, 64.6, 48))])
    cleaned = region_box_valid(sample)
    assert cleaned.regions[0].box == (0.0, 1, 64.0, 48)
    assert cleaned.decisions == ["box_clamped_to_image"]
    assert region_box_valid(make_sample(task="ref_grounding")) == "missing_box"


def test_image_and_phrase_rules():
    assert image_problem(make_sample(extra={"image_problem": "missing_image"})) == "missing_image"
    assert image_problem(make_sample()) is None
    assert empty_phrase(make_sample(text="  ")) == "empty_phrase"


def test_region_sets_fan_out_into_both_tasks(tmp_path, beam_argv):
    inputs, images = write_region_sample(str(tmp_path / "in"))
    report = run(inputs, str(tmp_path / "out"), "refs", GroundingConfig(), beam_argv,
                 images=images)
    for task in ("ref_grounding", "grounded_captioning"):
        task_report = report["tasks"][task]
        # 7 refs records: 3 + 2 + 1 + 1 + 1 + 1 expressions, 1 with none; 2 VG regions
        assert task_report["input"] == 12
        assert task_report["kept"] == 5
        assert task_report["dropped"] == {
            "no_phrases": 1, "empty_phrase": 1, "missing_box": 1,
            "box_inverted": 1, "box_outside_image": 1, "empty_box": 1}
        assert task_report["errored"] == {"missing_image": 1}
        samples = _samples(tmp_path / "out" / task)
        assert {s.task for s in samples} == {task}
        for sample in samples:
            image = sample.images[0]
            text = render(format_sample(sample))
            expected = tuple(to_thousandths(v, size) for v, size in
                             zip(sample.regions[0].box, (image.width, image.height) * 2))
            assert parse_boxes(text) == [expected]
    by_text = {s.text: s for s in _samples(tmp_path / "out" / "ref_grounding")}
    # refer's `COCO_…_<ann_id>.jpg` names resolve to the COCO image, [x, y, w, h] to corners
    assert by_text["red box on the left"].regions[0].box == (40, 60, 140, 200)
    assert render(format_sample(by_text["red box on the left"])).endswith(
        "<ref>red box on the left</ref><box>(125,250),(437,833)</box><|endoftext|>")
    captioning = _samples(tmp_path / "out" / "grounded_captioning")
    green = next(s for s in captioning if s.text == "a green square")
    assert render(format_sample(green)).endswith(
        "<ref>This</ref><box>(33,100),(366,600)</box> is a green square<|endoftext|>")


def test_grit_run_prunes_and_counts_every_bad_record(tmp_path, beam_argv):
    inputs = write_grit_sample(str(tmp_path / "in"))
    report = run(inputs, str(tmp_path / "out"), "grit", GroundingConfig(), beam_argv)
    grounding = report["tasks"]["grounding"]
    assert (grounding["input"], grounding["kept"]) == (10, 2)
    assert grounding["dropped"] == {
        "empty_caption": 1, "span_outside_caption": 1,
        "box_outside_unit_range": 1, "box_inverted": 1, "no_grounding_spans": 1}
    assert grounding["errored"] == {"malformed_json": 1, "missing_image": 1, "corrupt_image": 1}
    assert grounding["stats"] == {"spans_in": 7, "boxes_in": 8, "spans_kept": 5,
                                  "boxes_kept": 6}
    texts = sorted(render(format_sample(s)) for s in _samples(tmp_path / "out" / "grounding"))
    assert texts[0].endswith(
        "Generate the caption in English with grounding: <ref>a cat</ref>"
        "<box>(200,200),(600,600)</box> sleeping in <ref>a basket</ref>"
        "<box>(100,500),(900,900)</box><|endoftext|>")


def test_grit_feeds_the_duality_tasks_by_default_with_counts_per_task(tmp_path, beam_argv):
    """Table 3 lists GRIT among the sources of both duality tasks: a GRIT run with the default
    config writes all three tasks, and the reports say what each kept."""
    inputs = write_grit_sample(str(tmp_path / "in"))
    report = run(inputs, str(tmp_path / "out"), "grit", GroundingConfig(), beam_argv)
    assert report["kept_by_task"] == {"grounding": 2, "ref_grounding": 8,
                                      "grounded_captioning": 8}
    for task, kept in report["kept_by_task"].items():
        with open(tmp_path / "out" / task / "report.json", encoding="utf-8") as f:
            on_disk = json.load(f)
        assert (on_disk["task"], on_disk["kept"]) == (task, kept)
        assert len(_samples(tmp_path / "out" / task)) == kept
    for task in ("ref_grounding", "grounded_captioning"):
        # every span and box of records 0 (5) and 1 (3) is kept; the corrupt copy of record 0
        # drops its 5, the blank caption and the span past "a bird" leave empty phrases
        duality = report["tasks"][task]
        assert (duality["input"], duality["kept"]) == (19, 8)
        assert duality["dropped"] == {"empty_phrase": 2, "box_inverted": 1,
                                      "box_outside_image": 1}
        assert duality["errored"] == {"malformed_json": 1, "corrupt_image": 5, "missing_image": 1}


def _one_grit_record_tar(tmp_path, record):
    tar_path = tmp_path / "grit.tar"
    with tarfile.open(tar_path, "w") as tar:
        for name, data in (("k.json", json.dumps(record).encode()),
                           ("k.jpg", draw_scene(200, 100, []))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return [str(tar_path)]


def test_grit_boxes_use_the_real_image_size_and_duality_option(tmp_path, beam_argv):
    # the record claims 1000x1000 (the original); the stored image is 200x100
    record = {"caption": "a red box", "width": 1000, "height": 1000,
              "ref_exps": [[0, 9, 0.25, 0.5, 0.75, 1.0, 0.9]]}
    inputs = _one_grit_record_tar(tmp_path, record)
    report = run(inputs, str(tmp_path / "out"), "grit", GroundingConfig(), beam_argv)
    assert {t: r["kept"] for t, r in report["tasks"].items()} == \
        {"grounding": 1, "ref_grounding": 1, "grounded_captioning": 1}
    (sample,) = _samples(tmp_path / "out" / "grounding")
    assert sample.regions[0].box == (50.0, 50.0, 150.0, 100.0)
    (ref,) = _samples(tmp_path / "out" / "ref_grounding")
    assert render(format_sample(ref)).endswith(
        "<ref>a red box</ref><box>(250,500),(750,999)</box><|endoftext|>")
    alone = run(inputs, str(tmp_path / "alone"), "grit", GroundingConfig(grit_duality=False),
                beam_argv)
    assert alone["kept_by_task"] == {"grounding": 1}
    assert not (tmp_path / "alone" / "ref_grounding").exists()


def test_grit_entries_under_min_score_feed_no_task(tmp_path, beam_argv):
    record = {"caption": "a red box and a lamp",
              "ref_exps": [[0, 9, 0.25, 0.5, 0.75, 1.0, 0.9], [14, 20, 0.1, 0.1, 0.2, 0.2, 0.3]]}
    report = run(_one_grit_record_tar(tmp_path, record), str(tmp_path / "out"), "grit",
                 GroundingConfig(min_score=0.5), beam_argv)
    assert report["kept_by_task"] == {"grounding": 1, "ref_grounding": 1,
                                      "grounded_captioning": 1}
    (ref,) = _samples(tmp_path / "out" / "ref_grounding")
    assert ref.text == "a red box"


def test_config_rejects_unknown_values():
    with pytest.raises(ValueError):
        GroundingConfig(box_format="cxcywh").validate()
    with pytest.raises(ValueError):
        GroundingConfig(span_fields=["phrases"]).validate()


def test_example_config_loads_with_overrides():
    from corpus.config import load_config

    config = load_config(GroundingConfig, "pipelines/configs/grounding.yaml", "refcocog-hf")
    assert config.box_format == "xyxy"


def _mixed_records(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "mixed.jsonl").write_text(
        json.dumps({"caption": "a dog", "ref_exps": [[0, 5, 0.1, 0.1, 0.5, 0.5, 0.9]]}) + "\n"
        + json.dumps({"phrase": "a dog", "bbox": [1, 1, 5, 5], "image": "x.jpg"}) + "\n")
    return [str(folder)]


def test_records_of_the_other_kind_are_counted_not_lost(tmp_path, beam_argv):
    report = run(_mixed_records(tmp_path), str(tmp_path / "out"), "mixed", GroundingConfig(),
                 beam_argv, kind="regions")
    for task in ("ref_grounding", "grounded_captioning"):
        assert report["tasks"][task]["dropped"] == {"other_record_kind": 1}
        assert report["tasks"][task]["errored"] == {"missing_image": 1}


def test_a_grit_run_keeping_nothing_still_reports_its_span_counts(tmp_path, beam_argv):
    report = run(_mixed_records(tmp_path), str(tmp_path / "out"), "mixed", GroundingConfig(),
                 beam_argv, kind="grit")
    grounding = report["tasks"]["grounding"]
    assert grounding["dropped"] == {"other_record_kind": 1}
    assert grounding["errored"] == {"missing_image": 1}
    assert grounding["stats"] == {"spans_in": 0, "boxes_in": 0, "spans_kept": 0,
                                  "boxes_kept": 0}


def test_refer_refs_take_their_box_and_image_from_coco_instances(tmp_path, beam_argv):
    images = tmp_path / "images"
    images.mkdir()
    (images / "COCO_train2014_000000000005.jpg").write_bytes(draw_scene(100, 50, []))
    refs = [{"ref_id": 1, "ann_id": 50, "image_id": 5, "split": "train",
             "file_name": "COCO_train2014_000000000005_50.jpg",
             "sentences": [{"raw": "Left Part", "sent": "left part"}]},
            {"ref_id": 2, "ann_id": 51, "image_id": 5, "sentences": [{"sent": "unknown"}]}]
    instances = {"images": [{"id": 5, "file_name": "COCO_train2014_000000000005.jpg",
                             "width": 100, "height": 50}],
                 "annotations": [{"id": 50, "image_id": 5, "bbox": [10, 5, 40, 20]}]}
    (tmp_path / "refs.json").write_text(json.dumps(refs))
    (tmp_path / "instances.json").write_text(json.dumps(instances))
    report = run([str(tmp_path / "refs.json")], str(tmp_path / "out"), "refcoco",
                 GroundingConfig(box_format="xyxy"), beam_argv, images=str(images),
                 coco_instances=str(tmp_path / "instances.json"))
    assert report["tasks"]["ref_grounding"]["dropped"] == {"missing_box": 1}
    (sample,) = _samples(tmp_path / "out" / "ref_grounding")
    assert sample.regions[0].box == (10, 5, 50, 25)
