"""The one record every pipeline writes and every reader (manifests, trainer, inspect) reads.

A `Sample` is a small dataclass tree; `SAMPLE_SCHEMA` is its Arrow form (one Parquet row per
sample, image bytes in a binary column). `to_row`/`from_row` convert between the two, and
`to_json_record` gives the same row without image bytes, for the `KEY.json` member of a tar.
Geometry is kept in pixels of the sample's own image; the Qwen-VL [0, 1000) text form is
computed only when formatting (corpus.formats).
"""
from __future__ import annotations

import itertools
import json
import operator
from dataclasses import dataclass, field, fields
from typing import Any

import pyarrow as pa

TASKS = (
    "captioning",
    "vqa",
    "grounding",
    "ref_grounding",
    "grounded_captioning",
    "ocr",
    "text",
    "sft",
)

IMAGE_FORMATS = {"jpeg": "jpg", "png": "png", "webp": "webp"}  # format -> file extension


def _pickled_as_fields(cls):
    """Pickle as the class and its field values in order. Rebuilding through `__init__` takes
    half the time of pickle's default (a new object, then its `__dict__` restored), and samples
    are pickled whenever they are staged or cross a process (a staged choice, Beam's runners)."""
    values = operator.attrgetter(*(f.name for f in fields(cls)))  # a tuple: every class has 2+
    cls.__reduce__ = lambda self: (cls, values(self))
    return cls


@_pickled_as_fields
@dataclass
class Image:
    data: bytes
    format: str  # one of IMAGE_FORMATS
    width: int
    height: int

    @property
    def extension(self) -> str:
        return IMAGE_FORMATS[self.format]


@_pickled_as_fields
@dataclass
class Region:
    """A labelled place on the image: an OCR word or line, a grounding reference, a region.

    `box` is (x1, y1, x2, y2) in pixels; `quad` is four corners TL, TR, BR, BL as
    (x, y, x, y, x, y, x, y) in pixels, for text that is not axis-aligned. For a grounding
    reference, `char_start:char_end` is the labelled span of the sample's `text`.
    """

    kind: str  # "word" | "line" | "ref" | "region"
    text: str
    box: tuple[float, float, float, float] | None = None
    quad: tuple[float, ...] | None = None
    char_start: int = -1
    char_end: int = -1
    score: float | None = None


@_pickled_as_fields
@dataclass
class Turn:
    """One ChatML turn. `<image>` in `content` marks where the next image of the sample goes."""

    role: str  # "system" | "user" | "assistant"
    content: str


@_pickled_as_fields
@dataclass
class Source:
    uri: str
    key: str = ""
    page: int | None = None
    sha256: str | None = None


@dataclass
class Sample:
    id: str
    dataset: str
    task: str
    source: Source
    images: list[Image] = field(default_factory=list)
    text: str = ""
    original_text: str | None = None
    question: str | None = None
    answer: str | None = None
    regions: list[Region] = field(default_factory=list)
    turns: list[Turn] = field(default_factory=list)
    language: str | None = None
    language_score: float | None = None
    clip_score: float | None = None
    decisions: list[str] = field(default_factory=list)  # what cleaners did, in order
    extra: dict[str, Any] = field(default_factory=dict)  # JSON-serialisable leftovers

    @property
    def image(self) -> Image | None:
        return self.images[0] if self.images else None


# A page's few hundred regions pickle as plain tuples inside their sample: a Python `__reduce__`
# call per region made pickling a sample three times slower.
_SAMPLE_VALUES = operator.attrgetter(*(f.name for f in fields(Sample)))
_REGION_VALUES = operator.attrgetter(*(f.name for f in fields(Region)))
_REGIONS_AT = [f.name for f in fields(Sample)].index("regions")


def _packed_sample(sample: Sample):
    values = list(_SAMPLE_VALUES(sample))
    values[_REGIONS_AT] = list(map(_REGION_VALUES, sample.regions))
    return _unpacked_sample, tuple(values)


def _unpacked_sample(*values) -> Sample:
    sample = Sample(*values)
    sample.regions = list(itertools.starmap(Region, sample.regions))
    return sample


Sample.__reduce__ = _packed_sample


_IMAGE = pa.struct(
    [("data", pa.binary()), ("format", pa.string()), ("width", pa.int32()), ("height", pa.int32())]
)
_REGION = pa.struct(
    [
        ("kind", pa.string()),
        ("text", pa.string()),
        ("box", pa.list_(pa.float64())),
        ("quad", pa.list_(pa.float64())),
        ("char_start", pa.int32()),
        ("char_end", pa.int32()),
        ("score", pa.float64()),
    ]
)
_TURN = pa.struct([("role", pa.string()), ("content", pa.string())])
_SOURCE = pa.struct(
    [("uri", pa.string()), ("key", pa.string()), ("page", pa.int32()), ("sha256", pa.string())]
)

SAMPLE_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("dataset", pa.string()),
        ("task", pa.string()),
        ("source", _SOURCE),
        ("images", pa.list_(_IMAGE)),
        ("text", pa.string()),
        ("original_text", pa.string()),
        ("question", pa.string()),
        ("answer", pa.string()),
        ("regions", pa.list_(_REGION)),
        ("turns", pa.list_(_TURN)),
        ("language", pa.string()),
        ("language_score", pa.float64()),
        ("clip_score", pa.float64()),
        ("decisions", pa.list_(pa.string())),
        ("extra_json", pa.string()),
    ]
)


def to_row(sample: Sample) -> dict[str, Any]:
    # Built by hand: dataclasses.asdict deep-copies every field and costs 6-20 ms on an OCR page
    # with a few hundred regions; this costs a fraction of a millisecond.
    s = sample
    return {
        "id": s.id, "dataset": s.dataset, "task": s.task,
        "source": {"uri": s.source.uri, "key": s.source.key, "page": s.source.page,
                   "sha256": s.source.sha256},
        "images": [{"data": i.data, "format": i.format, "width": i.width, "height": i.height}
                   for i in s.images],
        "text": s.text, "original_text": s.original_text, "question": s.question,
        "answer": s.answer,
        "regions": [{"kind": r.kind, "text": r.text,
                     "box": list(r.box) if r.box is not None else None,
                     "quad": list(r.quad) if r.quad is not None else None,
                     "char_start": r.char_start, "char_end": r.char_end, "score": r.score}
                    for r in s.regions],
        "turns": [{"role": t.role, "content": t.content} for t in s.turns],
        "language": s.language, "language_score": s.language_score,
        "clip_score": s.clip_score, "decisions": list(s.decisions),
        "extra_json": json.dumps(s.extra, sort_keys=True, ensure_ascii=False),
    }


def from_row(row: dict[str, Any]) -> Sample:
    return Sample(
        id=row["id"],
        dataset=row["dataset"],
        task=row["task"],
        source=Source(**row["source"]),
        images=[Image(**image) for image in row.get("images") or []],
        text=row.get("text") or "",
        original_text=row.get("original_text"),
        question=row.get("question"),
        answer=row.get("answer"),
        regions=[_region_from_row(r) for r in row.get("regions") or []],
        turns=[Turn(**t) for t in row.get("turns") or []],
        language=row.get("language"),
        language_score=row.get("language_score"),
        clip_score=row.get("clip_score"),
        decisions=list(row.get("decisions") or []),
        extra=row["extra"] if "extra" in row else json.loads(row.get("extra_json") or "{}"),
    )


def _region_from_row(row: dict[str, Any]) -> Region:
    return Region(
        kind=row["kind"],
        text=row["text"],
        box=tuple(row["box"]) if row.get("box") is not None else None,
        quad=tuple(row["quad"]) if row.get("quad") is not None else None,
        char_start=row.get("char_start", -1),
        char_end=row.get("char_end", -1),
        score=row.get("score"),
    )


def image_member_name(index: int, image: Image) -> str:
    """Tar member suffix of the index-th image: `jpg` for the first, `1.jpg`, `2.jpg`… after."""
    return image.extension if index == 0 else f"{index}.{image.extension}"


def to_json_record(sample: Sample) -> dict[str, Any]:
    """The row without image bytes (each image names its tar member instead) and with `extra`
    as the JSON object it is: only a Parquet column needs it as a string."""
    row = to_row(sample)
    del row["extra_json"]
    row["extra"] = sample.extra
    row["images"] = [
        {"member": image_member_name(i, image), "format": image.format, "width": image.width,
         "height": image.height}
        for i, image in enumerate(sample.images)
    ]
    return row


def from_json_record(record: dict[str, Any], members: dict[str, bytes]) -> Sample:
    """Inverse of `to_json_record`, with the image bytes looked up by member suffix."""
    row = dict(record)
    row["images"] = [
        {"data": members[meta["member"]], "format": meta["format"], "width": meta["width"],
         "height": meta["height"]}
        for meta in record.get("images") or []
    ]
    return from_row(row)
