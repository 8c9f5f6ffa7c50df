"""Reading annotation records and their images (pipelines/annotations.py)."""
import io
import json
import subprocess
import sys
import tarfile

import pytest
from PIL import Image as PILImage

from conftest import make_image
from corpus.inputs import InputFile, expand_inputs
from filters.base import Reject
from corpus.config import ConfigError
from pipelines.annotations import RECORD_EXTENSIONS, AnnotationRecord, ImageNotFound, \
    ImageStore, ImageTemplateError, check_image_template, decode_image, image_paths_of, \
    iter_records, json_record_list, load_record_image, read_records, template_fields


def test_json_documents_give_their_records():
    assert json_record_list([{"a": 1}]) == [{"a": 1}]
    assert json_record_list({"data_subtype": "val2014", "questions": [{"q": 1}]}) == \
        [{"data_subtype": "val2014", "q": 1}]
    assert json_record_list({"k1": {"q": 1}, "k2": {"q": 2}}) == \
        [{"_key": "k1", "q": 1}, {"_key": "k2", "q": 2}]
    assert json_record_list({"caption": "x"}) == [{"caption": "x"}]


def test_unreadable_lines_and_files_become_error_records(tmp_path):
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text('{"x": 1}\n\n{"x": \n[1, 2]\n')
    records = list(iter_records(str(jsonl), "a.jsonl"))
    assert [(r.key, r.error) for r in records] == [
        ("a.jsonl#0", None), ("a.jsonl#2", "malformed_json"), ("a.jsonl#3", "malformed_record")]
    broken = tmp_path / "b.json"
    broken.write_text("{")
    assert [r.error for r in iter_records(str(broken), "b.json")] == ["malformed_json"]
    truncated = tmp_path / "c.tar"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        data = json.dumps({"caption": "x"}).encode() * 200
        info = tarfile.TarInfo("k.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    truncated.write_bytes(buffer.getvalue()[:1200])
    assert [r.error for r in iter_records(str(truncated), "c.tar")] == ["truncated_tar"]


def test_a_record_whose_conversion_fails_costs_that_record_only(tmp_path):
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text('{"x": 1}\n{"x": 0}\n{"x": \n{"x": 2}\n')

    def items_of(record):
        yield f"{record.key} half"
        yield 1 / record.fields["x"]

    items = list(read_records(InputFile(str(jsonl), "a.jsonl"), "set", items_of))
    rejects = [(i.key, i.reason, i.status) for i in items if isinstance(i, Reject)]
    assert rejects == [("a.jsonl#1", "ZeroDivisionError", "errored"),
                       ("a.jsonl#2", "malformed_json", "errored")]
    assert [i for i in items if not isinstance(i, Reject)] == [
        "a.jsonl#0 half", 1.0, "a.jsonl#1 half", "a.jsonl#3 half", 0.5]


def test_input_names_are_relative_to_the_folder_given(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "a.json").write_text("[]")
    (tmp_path / "b.jsonl").write_text("")
    (tmp_path / "x" / "skip.jpg").write_bytes(b"")
    files = expand_inputs([str(tmp_path)], RECORD_EXTENSIONS)
    assert [f.relative for f in files] == ["b.jsonl", "x/a.json"]
    with pytest.raises(FileNotFoundError):
        expand_inputs([str(tmp_path / "none*.json")], RECORD_EXTENSIONS)


def test_image_paths_tried_in_order():
    assert image_paths_of({"file_name": "COCO_train2014_000000581857_16.jpg", "image_id": 7}) == [
        "COCO_train2014_000000581857_16.jpg", "COCO_train2014_000000581857.jpg", "7.jpg", "7.png"]
    assert image_paths_of({"image_id": 9, "data_subtype": "val2014"})[0] == \
        "COCO_val2014_000000000009.jpg"
    assert image_paths_of({"imageId": "n1"}, "{imageId}.png") == ["n1.png", "n1.jpg", "n1.png"]
    assert image_paths_of({}) == []


def test_image_store_reads_folders_by_sub_path_or_base_name_and_tars(tmp_path):
    (tmp_path / "VG_100K").mkdir()
    (tmp_path / "VG_100K" / "7.jpg").write_bytes(b"seven")
    store = ImageStore(str(tmp_path))
    assert store.read("VG_100K/7.jpg") == b"seven"
    assert store.read("7.jpg") == b"seven"
    assert store.first(["nope.jpg", "7.jpg"]) == b"seven"
    with pytest.raises(ImageNotFound):
        store.read("8.jpg")
    tar_path = tmp_path / "images.tar"
    with tarfile.open(tar_path, "w") as tar:
        info = tarfile.TarInfo("./coco/train2014/a.jpg")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"a"))
    tar_store = ImageStore(str(tar_path))
    assert tar_store.read("coco/train2014/a.jpg") == b"a"
    assert tar_store.read("other/prefix/a.jpg") == b"a"
    assert tar_store.first(["b.jpg"]) is None


def test_decode_image_reads_the_real_size_and_rejects_garbage():
    image = decode_image(make_image(30, 20).data)
    assert (image.format, image.width, image.height) == ("jpeg", 30, 20)
    gif = io.BytesIO()
    PILImage.new("RGB", (5, 4)).save(gif, format="GIF")
    assert decode_image(gif.getvalue()).format == "png"
    with pytest.raises(ValueError, match="corrupt_image"):
        decode_image(b"\xff\xd8\xff not an image")


KNOWN = {"GQA": ("imageId",), "any record": ("image_id", "file_name")}


def test_an_image_template_names_only_fields_the_records_have():
    assert template_fields("COCO_{image_id:012d}_{file_name!s}.{ext.x}{{}}") == \
        ["image_id", "file_name", "ext"]
    check_image_template(None, KNOWN)
    check_image_template("{imageId}.jpg", KNOWN)
    with pytest.raises(ConfigError, match=r"image_template '\{imgid\}.jpg': unknown field "
                                          r"'imgid'; fields available: GQA: imageId; any "
                                          r"record: image_id, file_name"):
        check_image_template("{imgid}.jpg", KNOWN)
    with pytest.raises(ConfigError, match=r"unknown positional field \{\}"):
        check_image_template("{}.jpg", KNOWN)
    with pytest.raises(ConfigError, match="expected '}' before end of string"):
        check_image_template("{image_id", KNOWN)


def test_a_record_that_cannot_fill_the_template_is_its_image_problem():
    with pytest.raises(ImageTemplateError, match="the record has no field 'imageId'"):
        image_paths_of({"image_id": 3}, "{imageId}.jpg")
    loaded = load_record_image(AnnotationRecord("a.json", "a.json#0", {"image_id": "x"}),
                               ImageStore(None), "COCO_{image_id:012d}.jpg")
    assert (loaded.image, loaded.problem) == (None, "image_template_unfilled")
    assert "Unknown format code 'd'" in loaded.detail
    # a record carrying its image never needs the template
    carried = AnnotationRecord("a.json", "a.json#1", {"image": {"bytes": make_image().data}})
    assert load_record_image(carried, ImageStore(None), "{imageId}.jpg").problem is None


def test_a_template_with_an_unknown_field_stops_the_command(tmp_path):
    (tmp_path / "refs.jsonl").write_text('{"image_id": 1, "sent": "a cat", "bbox": [0, 0, 1, 1]}\n')
    config = tmp_path / "grounding.yaml"
    config.write_text('image_template: "COCO_train2014_{imageid:012d}.jpg"\n')
    result = subprocess.run([sys.executable, "-m", "corpus.cli", "grounding", "--input",
                             str(tmp_path / "refs.jsonl"), "--dataset", "refcoco", "--output",
                             str(tmp_path / "out"), "--config", str(config)],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"corpus grounding: {config}: image_template "
                                    "'COCO_train2014_{imageid:012d}.jpg': unknown field 'imageid'")
    assert "RefCOCO/RefCOCO+/RefCOCOg: image_id, ann_id" in result.stderr
    assert not (tmp_path / "out").exists()
