"""Sample image-text pairs in the forms users have: img2dataset WebDataset tars (`KEY.jpg`,
`KEY.txt`, `KEY.json`), img2dataset Parquet, and a folder of images with a TSV of
(image path, caption). `DEMO_PAIRS` lists each pair with the outcome the default rules give it,
so the demo shows every rule and the tests can check each one."""
from __future__ import annotations

import io
import json
import os
import random
import struct
import tarfile
import zlib
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image as PILImage
from PIL import ImageDraw

from corpus.shards import FIXED_MTIME


def make_photo(width: int, height: int, seed: int = 0, fmt: str = "JPEG") -> bytes:
    """A small picture with a few coloured shapes (compressible, distinct per seed)."""
    rng = random.Random(seed)
    image = PILImage.new("RGB", (width, height), tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x, y = rng.randrange(width), rng.randrange(height)
        w, h = rng.randrange(10, max(11, width // 2)), rng.randrange(10, max(11, height // 2))
        draw.ellipse((x, y, x + w, y + h), fill=tuple(rng.randrange(256) for _ in range(3)))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, quality=85) if fmt == "JPEG" else image.save(buffer, format=fmt)
    return buffer.getvalue()


def phone_photo(width: int, height: int, seed: int = 0, orientation: int = 6) -> bytes:
    """A JPEG as phones save one: the pixels as the sensor lay (`width` x `height`), with an
    EXIF orientation saying how to turn them for display (6: a quarter turn clockwise)."""
    exif = PILImage.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    PILImage.open(io.BytesIO(make_photo(width, height, seed))).save(
        buffer, format="JPEG", quality=85, exif=exif.tobytes())
    return buffer.getvalue()


def png_bomb(width: int = 30000, height: int = 30000) -> bytes:
    """A tiny PNG whose header claims a huge size: what a decompression bomb looks like."""
    buffer = io.BytesIO()
    PILImage.new("L", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


@dataclass
class Pair:
    key: str
    image: bytes | None
    caption: bytes | str | None
    expect: str  # "kept" (unless the CLIP step drops it), a drop reason, or an errored reason
    meta: dict | None = None


def demo_pairs() -> list[Pair]:
    """One or more pairs per rule of A.1 and per kind of bad input, plus clean ones."""
    def photo(seed: int, w: int = 256, h: int = 224) -> bytes:
        return make_photo(w, h, seed)

    truncated = photo(90)
    return [
        Pair("000000000", photo(1), "a red kite flying over a green field", "kept"),
        Pair("000000001", photo(2), "一只小狗在草地上奔跑", "kept"),
        Pair("000000002", photo(3), "Sunset over the harbour, with sailing boats", "kept"),
        Pair("000000003", photo(4), "猫咪在窗台上晒太阳，看起来很舒服", "kept"),
        Pair("000000004", photo(5), "A bowl of ramen with egg and spring onions", "kept"),
        Pair("000000005", photo(6, 900, 224), "a very wide panorama of mountains",
             "aspect_ratio_too_large"),
        Pair("000000006", photo(7, 120, 100), "a tiny thumbnail of a cat", "image_too_small"),
        Pair("000000007", photo(8), "Café au lait in a blue cup", "non_en_zh_characters"),
        Pair("000000008", photo(9), "Москва зимой, вид на реку", "non_en_zh_characters"),
        Pair("000000009", photo(10), "best birthday party ever 🎉🎂", "emoji"),
        Pair("000000010", photo(11), "dog", "text_too_short"),
        Pair("000000011", photo(12), "a very long caption " * 40, "text_too_long"),
        Pair("000000012", photo(13), "<b>Fresh</b> strawberries &amp; cream<br/>on a plate",
             "kept"),
        Pair("000000013", photo(14), "<div><img src='x.jpg'/></div>&nbsp;",
             "empty_after_html_cleaning"),
        Pair("000000014", photo(15), "Lighthouse at dusk!!!! see www.example.com/lh IMG_4021.JPG",
             "kept"),
        Pair("000000015", photo(16), "DSC_2481.JPG", "empty_after_pattern_cleaning"),
        # A web caption keeps what the HTML cleaner leaves: the special tags are for the
        # academic sets only.
        Pair("000000016", photo(17), "<PERSON> walks the dog along the beach", "kept"),
        Pair("000000017", photo(18), "Nike® running shoes on a wooden floor", "kept"),
        Pair("000000018", photo(19), "<i>ok</i>", "text_too_short_after_cleaning"),
        Pair("000000019", b"this is not an image", "a broken file", "corrupt_image"),
        Pair("000000020", b"", "an empty file", "empty_image"),
        Pair("000000021", png_bomb(), "a decompression bomb", "decompression_bomb"),
        Pair("000000022", photo(20), b"caf\xe9 latin-1 bytes", "caption_not_utf8"),
        Pair("000000023", photo(21), None, "missing_caption"),
        Pair("000000024", None, "a caption without its image", "missing_image"),
        Pair("000000025", truncated[: len(truncated) // 2], "half a JPEG body", "corrupt_image"),
        Pair("000000026", photo(22), "x" * 70000, "caption_too_large"),
    ]


def write_img2dataset_tar(path: str, pairs: list[Pair], truncate_at: int | None = None) -> None:
    """A tar as img2dataset writes it; `truncate_at` cuts the file to that many bytes."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for pair in pairs:
            caption = pair.caption.encode("utf-8") if isinstance(pair.caption, str) \
                else pair.caption
            meta = {"key": pair.key, "status": "success", "url": f"https://example.com/{pair.key}"}
            meta.update(pair.meta or {})
            members = [("json", json.dumps(meta).encode("utf-8"))]
            if caption is not None:
                members.append(("txt", caption))
            if pair.image is not None:
                members.append(("jpg", pair.image))
            for extension, data in members:
                info = tarfile.TarInfo(f"{pair.key}.{extension}")
                info.size, info.mtime = len(data), FIXED_MTIME
                tar.addfile(info, io.BytesIO(data))
    data = buffer.getvalue()
    with open(path, "wb") as f:
        f.write(data[:truncate_at] if truncate_at else data)


def write_img2dataset_parquet(path: str, pairs: list[Pair]) -> None:
    rows = [{"key": p.key, "caption": p.caption if isinstance(p.caption, str) else None,
             "jpg": p.image, "url": f"https://example.com/{p.key}", "status": "success",
             "error_message": None} for p in pairs]
    pq.write_table(pa.Table.from_pylist(rows), path)


def write_image_folder(directory: str, rows: list[tuple[str, bytes | None, str]],
                       table: str = "captions.tsv") -> str:
    """Images under `directory/images/` and a table of (image, caption) rows; a None image is
    listed but not written (a missing file)."""
    os.makedirs(os.path.join(directory, "images"), exist_ok=True)
    for name, data, _ in rows:
        if data is not None:
            with open(os.path.join(directory, "images", name), "wb") as f:
                f.write(data)
    path = os.path.join(directory, table)
    if table.endswith(".tsv"):
        with open(path, "w", encoding="utf-8") as f:
            f.write("image\tcaption\n")
            for name, _, caption in rows:
                f.write(f"images/{name}\t{caption}\n")
    elif table.endswith(".jsonl"):
        with open(path, "w", encoding="utf-8") as f:
            for name, _, caption in rows:
                f.write(json.dumps({"image": f"images/{name}", "caption": caption}) + "\n")
    else:
        pq.write_table(pa.Table.from_pylist(
            [{"image": f"images/{n}", "caption": c} for n, _, c in rows]), path)
    return path


def academic_rows() -> list[tuple[str, bytes | None, str, str]]:
    """An academic caption set: one image with several captions (the longest wins), a PNG, a
    missing file; a phone photo stored turned and a GIF, both re-encoded upright in a format
    every reader has; a CC12M placeholder. (file name, bytes, caption, expected outcome)."""
    coco = make_photo(320, 240, 100)
    return [
        ("coco_1.jpg", coco, "a man riding a bike", "shorter_caption_same_image"),
        ("coco_1.jpg", coco, "a man riding a red bike down a city street", "kept"),
        ("coco_1.jpg", coco, "man on a bicycle", "shorter_caption_same_image"),
        ("coco_2.png", make_photo(300, 240, 101, fmt="PNG"), "two zebras grazing in tall grass",
         "kept"),
        ("coco_3.jpg", None, "a file that is not there", "missing_image"),
        ("phone_4.jpg", phone_photo(320, 240, 102), "a bowl of fruit on a kitchen table",
         "kept"),
        ("drawing_5.gif", make_photo(300, 240, 103, fmt="GIF"),
         "a hand drawn map of the old town", "kept"),
        ("cc_6.jpg", make_photo(300, 240, 104), "<PERSON> walks the dog along the beach",
         "academic_special_tag"),
    ]


@dataclass
class DemoInputs:
    web: list[str]  # img2dataset tars: a web set (dataset "demo")
    academic: list[str]  # a folder with a caption table: an academic set ("demo-academic")
    config_path: str
    expected: dict[str, int]  # outcome -> count, for the pairs whose outcome is fixed


def write_demo_inputs(directory: str) -> DemoInputs:
    """Tars, a truncated tar, an image folder with a TSV, a CLIP checkpoint and a config."""
    from pipelines.clip import TINY_MODEL_NAME, write_tiny_checkpoint

    web = os.path.join(directory, "web")
    os.makedirs(web, exist_ok=True)
    pairs = demo_pairs()
    write_img2dataset_tar(os.path.join(web, "00000.tar"), pairs)
    good = [Pair(f"1000000{i:02d}", make_photo(240, 240, 200 + i), f"a photo of object {i}",
                 "kept") for i in range(3)]
    truncated = os.path.join(web, "00001.tar")
    write_img2dataset_tar(truncated, good)
    # Cut inside the last image: two pairs are read, the third is a truncated_tar reject.
    write_img2dataset_tar(truncated, good, truncate_at=last_member_middle(truncated))
    rows = academic_rows()
    write_image_folder(os.path.join(directory, "academic"), [(n, d, c) for n, d, c, _ in rows])
    config_path_json, checkpoint = write_tiny_checkpoint(os.path.join(directory, "clip"))
    config_path = os.path.join(directory, "pairs.yaml")
    with open(config_path, "w", encoding="utf-8") as f:
        f.write(DEMO_CONFIG.format(model=TINY_MODEL_NAME, checkpoint=checkpoint,
                                   model_config=config_path_json))
    expected: dict[str, int] = {}
    for outcome in [p.expect for p in pairs + good[:2]] + ["truncated_tar"] + [r[3] for r in rows]:
        expected[outcome] = expected.get(outcome, 0) + 1
    return DemoInputs([web], [os.path.join(directory, "academic")], config_path, expected)


def last_member_middle(path: str) -> int:
    """A byte offset halfway through the data of the tar's last member."""
    with tarfile.open(path) as tar:
        last = tar.getmembers()[-1]
    return last.offset_data + last.size // 2


# The tiny model has random weights: its scores mean nothing, and the threshold only shows the
# step at work (it drops the few pairs that happen to score lowest). Real runs name a real
# checkpoint, whose cut comes with it (0.28 for ViT-B-32). "demo-academic" has no profile of
# its own: the config gives it the academic rules, as a user does for a set the profiles lack.
DEMO_CONFIG = """\
clip:
  model: {model}
  model_config: {model_config}
  checkpoint: {checkpoint}
  threshold: -0.36
  batch_size: 8
datasets:
  demo:
    text:
      languages: [en, zh]
  demo-academic:
    rule_set: academic
    longest_caption_per_image: true
"""
