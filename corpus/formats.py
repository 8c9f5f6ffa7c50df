"""The Qwen-VL text formats of Appendix B, and their parser.

Every module that writes or reads `<img>`, `<ref>`, `<box>`, `<quad>` or ChatML text calls this
one. A formatted sample is a list of `Span`s: text pieces that carry their loss flag (the paper's
black prefix vs blue target) and image slots. The trainer tokenizes spans; people read
`render(spans)`.

Coordinates: boxes and quads are kept in pixels; the text form is integers in [0, 1000):
`int(v / size * 1000)` clamped to 999 (`to_thousandths`), read back by `/ 1000`
(`from_thousandths`). Boxes print as the paper prints them, `(x1,y1),(x2,y2)`; quads as
`(x,y), (x,y), (x,y), (x,y)` with a space after each comma between points and a space between
`</ref>` and `<quad>`, as in the paper's OCR example. The parser accepts either spacing.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from corpus.schema import Region, Sample, Turn

IMG_START, IMG_END = "<img>", "</img>"
REF_START, REF_END = "<ref>", "</ref>"
BOX_START, BOX_END = "<box>", "</box>"
QUAD_START, QUAD_END = "<quad>", "</quad>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
EOS = "<|endoftext|>"
SPECIAL_TOKENS = (IMG_START, IMG_END, REF_START, REF_END, BOX_START, BOX_END, QUAD_START,
                  QUAD_END, IM_START, IM_END, EOS)

IMAGE_PLACEHOLDER = "<image>"  # marks an image's place inside a dialogue turn (schema.Turn)
DEFAULT_SYSTEM = "You are a helpful assistant."

# The seven task prompts of Appendix B.1, exactly as printed.
CAPTION_PROMPT = "Generate the caption in English:"
CAPTION_PROMPT_ZH = "Generate the caption in Chinese:"  # the paper's LAION-zh data; not printed
GROUNDED_CAPTION_PROMPT = "Generate the caption in English with grounding:"
OCR_PROMPT = "OCR with grounding:"
ANSWER_PROMPT = "Answer:"
GROUNDED_SUBJECT = "This"


@dataclass(frozen=True)
class Span:
    """A piece of a formatted sample. `image` is set for an image slot (then `text` is its name)."""

    text: str
    supervised: bool
    image: int | None = None


def to_thousandths(value: float, size: float) -> int:
    # The epsilon keeps 0.947 * 555 / 555 * 1000 (946.99999…) at 947, as the number was meant.
    return min(max(int(value / size * 1000 + 1e-9), 0), 999)


def from_thousandths(value: int, size: float) -> float:
    return value / 1000 * size


def format_box(box: tuple[float, float, float, float], width: int, height: int) -> str:
    x1, y1, x2, y2 = box
    return (f"({to_thousandths(x1, width)},{to_thousandths(y1, height)}),"
            f"({to_thousandths(x2, width)},{to_thousandths(y2, height)})")


def box_to_quad(box: tuple[float, float, float, float]) -> tuple[float, ...]:
    """The four corners of a box, TL, TR, BR, BL."""
    x1, y1, x2, y2 = box
    return (x1, y1, x2, y1, x2, y2, x1, y2)


def format_quad(quad: tuple[float, ...], width: int, height: int) -> str:
    points = [
        f"({to_thousandths(quad[i], width)},{to_thousandths(quad[i + 1], height)})"
        for i in range(0, 8, 2)
    ]
    return ", ".join(points)


def boxed(box: tuple[float, float, float, float], width: int, height: int) -> str:
    return f"{BOX_START}{format_box(box, width, height)}{BOX_END}"


def image_name(sample: Sample, index: int) -> str:
    """How an image appears inside `<img>…</img>` when a person reads the text."""
    return f"{sample.dataset}/{sample.id}.{index}.{sample.images[index].extension}"


def format_sample(sample: Sample, system: str | None = DEFAULT_SYSTEM) -> list[Span]:
    """The training text of a sample as spans, following Appendix B.1 (tasks) and B.2 (SFT)."""
    if sample.task == "sft":
        return _chatml_spans(sample, system)
    spans = [Span(image_name(sample, 0), False, image=0)] if sample.images else []
    prefix, target = _prefix_and_target(sample)
    if prefix:
        spans.append(Span(prefix, False))
    spans.append(Span(target + EOS, True))
    return spans


def _prefix_and_target(sample: Sample) -> tuple[str, str]:
    task = sample.task
    if task == "captioning":
        prompt = CAPTION_PROMPT_ZH if sample.language == "zh" else CAPTION_PROMPT
        return prompt, " " + sample.text
    if task == "vqa":
        return f"{sample.question} {ANSWER_PROMPT}", " " + (sample.answer or "")
    if task == "grounding":
        return GROUNDED_CAPTION_PROMPT, " " + grounded_caption(sample)
    image = sample.images[0] if sample.images else None
    if task in ("ref_grounding", "grounded_captioning"):
        box = boxed(sample.regions[0].box, image.width, image.height)
        if task == "ref_grounding":
            return f"{REF_START}{sample.text}{REF_END}", box
        return f"{REF_START}{GROUNDED_SUBJECT}{REF_END}{box}", f" is {sample.text}"
    if task == "ocr":
        return OCR_PROMPT, " " + ocr_target(sample)
    if task == "text":
        return "", sample.text
    raise ValueError(f"no text format for task {task!r}")


def grounded_caption(sample: Sample) -> str:
    """The caption with `<ref>span</ref><box>…</box>…` inserted; one span may carry several boxes."""
    image = sample.images[0]
    boxes_by_span: dict[tuple[int, int], list[Region]] = {}
    for region in sample.regions:
        if region.kind == "ref":
            boxes_by_span.setdefault((region.char_start, region.char_end), []).append(region)
    pieces, cursor = [], 0
    for (start, end), regions in sorted(boxes_by_span.items()):
        if start < cursor:
            raise ValueError(f"overlapping reference spans at {start}:{end}")
        boxes = "".join(boxed(r.box, image.width, image.height) for r in regions)
        pieces += [sample.text[cursor:start], REF_START, sample.text[start:end], REF_END, boxes]
        cursor = end
    pieces.append(sample.text[cursor:])
    return "".join(pieces)


def ocr_target(sample: Sample) -> str:
    image = sample.images[0]
    items = []
    for region in sample.regions:
        if region.kind != "line":
            continue
        quad = region.quad if region.quad is not None else box_to_quad(region.box)
        items.append(f"{REF_START}{region.text}{REF_END} "
                     f"{QUAD_START}{format_quad(quad, image.width, image.height)}{QUAD_END}")
    return "".join(items)


def _chatml_spans(sample: Sample, system: str | None) -> list[Span]:
    """ChatML as Qwen-VL fine-tunes it: only answers and the special tokens carry loss (B.2)."""
    turns = list(sample.turns)
    if system is not None and (not turns or turns[0].role != "system"):
        turns.insert(0, Turn("system", system))
    spans, images_seen = [], [0]
    for turn in turns:
        spans += _turn_spans(turn, sample, images_seen)
    return spans


def _turn_spans(turn: Turn, sample: Sample, images_seen: list[int]) -> list[Span]:
    """One turn; `<image>` placeholders become `Picture N: <img>…</img>`, N counted over the
    whole dialogue in order of appearance."""
    supervised = turn.role == "assistant"
    spans = [Span(IM_START, True), Span(f"{turn.role}\n", False)]
    for i, part in enumerate(turn.content.split(IMAGE_PLACEHOLDER)):
        if i > 0:
            index = images_seen[0]
            images_seen[0] += 1
            spans.append(Span(f"Picture {index + 1}: ", False))
            spans.append(Span(image_name(sample, index), False, image=index))
        if part:
            spans.append(Span(part, supervised))
    spans += [Span(IM_END, True), Span("\n", True)]
    return spans


def render(spans: list[Span]) -> str:
    """The text a person reads: image slots become `<img>name</img>`."""
    return "".join(
        f"{IMG_START}{span.text}{IMG_END}" if span.image is not None else span.text
        for span in spans
    )


# ---- parser -------------------------------------------------------------------------------

_POINT = r"\(\s*(\d+)\s*,\s*(\d+)\s*\)"
_BOX_RE = re.compile(re.escape(BOX_START) + r"\s*" + _POINT + r"\s*,\s*" + _POINT + r"\s*"
                     + re.escape(BOX_END))
_REF_RE = re.compile(re.escape(REF_START) + r"(.*?)" + re.escape(REF_END), re.S)
_QUAD_RE = re.compile(
    re.escape(REF_START) + r"(.*?)" + re.escape(REF_END) + r"\s*" + re.escape(QUAD_START)
    + r"\s*" + r"\s*,\s*".join([_POINT] * 4) + r"\s*" + re.escape(QUAD_END), re.S)
_TAG_RE = re.compile("|".join(re.escape(t) for t in (REF_START, REF_END)) + "|" + _BOX_RE.pattern)
_CHATML_RE = re.compile(re.escape(IM_START) + r"(\w+)\n(.*?)" + re.escape(IM_END), re.S)


def parse_boxes(text: str) -> list[tuple[int, int, int, int]]:
    return [tuple(int(v) for v in m.groups()) for m in _BOX_RE.finditer(text)]


def parse_grounded_caption(text: str) -> tuple[str, list[tuple[int, int, tuple[int, ...]]]]:
    """Plain caption plus (char_start, char_end, box) per box, boxes in thousandths.

    Inverse of `grounded_caption`: a span followed by several boxes yields one entry per box.
    """
    caption, refs, cursor = [], [], 0
    length = 0
    for match in _REF_RE.finditer(text):
        before = _BOX_RE.sub("", text[cursor:match.start()])
        caption.append(before)
        length += len(before)
        start, end = length, length + len(match.group(1))
        caption.append(match.group(1))
        length = end
        cursor = match.end()
        boxes_text = re.match(r"(?:" + _BOX_RE.pattern + r")*", text[cursor:])
        for box in parse_boxes(boxes_text.group(0)):
            refs.append((start, end, box))
        cursor += boxes_text.end()
    caption.append(_BOX_RE.sub("", text[cursor:]))
    return "".join(caption), refs


def parse_quads(text: str) -> list[tuple[str, tuple[int, ...]]]:
    return [(m.group(1), tuple(int(v) for v in m.groups()[1:])) for m in _QUAD_RE.finditer(text)]


def parse_chatml(text: str) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in _CHATML_RE.finditer(text)]


def strip_tags(text: str) -> str:
    """Text without `<ref>`/`</ref>` tags and `<box>` groups."""
    return _TAG_RE.sub("", text)
