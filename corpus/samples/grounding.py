"""Sample grounding inputs: GRIT records as img2dataset writes them (a WebDataset tar of
`KEY.jpg` + `KEY.json`) plus a JSONL file with an image folder, and region-set records in the
RefCOCO (refer) and Visual Genome JSON forms. Shapes are drawn where the boxes say, so
`corpus inspect` shows boxes on their objects. Bad records exercise every rule."""
from __future__ import annotations

import io
import json
import os
import tarfile

from PIL import Image as PILImage
from PIL import ImageDraw


def draw_scene(width: int, height: int, shapes: list[tuple[tuple[float, ...], tuple]]) -> bytes:
    """A JPEG with a filled rectangle per (pixel box, colour)."""
    image = PILImage.new("RGB", (width, height), (235, 235, 225))
    draw = ImageDraw.Draw(image)
    for box, colour in shapes:
        draw.rectangle(box, fill=colour)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def _grit_record(caption, width, height, ref_exps, noun_chunks=None):
    return {"caption": caption, "width": width, "height": height, "status": "success",
            "ref_exps": ref_exps, "noun_chunks": noun_chunks or []}


def grit_records() -> list[tuple[str, dict, bool]]:
    """(key, record, has image). The first two have nested expressions, which pruning
    resolves into the non-overlapping set that carries the most boxes."""
    c0 = "two dogs on a red couch next to a lamp"
    # "two dogs on a red couch" [0,23) (1 box) holds "two dogs" [0,8) (2 boxes, listed as two
    # entries of one span) and "a red couch" [12,23) (1 box): the inner two win, 3 boxes to 1.
    r0 = [[0, 8, 0.05, 0.40, 0.30, 0.90, 0.9], [0, 8, 0.35, 0.45, 0.55, 0.90, 0.8],
          [0, 23, 0.05, 0.30, 0.80, 0.95, 0.7], [12, 23, 0.02, 0.30, 0.80, 0.95, 0.9],
          [32, 38, 0.85, 0.10, 0.95, 0.60, 0.6]]
    c1 = "a cat sleeping in a basket"
    r1 = [[0, 5, 0.20, 0.20, 0.60, 0.60, 0.9], [0, 26, 0.10, 0.10, 0.90, 0.90, 0.8],
          [18, 26, 0.10, 0.50, 0.90, 0.90, 0.9]]
    return [
        ("000000000", _grit_record(c0, 320, 240, r0), True),
        ("000000001", _grit_record(c1, 240, 240, r1), True),
        ("000000002", _grit_record("a bird", 200, 160, [[0, 40, 0.1, 0.1, 0.5, 0.5, 0.9]]), True),
        ("000000003", _grit_record("a tree", 200, 160, [[0, 6, 0.1, 0.1, 1.5, 0.5, 0.9]]), True),
        ("000000004", _grit_record("a kite", 200, 160, [[0, 6, 0.6, 0.1, 0.2, 0.5, 0.9]]), True),
        ("000000005", _grit_record("   ", 200, 160, [[0, 1, 0.1, 0.1, 0.5, 0.5, 0.9]]), True),
        ("000000006", _grit_record("a boat on a lake", 200, 160, []), True),
        ("000000007", _grit_record("a lone horse", 200, 160, [[0, 12, 0.1, 0.1, 0.5, 0.5, 0.9]]),
         False),
    ]


def _grit_image(record: dict) -> bytes:
    width, height = record["width"], record["height"]
    shapes = []
    colours = [(200, 60, 60), (60, 160, 60), (60, 60, 200), (200, 160, 40), (120, 60, 160)]
    for i, entry in enumerate(record["ref_exps"]):
        x1, y1, x2, y2 = entry[2:6]
        if 0 <= x1 <= x2 <= 1 and 0 <= y1 <= y2 <= 1:
            shapes.append(((x1 * width, y1 * height, x2 * width, y2 * height),
                           colours[i % len(colours)]))
    return draw_scene(width, height, shapes)


def write_grit_sample(folder: str) -> list[str]:
    """`folder/grit-00000.tar` (img2dataset form, with a corrupt image and a key without its
    image) and `folder/grit.jsonl` + `folder/images/` (one malformed line). Returns the inputs."""
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    records = grit_records()
    tar_path = os.path.join(folder, "grit-00000.tar")
    with tarfile.open(tar_path, "w") as tar:
        for key, record, has_image in records[:5]:
            _add(tar, f"{key}.json", json.dumps({**record, "key": key}).encode())
            _add(tar, f"{key}.txt", record["caption"].encode())
            if has_image:
                _add(tar, f"{key}.jpg", _grit_image(record))
        _add(tar, "000000099.json", json.dumps({**records[0][1], "key": "000000099"}).encode())
        _add(tar, "000000099.jpg", b"\xff\xd8\xff\xe0 not really a jpeg")
    jsonl_path = os.path.join(folder, "grit.jsonl")
    with open(jsonl_path, "w", encoding="utf-8") as f:
        for key, record, has_image in records[5:]:
            if has_image:
                with open(os.path.join(folder, "images", f"{key}.jpg"), "wb") as image:
                    image.write(_grit_image(record))
            f.write(json.dumps({**record, "key": key, "image": f"images/{key}.jpg"}) + "\n")
        f.write('{"caption": "cut off\n')
    return [tar_path, jsonl_path]


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_region_sample(folder: str) -> tuple[list[str], str]:
    """RefCOCO records (refer's `refs` joined with their COCO box, `bbox` = [x, y, w, h]) and
    a Visual Genome `region_descriptions.json`, with images in `folder/images`.
    Returns (inputs, image folder)."""
    images = os.path.join(folder, "images")
    os.makedirs(images, exist_ok=True)
    coco_name = "COCO_train2014_000000000001.jpg"
    with open(os.path.join(images, coco_name), "wb") as f:
        f.write(draw_scene(320, 240, [((40, 60, 140, 200), (200, 60, 60)),
                                      ((180, 80, 300, 220), (60, 60, 200))]))
    os.makedirs(os.path.join(images, "VG_100K"), exist_ok=True)
    with open(os.path.join(images, "VG_100K", "7.jpg"), "wb") as f:
        f.write(draw_scene(300, 200, [((10, 20, 110, 120), (60, 160, 60))]))
    refs = [
        {"ref_id": 1, "ann_id": 11, "image_id": 1, "split": "train",
         "file_name": "COCO_train2014_000000000001_11.jpg", "bbox": [40, 60, 100, 140],
         "sentences": [{"raw": "Red box on the left", "sent": "red box on the left"},
                       {"raw": "left one", "sent": "left one"},
                       {"raw": "the red thing", "sent": "the red thing"}]},
        {"ref_id": 2, "ann_id": 12, "image_id": 1, "split": "train",
         "file_name": "COCO_train2014_000000000001_12.jpg", "bbox": [180, 80, 140.5, 140],
         "sentences": [{"sent": "blue box"}, {"sent": "  "}]},
        {"ref_id": 3, "ann_id": 13, "image_id": 1, "file_name": coco_name,
         "bbox": [180, 80, -20, 140], "sentences": [{"sent": "nothing there"}]},
        {"ref_id": 4, "ann_id": 14, "image_id": 1, "file_name": coco_name,
         "bbox": [250, 80, 400, 140], "sentences": [{"sent": "far right"}]},
        {"ref_id": 5, "ann_id": 15, "image_id": 404, "file_name": "COCO_train2014_000000000404.jpg",
         "bbox": [1, 1, 10, 10], "sentences": [{"sent": "a lost picture"}]},
        {"ref_id": 6, "ann_id": 16, "image_id": 1, "file_name": coco_name,
         "sentences": [{"sent": "no box given"}]},
        {"ref_id": 7, "ann_id": 17, "image_id": 1, "file_name": coco_name, "bbox": [1, 1, 5, 5],
         "sentences": []},
    ]
    refs_path = os.path.join(folder, "refcoco_refs.json")
    with open(refs_path, "w", encoding="utf-8") as f:
        json.dump(refs, f)
    vg = [{"id": 7, "regions": [
        {"region_id": 70, "image_id": 7, "phrase": "a green square", "x": 10, "y": 20,
         "width": 100, "height": 100},
        {"region_id": 71, "image_id": 7, "phrase": "empty space on the right", "x": 150, "y": 30,
         "width": 0, "height": 50}]}]
    vg_path = os.path.join(folder, "region_descriptions.json")
    with open(vg_path, "w", encoding="utf-8") as f:
        json.dump(vg, f)
    return [refs_path, vg_path], images
