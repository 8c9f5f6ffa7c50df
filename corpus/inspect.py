"""`corpus inspect SHARDS`: print records and draw their boxes and quads, so a person can check
labels against pixels. SHARDS is a shard, a glob of shards, a folder of shards, or a pipeline's
output folder (its `shards/`)."""
from __future__ import annotations

import functools
import glob
import io
import itertools
import os
import sys

import pyarrow as pa
from PIL import Image as PILImage
from PIL import ImageDraw, ImageFont

from corpus.formats import format_sample, render
from corpus.schema import Sample
from corpus.shards import read_shard

KIND_COLOURS = {"word": (0, 160, 255), "line": (255, 40, 40), "ref": (40, 200, 40),
                "region": (255, 160, 0)}
SHARD_EXTENSIONS = (".tar", ".parquet")
# What a truncated, corrupt or foreign shard raises while it is read (pyarrow's own errors
# for Parquet, ValueError/KeyError for a tar's members, OSError for the file and its images).
UNREADABLE = (ValueError, KeyError, TypeError, OSError, pa.ArrowException)


def add_arguments(parser):
    parser.add_argument("shards", metavar="SHARDS",
                        help="a .tar or .parquet shard, a glob of them (quoted), a folder of "
                             "them, or a pipeline's output folder (its shards/)")
    parser.add_argument("--n", type=int, default=5,
                        help="how many samples in all, from the shards in name order")
    parser.add_argument("--output", metavar="DIR",
                        help="write preview PNGs with boxes and quads here (default: none, "
                             "print only)")
    parser.add_argument("--kinds", nargs="+", default=list(KIND_COLOURS),
                        help="region kinds to draw")


def main(args, extra_argv):
    if extra_argv:
        return _fail(f"unknown arguments {extra_argv}")
    if args.n < 0:
        return _fail(f"--n must be 0 or more, got {args.n}")
    paths, problem = find_shards(args.shards)
    if problem:
        return _fail(problem)
    if args.output:
        try:
            os.makedirs(args.output, exist_ok=True)
        except OSError as error:
            return _fail(f"--output {args.output}: {error.strerror}")
    remaining = args.n
    for path in paths:
        try:
            remaining -= show_samples(path, remaining, args.output, set(args.kinds),
                                      args.n - remaining + 1)
        except UNREADABLE as error:
            return _fail(f"cannot read shard {path}: {_reason(error, path)}")
        if remaining <= 0:
            break
    return 0


def _fail(message: str) -> int:
    print(f"corpus inspect: {message}", file=sys.stderr)
    return 2


def _reason(error: Exception, path: str) -> str:
    """The first line of an error, without the path the message repeats; named by its type
    where the text alone says little (a KeyError's text is the missing key)."""
    lines = str(error).removeprefix(f"{path}: ").strip().splitlines()
    text = lines[0] if lines else ""
    if type(error) is ValueError and text:
        return text
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def find_shards(target: str) -> tuple[list[str], str | None]:
    """The shards `target` names, in name order, or why there are none. A URI is taken as one
    shard, for its file system to open."""
    if "://" in target:
        return [target], None
    if os.path.isdir(target):
        folder = os.path.join(target, "shards")
        folder = folder if os.path.isdir(folder) else target
        paths = sorted(os.path.join(folder, name) for name in os.listdir(folder)
                       if name.endswith(SHARD_EXTENSIONS))
        if not paths:
            return [], f"no shards (.tar or .parquet) in {folder}{_runs_inside(folder)}"
        return paths, None
    if os.path.isfile(target):
        if target.endswith(SHARD_EXTENSIONS):
            return [target], None
        return [], f"not a shard (.tar or .parquet): {target}"
    paths = sorted(path for path in glob.glob(target) if path.endswith(SHARD_EXTENSIONS)
                   and os.path.isfile(path))
    return paths, None if paths else f"no shards (.tar or .parquet) match {target}"


def _runs_inside(folder: str) -> str:
    """A hint naming the run folders one level down (`corpus grounding` writes one per task)."""
    runs = sorted(name for name in os.listdir(folder)
                  if os.path.isdir(os.path.join(folder, name, "shards")))
    return f"; inspect one of its runs: {', '.join(runs)}" if runs else ""


def show_samples(path: str, limit: int, preview_dir: str | None, kinds: set[str],
                 first_number: int = 1) -> int:
    """Print up to `limit` samples of one shard (and draw their previews, numbered from
    `first_number` in the order shown); returns how many."""
    shown = 0
    for sample in itertools.islice(read_shard(path), limit):
        print(describe(sample))
        if preview_dir and sample.images:
            name = f"{first_number + shown:03d}-{sample.task}-{sample.id}.png"
            preview = os.path.join(preview_dir, name)
            draw_preview(sample, kinds).save(preview)
            print(f"  preview: {preview}")
        shown += 1
    return shown


def describe(sample: Sample) -> str:
    images = ", ".join(f"{i.width}x{i.height} {i.format}" for i in sample.images) or "no image"
    kinds = {}
    for region in sample.regions:
        kinds[region.kind] = kinds.get(region.kind, 0) + 1
    text = render(format_sample(sample))
    if len(text) > 600:
        text = text[:600] + f"… ({len(text)} characters)"
    lines = [f"{sample.id}  {sample.dataset}/{sample.task}  [{images}]  source={sample.source.uri}"
             + (f" page={sample.source.page}" if sample.source.page is not None else ""),
             f"  regions: {kinds or 'none'}  language={sample.language} clip={sample.clip_score}",
             f"  text: {text}"]
    return "\n".join(lines)


def draw_preview(sample: Sample, kinds: set[str]) -> PILImage.Image:
    """The first image with its regions outlined (boxes as rectangles, quads as polygons) and
    numbered, beside a legend: the task, the id, the text and each numbered region's text in
    its kind's colour, so labels can be checked against pixels without reading JSON."""
    image = PILImage.open(io.BytesIO(sample.images[0].data)).convert("RGB")
    regions = sorted((r for r in sample.regions if r.kind in kinds),
                     key=lambda r: LEGEND_ORDER.index(r.kind) if r.kind in LEGEND_ORDER else 9)
    font = legend_font(LEGEND_FONT_SIZE)
    panel_lines = _legend_lines(sample, image.height)
    # as many regions as the image's height holds, and a screenful at least (a small image)
    room = max(image.height // LEGEND_LINE, LEGEND_MIN_LINES) - len(panel_lines) - 2
    listed = regions[:room]
    draw = ImageDraw.Draw(image)
    for region in regions:
        colour = KIND_COLOURS.get(region.kind, (255, 0, 255))
        if region.quad is not None:
            draw.polygon(list(zip(region.quad[0::2], region.quad[1::2])), outline=colour, width=2)
        elif region.box is not None:
            draw.rectangle(region.box, outline=colour, width=1 if region.kind == "word" else 2)
    for number, region in enumerate(listed, 1):
        corner = region.box[:2] if region.box is not None else region.quad[:2]
        draw.text((corner[0] + 2, corner[1] + 1), str(number), fill=KIND_COLOURS.get(
            region.kind, (255, 0, 255)), font=legend_font(LEGEND_FONT_SIZE - 2))
    height = max(image.height, LEGEND_LINE * (len(panel_lines) + len(listed) + 3))
    sheet = PILImage.new("RGB", (image.width + LEGEND_WIDTH, height), "white")
    sheet.paste(image, (0, 0))
    write = ImageDraw.Draw(sheet)
    y = 8
    for line in panel_lines:
        write.text((image.width + 10, y), line, fill=(0, 0, 0), font=font)
        y += LEGEND_LINE
    for number, region in enumerate(listed, 1):
        label = f"{number}. [{region.kind}] {region.text}"
        write.text((image.width + 10, y), _clipped(label, font), fill=KIND_COLOURS.get(
            region.kind, (255, 0, 255)), font=font)
        y += LEGEND_LINE
    if len(listed) < len(regions):
        write.text((image.width + 10, y), f"… {len(regions) - len(listed)} more regions "
                   "outlined", fill=(90, 90, 90), font=font)
    return sheet


LEGEND_WIDTH = 560  # pixels right of the image
LEGEND_FONT_SIZE = 14
LEGEND_LINE = 19
LEGEND_MIN_LINES = 40
LEGEND_ORDER = ["ref", "region", "line", "word"]
# A font with Latin and Chinese (the Debian packages the project installs), else DejaVu, else
# Pillow's own.
LEGEND_FONTS = ("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
                "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")


@functools.cache
def legend_font(size: int) -> ImageFont.ImageFont:
    for path in LEGEND_FONTS:
        if os.path.exists(path):
            return ImageFont.truetype(path, size)
    return ImageFont.load_default(size)


def _legend_lines(sample: Sample, image_height: int) -> list[str]:
    """The legend's head: what the sample is, then its text wrapped (a few lines at most)."""
    font = legend_font(LEGEND_FONT_SIZE)
    head = [f"{sample.task}  {sample.id}", f"{sample.dataset}  {sample.source.key}"[:90], ""]
    text = sample.question and f"Q: {sample.question}  A: {sample.answer}" or sample.text
    wrapped = _wrapped(text.replace("\n", " "), font)
    room = max(3, min(8, image_height // LEGEND_LINE // 3))
    if len(wrapped) > room:
        wrapped = wrapped[:room - 1] + [f"… ({len(text)} characters)"]
    return head + [f"text: {wrapped[0]}" if wrapped else "text: (none)"] + wrapped[1:] + [""]


def _wrapped(text: str, font) -> list[str]:
    lines, line = [], ""
    for char in text:
        if font.getlength(line + char) > LEGEND_WIDTH - 60:
            lines.append(line)
            line = ""
        line += char
    return lines + [line] if line else lines


def _clipped(text: str, font) -> str:
    if font.getlength(text) <= LEGEND_WIDTH - 20:
        return text
    while text and font.getlength(text + "…") > LEGEND_WIDTH - 20:
        text = text[:-1]
    return text + "…"
