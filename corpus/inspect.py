"""`corpus inspect SHARD`: print records and draw their boxes and quads, so a person can check
labels against pixels."""
from __future__ import annotations

import io
import itertools
import os

from PIL import Image as PILImage
from PIL import ImageDraw

from corpus.formats import format_sample, render
from corpus.schema import Sample
from corpus.shards import read_shard

KIND_COLOURS = {"word": (0, 160, 255), "line": (255, 40, 40), "ref": (40, 200, 40),
                "region": (255, 160, 0)}


def add_arguments(parser):
    parser.add_argument("shard", help="a .tar or .parquet shard written by a pipeline")
    parser.add_argument("--n", type=int, default=5, help="how many samples (default: 5)")
    parser.add_argument("--out", metavar="DIR", help="write preview PNGs with boxes and quads here")
    parser.add_argument("--kinds", nargs="+", default=list(KIND_COLOURS),
                        help="region kinds to draw (default: all)")


def main(args, extra_argv):
    if extra_argv:
        raise SystemExit(f"corpus inspect: unknown arguments {extra_argv}")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
    for sample in itertools.islice(read_shard(args.shard), args.n):
        print(describe(sample))
        if args.out and sample.images:
            path = os.path.join(args.out, f"{sample.id}.png")
            draw_preview(sample, set(args.kinds)).save(path)
            print(f"  preview: {path}")
    return 0


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
    """The first image with every region outlined: boxes as rectangles, quads as polygons."""
    image = PILImage.open(io.BytesIO(sample.images[0].data)).convert("RGB")
    draw = ImageDraw.Draw(image)
    for region in sample.regions:
        if region.kind not in kinds:
            continue
        colour = KIND_COLOURS.get(region.kind, (255, 0, 255))
        if region.quad is not None:
            points = list(zip(region.quad[0::2], region.quad[1::2]))
            draw.polygon(points, outline=colour, width=2)
        elif region.box is not None:
            draw.rectangle(region.box, outline=colour, width=1 if region.kind == "word" else 2)
    return image
