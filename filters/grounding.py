"""Rules shared by the grounding tasks (and by VQA and SFT for images).

Readers cannot always load a record's image; they leave the sample without it and name the
problem in `sample.extra["image_problem"]` (`missing_image`, `corrupt_image`,
`decompression_bomb`, `image_too_large`), so the problem is
counted per sample after fan-out, like any other rule.
"""
from __future__ import annotations

import dataclasses

from corpus.schema import Sample
from filters.base import Reason

IMAGE_PROBLEM = "image_problem"
IMAGE_DETAIL = "image_detail"
PIXEL_TOLERANCE = 1.0  # annotation boxes often overrun the image border by under a pixel


def image_problem(sample: Sample):
    """The image problem (`missing_image`, `corrupt_image`, ...) as the reader found it: the
    input is broken, so it counts as errored, with the reader's detail."""
    problem = sample.extra.get(IMAGE_PROBLEM)
    if problem is None:
        return None
    return Reason(problem, sample.extra.get(IMAGE_DETAIL) or problem, "errored")


def empty_caption(sample: Sample):
    return Reason("empty_caption", f"caption {sample.text[:40]!r}") if not sample.text.strip() \
        else None


def empty_phrase(sample: Sample):
    return Reason("empty_phrase", f"phrase {sample.text[:40]!r}") if not sample.text.strip() \
        else None


def region_box_valid(sample: Sample):
    """The first region's pixel box lies inside the image (within a pixel, then clamped) and is
    not inverted or empty."""
    if not sample.regions or sample.regions[0].box is None:
        return Reason("missing_box", "the phrase has no box")
    image = sample.images[0]
    x1, y1, x2, y2 = sample.regions[0].box
    box = f"box ({x1:g}, {y1:g}, {x2:g}, {y2:g})"
    if x1 > x2 or y1 > y2:
        return Reason("box_inverted", box)
    if (x1 < -PIXEL_TOLERANCE or y1 < -PIXEL_TOLERANCE or x2 > image.width + PIXEL_TOLERANCE
            or y2 > image.height + PIXEL_TOLERANCE):
        return Reason("box_outside_image", f"{box} in a {image.width}x{image.height} image")
    if x2 - x1 <= 0 or y2 - y1 <= 0:
        return Reason("empty_box", box)
    clamped = (max(x1, 0.0), max(y1, 0.0), min(x2, float(image.width)),
               min(y2, float(image.height)))
    if clamped == (x1, y1, x2, y2):
        return None
    region = dataclasses.replace(sample.regions[0], box=clamped)
    return dataclasses.replace(sample, regions=[region] + sample.regions[1:],
                               decisions=sample.decisions + ["box_clamped_to_image"])
