"""GRIT recursive-box pruning (Appendix A.3).

A GRIT record labels spans of its caption (`noun_chunks`, `ref_exps`) with boxes, as
`[char_start, char_end, x_min, y_min, x_max, y_max, score]`: char end exclusive, boxes
normalised to 0-1. Referring expressions nest ("a dog on a couch" holds "a couch") and so
cannot all be written as `<ref>` tags. We keep the set of non-overlapping spans that carries the
most boxes: weighted interval scheduling, where a span weighs as many distinct boxes as it
carries (the same span listed twice with different boxes is one span with two boxes).

Greedy by earliest end maximises the number of spans, not of boxes; the dynamic programme below
maximises boxes. Among equally good sets it keeps the one the programme meets first when spans
are ordered by (end, start): at every tie it leaves the later-ending span out, so the result
does not depend on the order of the input.

The raw entries travel in `sample.extra["grit_spans"]` from the reader to these rules; pruning
replaces them with `ref` regions in pixels of the image.
"""
from __future__ import annotations

import bisect
import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Sequence

from corpus.schema import Region, Sample
from filters.base import Reason

GRIT_SPANS = "grit_spans"  # sample.extra key holding the raw entries until pruning
BOX_TOLERANCE = 1e-6  # float noise around 0 and 1 in published GRIT boxes


@dataclass(frozen=True)
class GritSpan:
    """One caption span with its distinct boxes (normalised, in the order first met)."""

    start: int
    end: int
    boxes: tuple[tuple[float, float, float, float], ...]
    scores: tuple[float | None, ...]


def group_spans(entries: Sequence[Sequence[Any]]) -> list[GritSpan]:
    """Merge entries with the same (start, end) into one span; drop repeated boxes."""
    grouped: dict[tuple[int, int], dict[tuple[float, ...], float | None]] = {}
    for entry in entries:
        start, end = int(entry[0]), int(entry[1])
        box = tuple(float(v) for v in entry[2:6])
        score = float(entry[6]) if len(entry) > 6 and entry[6] is not None else None
        boxes = grouped.setdefault((start, end), {})
        if box not in boxes:
            boxes[box] = score
    return [GritSpan(start, end, tuple(boxes), tuple(boxes.values()))
            for (start, end), boxes in sorted(grouped.items())]


def best_span_set(spans: Sequence[tuple[int, int, int]]) -> list[int]:
    """Indices of pairwise non-overlapping spans `(start, end, weight)` of largest total weight.

    Spans are half-open: `[0, 3)` and `[3, 5)` do not overlap. Runs in O(n log n).
    """
    order = sorted(range(len(spans)), key=lambda i: (spans[i][1], spans[i][0], i))
    ends = [spans[i][1] for i in order]
    # best[j]: the best weight using the first j spans of `order`; take[j]: span j-1 is in it
    best = [0] * (len(order) + 1)
    take = [False] * (len(order) + 1)
    previous = [0] * (len(order) + 1)
    for j, index in enumerate(order, start=1):
        start, _, weight = spans[index]
        compatible = bisect.bisect_right(ends, start, 0, j - 1)  # spans ending at or before start
        with_it = weight + best[compatible]
        if with_it > best[j - 1]:
            best[j], take[j], previous[j] = with_it, True, compatible
        else:
            best[j] = best[j - 1]
    chosen, j = [], len(order)
    while j > 0:
        if take[j]:
            chosen.append(order[j - 1])
            j = previous[j]
        else:
            j -= 1
    return sorted(chosen, key=lambda i: (spans[i][0], spans[i][1]))


def span_entries(sample: Sample) -> list:
    return sample.extra.get(GRIT_SPANS) or []


class GritSpansValid:
    """Drops a record whose entries are malformed, fall outside the caption or the unit square,
    or have x_min > x_max / y_min > y_max. One bad entry drops the record: a record whose
    labels disagree with its caption is not worth guessing about."""

    name = "grit_spans_valid"

    def __call__(self, sample: Sample):
        length = len(sample.text)
        for entry in span_entries(sample):
            if (not isinstance(entry, (list, tuple)) or len(entry) < 6
                    or not all(_is_number(v) for v in entry[:6])):
                return Reason("malformed_span", f"entry {str(entry)[:80]}")
            start, end = entry[0], entry[1]
            if start != int(start) or end != int(end) or not 0 <= start < end <= length:
                return Reason("span_outside_caption",
                              f"span {start:g}-{end:g} of a {length}-character caption")
            x1, y1, x2, y2 = entry[2:6]
            if not all(-BOX_TOLERANCE <= v <= 1 + BOX_TOLERANCE for v in (x1, y1, x2, y2)):
                return Reason("box_outside_unit_range",
                              f"box ({x1:g}, {y1:g}, {x2:g}, {y2:g}) outside [0, 1]")
            if x1 > x2 or y1 > y2:
                return Reason("box_inverted", f"box ({x1:g}, {y1:g}, {x2:g}, {y2:g})")
        return None


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def scored_at_least(entry: Any, min_score: float | None) -> bool:
    """Whether an entry passes `min_score`; one without a (numeric) score, or no threshold,
    does."""
    if min_score is None or not isinstance(entry, (list, tuple)) or len(entry) < 7:
        return True
    return not _is_number(entry[6]) or entry[6] >= min_score


class GritScoreThreshold:
    """Removes entries scored below `min_score` (entries without a score stay)."""

    name = "grit_score_threshold"

    def __init__(self, min_score: float):
        self.min_score = min_score

    def __call__(self, sample: Sample):
        entries = span_entries(sample)
        kept = [e for e in entries if scored_at_least(e, self.min_score)]
        if len(kept) == len(entries):
            return None
        extra = {**sample.extra, GRIT_SPANS: kept}
        decision = f"grit_score_below_{self.min_score}: removed {len(entries) - len(kept)}"
        return dataclasses.replace(sample, extra=extra, decisions=sample.decisions + [decision])


class PruneRecursiveBoxes:
    """Keeps the non-overlapping spans carrying the most boxes, as `ref` regions in pixels."""

    name = "prune_recursive_boxes"

    def __call__(self, sample: Sample):
        spans = group_spans(span_entries(sample))
        if not spans:
            return Reason("no_grounding_spans", "no span with a box is left")
        chosen = [spans[i] for i in best_span_set([(s.start, s.end, len(s.boxes)) for s in spans])]
        image = sample.images[0]
        regions = [
            Region(kind="ref", text=sample.text[span.start:span.end],
                   box=to_pixels(box, image.width, image.height),
                   char_start=span.start, char_end=span.end, score=score)
            for span in chosen for box, score in zip(span.boxes, span.scores)
        ]
        boxes_in = sum(len(s.boxes) for s in spans)
        extra = {k: v for k, v in sample.extra.items() if k != GRIT_SPANS}
        extra["grit"] = {"spans_in": len(spans), "boxes_in": boxes_in,
                         "spans_kept": len(chosen), "boxes_kept": len(regions)}
        decisions = list(sample.decisions)
        if len(chosen) < len(spans):
            decisions.append(f"prune_recursive_boxes: kept {len(chosen)} of {len(spans)} spans, "
                             f"{len(regions)} of {boxes_in} boxes")
        return dataclasses.replace(sample, regions=regions, extra=extra, decisions=decisions)


def to_pixels(box: Sequence[float], width: int, height: int) -> tuple[float, float, float, float]:
    """A 0-1 box in pixels of a `width` x `height` image, clamped to the image."""
    x1, y1, x2, y2 = (min(max(v, 0.0), 1.0) for v in box)
    return (x1 * width, y1 * height, x2 * width, y2 * height)
