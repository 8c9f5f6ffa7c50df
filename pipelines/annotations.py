"""Reading annotation records and their images, for `corpus grounding`, `corpus vqa` and
`corpus sft`.

Annotation sets come as JSON (a list, or a dict holding one), JSON Lines, Parquet, or WebDataset
tars whose `KEY.json` carries the record next to `KEY.jpg` (what img2dataset writes with
`--save_additional_columns`). Images come inside the record (bytes, or a `{"bytes": …}` dict as
Hugging Face datasets write them), inside the tar, or as a path resolved against `--images`
(a folder or a tar of images).

A record that cannot be parsed becomes an `AnnotationRecord` with `error` set, so the caller can
count it as one errored unit; a file that cannot be opened becomes one such record too.
`read_records` is the loop the pipelines' work runs over one input file: such records become
their rejects, and a record whose conversion raises costs that record only.
"""
from __future__ import annotations

import json
import os
import posixpath
import re
import string
import tarfile
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import fsspec
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from corpus.config import ConfigError
from corpus.ids import sample_id
from corpus.inputs import InputFile
from corpus.schema import Image
from corpus.shards import iter_tar_groups
from filters.base import Reject
from filters.image_rules import ImageError, probe_image, verify_decode

RECORD_EXTENSIONS = (".json", ".jsonl", ".parquet", ".tar")
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
# Image files are read up to this size; a larger "image" (or a path such as /dev/zero) is an
# image_too_large problem, not a read of unbounded size.
MAX_IMAGE_BYTES = 64 << 20
# Top-level keys under which JSON files commonly keep their record list.
LIST_KEYS = ("annotations", "questions", "data", "records", "samples")
# Record fields that name an image file, in the order they are tried.
IMAGE_PATH_FIELDS = ("image", "image_path", "img_path", "file_name", "filename", "image_file")
# Record fields that may hold the image itself (bytes, or a `{"bytes": …}` dict).
EMBEDDED_IMAGE_FIELDS = ("image", "img", "jpg", "png", "webp")
# Fields `image_paths_of` reads from any record, which an `image_template` may name too.
ANY_RECORD_IMAGE_FIELDS = IMAGE_PATH_FIELDS + ("image_id", "id", "key", "_key")


@dataclass
class AnnotationRecord:
    uri: str  # the file it came from, as given
    key: str  # unique within the dataset: `relative/path#index` or `relative/path.tar#KEY`
    fields: dict[str, Any]
    members: dict[str, bytes] = field(default_factory=dict)  # tar members of the key
    error: str | None = None  # reason the record could not be read (then fields is empty)
    detail: str = ""

    def reject(self, dataset: str, reason: str | None = None, status: str = "errored",
               detail: str | None = None) -> Reject:
        return Reject(sample_id(dataset, self.key), dataset, self.uri, self.key,
                      reason or self.error or "unreadable_record", status,
                      self.detail if detail is None else detail)


def iter_records(path: str, name: str) -> Iterator[AnnotationRecord]:
    """Records of one file; unreadable parts become records with `error` set."""
    try:
        lower = path.lower()
        if lower.endswith(".tar"):
            yield from _tar_records(path, name)
        elif lower.endswith(".parquet"):
            yield from _parquet_records(path, name)
        elif lower.endswith(".jsonl"):
            yield from _jsonl_records(path, name)
        else:
            yield from _json_records(path, name)
    except (OSError, ValueError) as error:  # unreadable file: one errored unit
        yield AnnotationRecord(path, f"{name}#file", {}, error="unreadable_file",
                               detail=str(error)[:500])


def read_records(file: InputFile, dataset: str,
                 items_of: Callable[[AnnotationRecord], Iterable[Any]]) -> Iterator[Any]:
    """What `items_of` makes of each record of an input file, in the file's order. A record
    that cannot be read is its errored reject; so is a record whose `items_of` raises, after
    whatever it yielded first, and the file's other records go on."""
    for record in iter_records(file.path, file.relative):
        if record.error:
            yield record.reject(dataset)
            continue
        try:
            yield from items_of(record)
        except Exception as error:  # the dead letter of one record
            yield record.reject(dataset, type(error).__name__, "errored", str(error)[:1000])


def _json_records(path: str, name: str) -> Iterator[AnnotationRecord]:
    with fsspec.open(path, "rb") as f:
        try:
            document = json.loads(f.read())
        except json.JSONDecodeError as error:
            yield AnnotationRecord(path, f"{name}#file", {}, error="malformed_json",
                                   detail=str(error)[:500])
            return
    for index, record in enumerate(json_record_list(document)):
        key = f"{name}#{index}"
        if isinstance(record, dict):
            yield AnnotationRecord(path, key, record)
        else:
            yield AnnotationRecord(path, key, {}, error="malformed_record",
                                   detail=f"expected an object, got {type(record).__name__}")


def json_record_list(document: Any) -> list:
    """The records of a JSON document: a list, a dict holding one under a usual key, a dict of
    records keyed by id (each gets the id as `_key`), or a single record."""
    if isinstance(document, list):
        return document
    if isinstance(document, dict):
        for key in LIST_KEYS:
            if isinstance(document.get(key), list):
                # file-level facts (VQAv2's `data_subtype`, say) go with every record
                shared = {k: v for k, v in document.items()
                          if isinstance(v, (str, int, float, bool)) or v is None}
                return [{**shared, **r} if isinstance(r, dict) else r for r in document[key]]
        if document and all(isinstance(v, dict) for v in document.values()):
            return [{"_key": k, **v} for k, v in document.items()]
        return [document]
    return [document]


def _jsonl_records(path: str, name: str) -> Iterator[AnnotationRecord]:
    with fsspec.open(path, "rt", encoding="utf-8", errors="replace") as f:
        for index, line in enumerate(f):
            if not line.strip():
                continue
            key = f"{name}#{index}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                yield AnnotationRecord(path, key, {}, error="malformed_json",
                                       detail=str(error)[:500])
                continue
            if isinstance(record, dict):
                yield AnnotationRecord(path, key, record)
            else:
                yield AnnotationRecord(path, key, {}, error="malformed_record",
                                       detail=f"expected an object, got {type(record).__name__}")


def _parquet_records(path: str, name: str) -> Iterator[AnnotationRecord]:
    with fsspec.open(path, "rb") as f:
        index = 0
        for batch in pq.ParquetFile(f).iter_batches(batch_size=256):
            for row in batch.to_pylist():
                yield AnnotationRecord(path, f"{name}#{index}", row)
                index += 1


def _tar_records(path: str, name: str) -> Iterator[AnnotationRecord]:
    with fsspec.open(path, "rb") as f:
        for group in iter_tar_groups(f):
            key = f"{name}#{group.key}"
            if group.error:
                reason = group.error.split(":")[0]
                yield AnnotationRecord(path, key, {}, error=reason, detail=group.error[:500])
                continue
            if "json" not in group.members:
                if any(ext in group.members for ext in IMAGE_EXTENSIONS):
                    yield AnnotationRecord(path, key, {}, error="missing_record",
                                           detail="tar key has no .json member")
                continue  # e.g. img2dataset's per-key .txt without json: nothing to read
            try:
                record = json.loads(group.members["json"])
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                yield AnnotationRecord(path, key, {}, error="malformed_json",
                                       detail=str(error)[:500])
                continue
            if not isinstance(record, dict):
                yield AnnotationRecord(path, key, {}, error="malformed_record")
                continue
            yield AnnotationRecord(path, key, record, members=group.members)


# ---- images -------------------------------------------------------------------------------

class ImageNotFound(LookupError):
    pass


class ImageStore:
    """Finds image bytes by relative path in a folder or a tar of images (`--images`).

    A tar is indexed once per worker on first use; a path not found as given is tried by its
    base name, since annotation files often name images with a prefix the archive lacks.
    """

    def __init__(self, root: str | None):
        self.root = root
        self._tar: tarfile.TarFile | None = None
        self._index: dict[str, tarfile.TarInfo] | None = None
        self._by_base: dict[str, Any] | None = None  # base name -> TarInfo or file path

    def __getstate__(self):  # open handles stay on the worker that opened them
        return {"root": self.root, "_tar": None, "_index": None, "_by_base": None}

    def first(self, paths: list[str], annotation_uri: str = "") -> bytes | None:
        """Bytes of the first of `paths` found, or None."""
        for path in paths:
            try:
                return self.read(path, annotation_uri)
            except (ImageNotFound, OSError):
                continue
        return None

    def read(self, relative: str, annotation_uri: str = "") -> bytes:
        relative = relative.strip()
        if not relative:
            raise ImageNotFound("empty image path")
        if self.root and self.root.endswith(".tar"):
            return self._read_tar(relative)
        candidates = []
        if os.path.isabs(relative) or "://" in relative:
            candidates.append(relative)
        if self.root:
            candidates += [FileSystems.join(self.root, relative),
                           FileSystems.join(self.root, posixpath.basename(relative))]
        if annotation_uri:  # next to the annotation file, as many small sets ship
            folder = annotation_uri.rsplit("/", 1)[0] if "/" in annotation_uri else "."
            candidates.append(FileSystems.join(folder, relative))
        for candidate in candidates:
            if FileSystems.exists(candidate):
                with FileSystems.open(candidate) as f:
                    return f.read(MAX_IMAGE_BYTES + 1)
        found = self._folder_index().get(posixpath.basename(relative))
        if found is not None:
            with open(found, "rb") as f:
                return f.read(MAX_IMAGE_BYTES + 1)
        raise ImageNotFound(relative)

    def _folder_index(self) -> dict[str, str]:
        """Base name -> path under a local root folder, for sets whose images sit in
        sub-folders the records do not name (Visual Genome's VG_100K and VG_100K_2)."""
        if self._by_base is None:
            self._by_base = {}
            if self.root and "://" not in self.root and os.path.isdir(self.root):
                for folder, _, names in os.walk(self.root):
                    for name in names:
                        self._by_base.setdefault(name, os.path.join(folder, name))
        return self._by_base

    def _read_tar(self, relative: str) -> bytes:
        if self._tar is None:
            self._tar = tarfile.open(self.root, "r:*")
            members = [m for m in self._tar.getmembers() if m.isfile()]
            self._index = {_normalise(m.name): m for m in members}
            self._by_base = {posixpath.basename(m.name): m for m in members}
        member = (self._index.get(_normalise(relative))
                  or self._by_base.get(posixpath.basename(relative)))
        if member is None:
            raise ImageNotFound(relative)
        return self._tar.extractfile(member).read(MAX_IMAGE_BYTES + 1)


def _normalise(name: str) -> str:
    return posixpath.normpath(name.replace("\\", "/")).lstrip("./")


def decode_image(data: bytes) -> Image:
    """An `Image` with its real size, upright (`probe_image`: JPEG/PNG/WebP keep their bytes
    unless EXIF turns them; GIF/BMP/TIFF/AVIF are re-encoded), and fully decoded once, so that
    a truncated body is caught here. Raises ImageError (a ValueError; reason corrupt_image,
    decompression_bomb, unsupported_image_format or image_too_large) when the bytes are not a
    usable image. The size is judged from the header, before anything is decoded."""
    if len(data) > MAX_IMAGE_BYTES:
        raise ImageError("image_too_large", f"over {MAX_IMAGE_BYTES} bytes")
    image = probe_image(data)
    if image.data is data:  # re-encoded images were decoded already
        verify_decode(data)
    return image


def image_problem_of(error: ValueError) -> str:
    """The problem named by an error of `decode_image`."""
    return getattr(error, "reason", "corrupt_image")


def embedded_image_bytes(value: Any) -> bytes | None:
    """Image bytes held in a record value: raw bytes or a `{"bytes": …}` dict."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, dict) and isinstance(value.get("bytes"), (bytes, bytearray)):
        return bytes(value["bytes"])
    return None


# ---- image templates ----------------------------------------------------------------------

class ImageTemplateError(ValueError):
    """A record cannot fill the `image_template`: it lacks a field the template names, or the
    field's value does not take the template's format (`{image_id:012d}` of a string)."""

    reason = "image_template_unfilled"


def template_fields(template: str) -> list[str]:
    """The record fields a template names: `image_id` of `COCO_{image_id:012d}.jpg` ("" or a
    number for a positional field). Raises ValueError for a template `str.format` cannot read."""
    names = []
    for _, name, spec, _ in string.Formatter().parse(template):
        if name is not None:
            names.append(re.match(r"[^.\[]*", name).group())
        if spec and "{" in spec:  # `{image_id:0{width}d}`: the width is a field too
            names += template_fields(spec)
    return names


def check_image_template(template: str | None, known: dict[str, tuple[str, ...]]) -> None:
    """Raise ConfigError unless every field `template` names is one that some kind of record
    read has (`known`: record kind -> its fields), so a typo stops the run before it starts."""
    if template is None:
        return
    try:
        names = template_fields(template)
    except ValueError as error:
        raise ConfigError(f"image_template {template!r}: {error}") from None
    available = {name for fields in known.values() for name in fields}
    for name in names:
        if name not in available:
            field_text = f"field {name!r}" if name and not name.isdigit() else \
                "positional field {" + name + "}, which no record can fill"
            kinds = "; ".join(f"{kind}: {', '.join(fields)}" for kind, fields in known.items())
            raise ConfigError(f"image_template {template!r}: unknown {field_text}; fields "
                              f"available: {kinds}")


def fill_image_template(template: str, fields: dict[str, Any]) -> str:
    """The template filled from a record's fields; ImageTemplateError when it cannot be."""
    try:
        return template.format_map(fields)
    except KeyError as error:
        raise ImageTemplateError(f"image_template {template!r}: the record has no field "
                                 f"{error.args[0]!r}") from None
    except (IndexError, ValueError, TypeError, AttributeError) as error:
        raise ImageTemplateError(f"image_template {template!r}: {error}") from None


def image_paths_of(fields: dict[str, Any], template: str | None = None) -> list[str]:
    """Image paths a record may mean, most likely first: the first usual field holding a
    string; that name without refer's `_<ann_id>` suffix (`COCO_train2014_000000581857_16.jpg`
    names `COCO_train2014_000000581857.jpg`); a template such as
    `COCO_train2014_{image_id:012d}.jpg` filled from the record; VQAv2's COCO name;
    `{image_id}.jpg` (Visual Genome), `{imageId}.jpg` (GQA), `{key}.jpg` (img2dataset's file
    names, for GRIT records beside an image folder), `{id}.jpg`, and the id of a
    dict-of-records file (OCR-VQA). A template the record cannot fill raises
    ImageTemplateError: the user's template says where the image is, so it is not skipped."""
    paths = []
    for name in IMAGE_PATH_FIELDS:
        value = fields.get(name)
        if isinstance(value, dict):
            value = value.get("path")
        if isinstance(value, str) and value.strip():
            paths.append(value.strip())
            stripped = _REFER_SUFFIX.sub(r"\1\2", value.strip())
            if stripped != paths[-1]:
                paths.append(stripped)
            break
    if template:
        paths.append(fill_image_template(template, fields))
    if isinstance(fields.get("image_id"), int) and isinstance(fields.get("data_subtype"), str):
        # VQAv2 / COCO: `{"data_subtype": "train2014", "image_id": 9}` is COCO_train2014_…9.jpg
        paths.append(f"COCO_{fields['data_subtype']}_{fields['image_id']:012d}.jpg")
    for name in ("image_id", "imageId", "key", "id", "_key"):
        value = fields.get(name)
        if isinstance(value, (int, str)) and str(value).strip():
            paths += [f"{value}.jpg", f"{value}.png"]
            break
    return paths


_REFER_SUFFIX = re.compile(r"^(.*_\d{12})_\d+(\.\w+)$")


def record_image_bytes(record: AnnotationRecord) -> bytes | None:
    """The image a record carries itself: an image member of its tar key, else bytes inside
    one of its usual image fields; None when it only names one (or none)."""
    for ext in IMAGE_EXTENSIONS:
        if ext in record.members:
            return record.members[ext]
    for name in EMBEDDED_IMAGE_FIELDS:
        data = embedded_image_bytes(record.fields.get(name))
        if data is not None:
            return data
    return None


@dataclass
class LoadedImage:
    image: Image | None
    # missing_image, image_template_unfilled, corrupt_image, decompression_bomb, image_too_large
    problem: str | None = None
    detail: str = ""


def load_record_image(record: AnnotationRecord, store: ImageStore,
                      template: str | None = None, path: str | None = None) -> LoadedImage:
    """The record's image from, in order: its tar members, bytes inside the record, the paths
    it names. `path` overrides all of these (for records that name several images)."""
    data = None
    paths = [path] if path else []
    if path is None:
        data = record_image_bytes(record)
        if data is None:
            try:
                paths = image_paths_of(record.fields, template)
            except ImageTemplateError as error:
                return LoadedImage(None, error.reason, str(error)[:500])
    if data is None:
        if not paths:
            return LoadedImage(None, "missing_image", "record names no image")
        data = store.first(paths, record.uri)
        if data is None:
            return LoadedImage(None, "missing_image", f"not found: {paths[0]}"[:500])
    return loaded_image(data)


def loaded_image(data: bytes) -> LoadedImage:
    """The decoded image of the bytes, or the problem that keeps them from being one."""
    try:
        return LoadedImage(decode_image(data))
    except ValueError as error:
        return LoadedImage(None, image_problem_of(error), str(error)[:500])
