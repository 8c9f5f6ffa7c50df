"""`corpus pairs`: web image-text pairs -> captioning shards, with the rules of Appendix A.1.

A task per input unit (an img2dataset tar or Parquet, a table of image paths and captions or a
part of one, a part of a folder of captioned images), done whole by one process
(`pipelines.tasks`):

  read (image size from the header only) -> 1 aspect ratio, 2 image too small -> 3 CLIP score
  (batches of the task's survivors, decoded near the model's size) -> 4 English/Chinese
  characters, 5 emoji, 6 length, 7 HTML cleaner, 8 pattern cleaner, length again, language,
  academic tags -> the task's shards, rejects and marker

With `longest_caption_per_image` (the academic caption sets) the tasks stage their pairs and
send out only (image hash, caption length, id): the longest caption of each image is chosen over
the whole run, then each task writes its shards without the others.

`clip.after_text_rules: true` moves step 3 after the text rules, so the model scores only pairs
that survive them; the paper's order is the default.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import json
import logging
import os
import posixpath
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Iterator

import fsspec
import numpy as np
import pyarrow.parquet as pq

from corpus.config import to_mapping
from corpus.ids import sample_id
from corpus.inputs import IMAGE_FILES, InputFile, Inputs, find_inputs
from corpus.schema import Sample, Source
from corpus.shards import iter_tar_groups
from filters.base import Reject, checked, rule_reasons, set_up
from filters.benchmark_images import BenchmarkImages
from filters.image_rules import ImageError, ImageRulesConfig, decode_for_model, image_rules, \
    probe_image, verify_decode
from filters.language import LanguageRule
from filters.text_rules import AcademicTags, EnglishChineseOnly, PatternCleaner, TextLength, \
    TextRulesConfig, html_cleaner, no_emoji, remove_invisible
from pipelines.clip import ClipConfig, ClipService, load_clip, model_input_size
from pipelines.common import add_common_arguments, exclusion_guard, guarded_spec, \
    load_pipeline_config, print_summary, read_file, run_pipeline
from pipelines.run_record import RunRecord, file_inputs, task_files
from pipelines.sinks import Choice, Counts, RunSpec, ShardImages
from pipelines.tasks import plan_tasks, run_tasks, unread_tasks

log = logging.getLogger(__name__)

PIPELINE = "pairs"
TASK = "captioning"
TAR_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff")
TABLE_EXTENSIONS = (".tsv", ".jsonl", ".parquet")
GZIPPED_TAR_EXTENSIONS = (".tar.gz", ".tgz")  # read as a stream, never unpacked to disk
TAR_EXTENSIONS = (".tar",) + GZIPPED_TAR_EXTENSIONS
INPUT_EXTENSIONS = TAR_EXTENSIONS + TABLE_EXTENSIONS
CAPTION_EXTENSION = ".txt"  # KEY.txt beside KEY.jpg in a folder
PAIRS_READS = (".tar, .tar.gz, .tgz, .tsv, .jsonl and .parquet files, and folders of images with "
               "same-named .txt captions")
# Pairs per unit of a caption folder or a TSV/JSONL table: each reads its images one by one,
# so a large folder or table is cut into parts that spread over the workers.
PAIRS_PER_PART = 5000
IMAGE_COLUMNS = ("image", "image_path", "path", "file", "filepath", "file_name", "filename")
CAPTION_COLUMNS = ("caption", "text")
INLINE_IMAGE_COLUMNS = ("jpg", "png", "webp", "image")  # img2dataset's Parquet output
RULE_SETS = ("web", "academic")
MAX_MEMBER_BYTES = 64 << 20  # a larger tar member is rejected unread (an image this big is a bomb)


@dataclass
class InputConfig:
    image_column: str | None = None  # table inputs; None: the first of IMAGE_COLUMNS present
    caption_column: str | None = None  # None: the first of CAPTION_COLUMNS present
    image_root: str | None = None  # image paths are relative to this (default: the table's folder)
    tsv_header: bool = True  # False: a TSV has no header; columns are `tsv_columns`
    tsv_columns: list[str] = field(default_factory=lambda: ["image", "caption"])
    max_caption_bytes: int = 65536  # longer captions are rejected unread (caption_too_large)


@dataclass
class PairsConfig:
    image: ImageRulesConfig = field(default_factory=ImageRulesConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    text: TextRulesConfig = field(default_factory=TextRulesConfig)
    # web: steps 1-8 of A.1 and CLIP; academic: the special tags and nothing of the web steps
    # (A.1's last paragraph). The dataset's profile sets it (corpus/data/datasets.yaml).
    rule_set: str = "web"
    longest_caption_per_image: bool = False  # one caption per image (by content hash)
    input: InputConfig = field(default_factory=InputConfig)
    # one image format in the shards (a loader expects one extension per dataset): others are
    # re-encoded as written; `format: keep` writes every image as it came
    shard_images: ShardImages = field(default_factory=ShardImages)

    @property
    def clip_step(self) -> bool:
        """Step 3 runs: a model or an input score is configured, and the rules are the web's."""
        return self.clip.enabled and self.rule_set == "web"

    def validate(self) -> None:
        if self.rule_set not in RULE_SETS:
            raise ValueError(f"rule_set must be one of {RULE_SETS}, not {self.rule_set!r}")


# ---- reading ------------------------------------------------------------------------------------

class PairReader:
    """Turns one input file into Samples (image header probed, caption raw) and Rejects."""

    def __init__(self, dataset: str, config: PairsConfig):
        self.dataset, self.config = dataset, config

    def __call__(self, file: InputFile) -> Iterator[Sample | Reject]:
        name = file.path.lower()
        if isinstance(file, FolderPart):
            yield from self.read_caption_folder(file)
        elif name.endswith(TAR_EXTENSIONS):
            yield from self.read_tar(file)
        elif name.endswith(".parquet"):
            yield from self.read_parquet(file)
        elif name.endswith(".tsv"):
            yield from self.read_tsv(file)
        else:
            yield from self.read_jsonl(file)

    @property
    def line_limit(self) -> int:
        """Longest table line read whole: a caption at the limit plus room for a path."""
        return self.config.input.max_caption_bytes + 8192

    @property
    def tar_member_limits(self) -> dict[str, int]:
        """Members past these sizes are rejected unread (memory stays bounded)."""
        return {"txt": self.config.input.max_caption_bytes, "json": 16 << 20,
                "*": MAX_MEMBER_BYTES}

    # -- one pair -> Sample or Reject
    def reject(self, file: InputFile, key: str, reason: str, detail: str = "",
               text: str = "") -> Reject:
        source_key = f"{file.relative}#{key}"
        return Reject(sample_id(self.dataset, source_key), self.dataset, file.uri, source_key,
                      reason, "errored", detail[:1000], text[:2000])

    def make_sample(self, file: InputFile, key: str, image_bytes: bytes | None,
                    caption: bytes | str | None, meta: dict[str, Any]) -> Sample | Reject:
        if image_bytes is None:
            return self.reject(file, key, "missing_image", f"{key}: no image beside the caption")
        if caption is None:
            return self.reject(file, key, "missing_caption", f"{key}: no caption beside the image")
        limit = self.config.input.max_caption_bytes
        if len(caption) > limit:  # characters or bytes: either way far past any caption
            return self.reject(file, key, "caption_too_large", f"{len(caption)} > {limit}")
        if isinstance(caption, bytes):
            try:
                caption = caption.decode("utf-8")
            except UnicodeDecodeError as error:
                return self.reject(file, key, "caption_not_utf8", str(error))
        try:
            image = probe_image(image_bytes, self.config.image.max_pixels)
        except ImageError as error:
            return self.reject(file, key, error.reason, error.detail, caption)
        source_key = f"{file.relative}#{key}"
        caption = caption.strip()
        return Sample(id=sample_id(self.dataset, source_key), dataset=self.dataset, task=TASK,
                      source=Source(uri=file.uri, key=source_key,
                                    sha256=hashlib.sha256(image_bytes).hexdigest()),
                      images=[image], text=remove_invisible(caption).strip(),
                      original_text=caption, extra=meta)

    # -- img2dataset WebDataset tars: KEY.jpg + KEY.txt + KEY.json
    def read_tar(self, file: InputFile) -> Iterator[Sample | Reject]:
        gzipped = file.path.lower().endswith(GZIPPED_TAR_EXTENSIONS)
        with fsspec.open(file.path, "rb", compression="gzip" if gzipped else None) as f:
            for group in iter_tar_groups(f, self.tar_member_limits):
                if group.error:
                    reason = group.error.split(":", 1)[0]
                    yield self.reject(file, group.key or "<end>", reason, group.error)
                    continue
                if group.oversized:
                    reason = "caption_too_large" if "txt" in group.oversized else \
                        "member_too_large"
                    yield self.reject(file, group.key, reason, f"unread: {group.oversized}")
                    continue
                meta = _json_meta(group.members.get("json"))
                image = next((group.members[e] for e in TAR_IMAGE_EXTENSIONS
                              if e in group.members), None)
                caption = group.members.get("txt", meta.pop("caption", None))
                meta.pop("caption", None)
                yield self.make_sample(file, group.key, image, caption, meta)

    # -- Parquet: img2dataset's form (image bytes inline) or a table of image paths
    def read_parquet(self, file: InputFile) -> Iterator[Sample | Reject]:
        with fsspec.open(file.path, "rb") as f:
            parquet = pq.ParquetFile(f)
            names = parquet.schema_arrow.names
            inline = next((c for c in INLINE_IMAGE_COLUMNS if c in names
                           and str(parquet.schema_arrow.field(c).type) in ("binary",
                                                                           "large_binary")), None)
            img2dataset_pairs = None if inline else self.img2dataset_pairs(file, names)
            if img2dataset_pairs:
                yield from self.read_img2dataset_metadata(file, parquet, img2dataset_pairs)
                return
            if inline is None:
                columns = self.table_columns(names)
                if isinstance(columns, str):
                    yield self.reject(file, "", columns, f"columns: {names}")
                    return
            by_lower = {name.lower(): name for name in names}
            caption_column = self.config.input.caption_column or next(
                (by_lower[c] for c in CAPTION_COLUMNS if c in by_lower), None)
            row_index = 0
            for batch in parquet.iter_batches(batch_size=256):
                for row in batch.to_pylist():
                    key = str(row.get("key") or row_index) if inline else str(row_index)
                    row_index += 1
                    if inline:
                        if row.get("status") not in (None, "success"):
                            yield self.reject(file, key, "download_failed",
                                              str(row.get("error_message") or ""))
                            continue
                        meta = _scalar_meta(row, exclude={inline, caption_column})
                        yield self.make_sample(file, key, row.get(inline),
                                               row.get(caption_column), meta)
                    else:
                        yield self.table_row(file, key, row, columns)

    # -- img2dataset's own metadata: NNNNN.parquet, the status of every URL, beside the pairs
    #    that downloaded: NNNNN.tar (its webdataset format) or a folder NNNNN/ (its files format)
    @staticmethod
    def img2dataset_pairs(file: InputFile, names: list[str]) -> str | None:
        """For such a Parquet (`key`, `url`, `status`, no images): the tar or folder beside it
        that holds its pairs, else None."""
        if not {"key", "status", "url"} <= set(names) or not file.path.endswith(".parquet"):
            return None
        stem = file.path[:-len(".parquet")]
        fs = fsspec.core.url_to_fs(stem)[0]
        return next((path for path in (stem + ".tar", stem) if fs.exists(path)), None)

    def read_img2dataset_metadata(self, file: InputFile, parquet, pairs: str):
        """The failed downloads, each an errored unit; the pairs that downloaded come from the
        tar (read as a tar input of its own) or, for a folder, from KEY.jpg + KEY.txt +
        KEY.json files, read here."""
        relative = file.relative[:-len(".parquet")]
        folder = None if pairs.endswith(".tar") else InputFile(pairs, relative, file.root)
        keyed_to = folder or InputFile(pairs, relative + ".tar", file.root)
        fs = fsspec.core.url_to_fs(pairs)[0]
        members = folder_members(fs, pairs) if folder else {}
        for batch in parquet.iter_batches(batch_size=256):
            for row in batch.to_pylist():
                key = str(row["key"])
                if row["status"] != "success":
                    yield self.reject(keyed_to, key, "download_failed",
                                      f"{row['status']}: {row.get('error_message') or ''}")
                elif folder is not None:
                    yield self.folder_pair(fs, folder, members.get(key, {}), key, row)

    # -- a folder of KEY.jpg + KEY.txt (+ KEY.json): img2dataset's files format without its
    #    Parquet, or any folder of captioned images
    def read_caption_folder(self, part: FolderPart) -> Iterator[Sample | Reject]:
        """Every name of the part with an image or a caption: a pair, or a reject for the half
        that is missing."""
        fs = fsspec.core.url_to_fs(part.path)[0]
        for key, files in part.members:
            yield self.folder_pair(fs, part, {ext: (name, size) for ext, name, size in files},
                                   key, {})

    def folder_pair(self, fs, folder: InputFile, files: dict[str, tuple[str, int]], key: str,
                    row: dict) -> Sample | Reject:
        """KEY.jpg (or another image extension, any case), KEY.txt and KEY.json (`files`:
        extension -> name, size), each read only when within the size limits a tar member
        has."""
        present = {ext: name for ext, (name, _) in files.items()
                   if ext in (*TAR_IMAGE_EXTENSIONS, "txt", "json")}
        limits = self.tar_member_limits
        oversized = [name for ext, (name, size) in files.items()
                     if ext in present and size > limits.get(ext, limits["*"])]
        if oversized:
            caption_name = files.get("txt", ("",))[0]
            reason = "caption_too_large" if caption_name in oversized else "member_too_large"
            return self.reject(folder, key, reason, f"unread: {oversized}")

        def read(ext: str) -> bytes:
            return fs.cat_file(f"{folder.path.rstrip('/')}/{present[ext]}")

        image_ext = next((ext for ext in TAR_IMAGE_EXTENSIONS if ext in present), None)
        image = read(image_ext) if image_ext else None
        caption = read("txt") if "txt" in present else row.get("caption")
        meta = _json_meta(read("json")) if "json" in present else \
            _scalar_meta(row, exclude={"caption"})
        meta.pop("caption", None)
        return self.make_sample(folder, key, image, caption, meta)

    # -- tables of (image path, caption)
    def table_columns(self, names: list[str]) -> tuple[str, str] | str:
        config = self.config.input
        by_lower = {name.lower(): name for name in names}  # LAION writes TEXT, others text
        image = config.image_column or next(
            (by_lower[c] for c in IMAGE_COLUMNS if c in by_lower), None)
        caption = config.caption_column or next(
            (by_lower[c] for c in CAPTION_COLUMNS if c in by_lower), None)
        if image not in names:
            # LAION's or CC3M's metadata: links to images, not images (img2dataset fetches them)
            return "urls_not_downloaded" if "url" in by_lower else "no_image_column"
        if caption not in names:
            return "no_caption_column"
        return image, caption

    def table_row(self, file: InputFile, key: str, row: dict, columns: tuple[str, str]):
        image_column, caption_column = columns
        relative = row.get(image_column)
        if not relative:
            return self.reject(file, key, "missing_image", "empty image path")
        root = self.config.input.image_root or os.path.dirname(file.path)
        path = relative if os.path.isabs(relative) or "://" in relative else \
            os.path.join(root, relative)
        try:
            with fsspec.open(path, "rb") as f:
                image_bytes = f.read(self.config.image.max_pixels * 4 + 1)
        except (FileNotFoundError, IsADirectoryError, PermissionError) as error:
            return self.reject(file, key, "missing_image", f"{path}: {error}")
        meta = _scalar_meta(row, exclude={caption_column})
        return self.make_sample(file, key, image_bytes, row.get(caption_column), meta)

    def table_lines(self, f: BinaryIO, part: TablePart) -> Iterator[tuple[int, bytes | None]]:
        """(line number, line) of the part of a table; a line over the limit comes as None."""
        f.seek(part.start)
        return itertools.islice(enumerate(bounded_lines(f, self.line_limit), part.first_line),
                                part.lines)

    def read_tsv(self, file: InputFile) -> Iterator[Sample | Reject]:
        part = table_part(file)
        with fsspec.open(file.path, "rb") as f:
            header = None if self.config.input.tsv_header else self.config.input.tsv_columns
            whole = part.start == 0  # the part with the header line
            if header is None and not whole:
                header = f.readline(self.line_limit).rstrip(b"\r\n").decode(
                    "utf-8", errors="replace").split("\t")
            columns = None
            for line_number, raw in self.table_lines(f, part):
                if raw is None:
                    yield self.reject(file, str(line_number), "caption_too_large",
                                      f"line over {self.line_limit} bytes")
                    continue
                raw = raw.rstrip(b"\r\n")
                if header is None:
                    header = raw.decode("utf-8", errors="replace").split("\t")
                    continue
                if columns is None:
                    columns = self.table_columns(header)
                    if isinstance(columns, str):
                        if whole:  # one reject for the table, from its first part
                            yield self.reject(file, "", columns, f"header: {header}")
                        return
                key = str(line_number)
                if not raw.strip():
                    continue
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as error:
                    yield self.reject(file, key, "caption_not_utf8", str(error))
                    continue
                row = dict(zip(header, line.split("\t")))
                yield self.table_row(file, key, row, columns)

    def read_jsonl(self, file: InputFile) -> Iterator[Sample | Reject]:
        with fsspec.open(file.path, "rb") as f:
            for line_number, raw in self.table_lines(f, table_part(file)):
                key = str(line_number)
                if raw is None:
                    yield self.reject(file, key, "caption_too_large",
                                      f"line over {self.line_limit} bytes")
                    continue
                if not raw.strip():
                    continue
                try:
                    row = json.loads(raw)
                except (UnicodeDecodeError, json.JSONDecodeError) as error:
                    reason = "caption_not_utf8" if isinstance(error, UnicodeDecodeError) \
                        else "malformed_record"
                    yield self.reject(file, key, reason, str(error))
                    continue
                if not isinstance(row, dict):
                    yield self.reject(file, key, "malformed_record", "not a JSON object")
                    continue
                columns = self.table_columns(list(row))
                if isinstance(columns, str):
                    yield self.reject(file, key, columns, f"keys: {sorted(row)}")
                    continue
                yield self.table_row(file, key, row, columns)


def folder_members(fs, path: str) -> dict[str, dict[str, tuple[str, int]]]:
    """A folder's files by name before the last dot: extension (lower case) -> (file name,
    size). Listed once (one request on an object store)."""
    members: dict[str, dict[str, tuple[str, int]]] = {}
    for entry in fs.ls(path.rstrip("/"), detail=True):
        name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
        if entry.get("type") != "directory" and "." in name and not name.startswith("."):
            stem, ext = name.rsplit(".", 1)
            members.setdefault(stem, {})[ext.lower()] = (name, entry["size"])
    return members


@dataclass(frozen=True)
class FolderPart(InputFile):
    """Some of the pairs of a folder of captioned images, with their files as listed when the
    inputs were expanded."""

    members: tuple = ()  # ((key, ((extension, file name, size), ...)), ...), sorted by key


@dataclass(frozen=True)
class TablePart(InputFile):
    """The lines of a TSV or JSONL table from byte `start` on: `first_line` is the number of
    the first (the header is line 0), `lines` how many (None: to the end)."""

    start: int = 0
    first_line: int = 0
    lines: int | None = None


def table_part(file: InputFile) -> TablePart:
    """The part of a table a unit is; a whole file when it was not cut."""
    return file if isinstance(file, TablePart) else TablePart(file.path, file.relative,
                                                              file.root)


def pair_inputs(patterns: list[str], pairs_per_part: int | None = None) -> list[InputFile]:
    """The tars and tables the patterns name, and each folder holding images beside captions
    of the same name (the folder of img2dataset's files format is read through its Parquet
    instead). Folders and TSV/JSONL tables come in parts of `pairs_per_part` names or lines."""
    return find_pair_inputs(patterns, pairs_per_part).files


def find_pair_inputs(patterns: list[str], pairs_per_part: int | None = None) -> Inputs:
    """`pair_inputs`, and the files below the folders and globs that none of them reads. Images
    (named by tables and captions) and JSON (KEY.json beside KEY.jpg, img2dataset's
    NNNNN_stats.json) are read beside the units, or are img2dataset's own record, so they are
    not among those."""
    pairs_per_part = pairs_per_part or PAIRS_PER_PART
    inputs = find_inputs(patterns, INPUT_EXTENSIONS + (CAPTION_EXTENSION,), "corpus pairs",
                         PAIRS_READS, companions=IMAGE_FILES + (".json",))
    found = inputs.files
    files = [f for f in found if not f.path.lower().endswith(CAPTION_EXTENSION)]
    read_by_parquet = {f.path[:-len(".parquet")] for f in files if f.path.endswith(".parquet")}
    folders: dict[str, InputFile] = {}
    for caption in found:
        if not caption.path.lower().endswith(CAPTION_EXTENSION):
            continue
        folder = caption.path.rsplit("/", 1)[0] if "://" in caption.path else \
            os.path.dirname(caption.path)
        if folder not in folders and folder not in read_by_parquet:
            relative = posixpath.dirname(caption.relative) or posixpath.basename(caption.root)
            folders[folder] = InputFile(folder + "/", relative, caption.root)
    units: list[InputFile] = []
    for unit in sorted(files + list(folders.values()), key=lambda f: f.relative):
        if unit.path.endswith("/"):
            units += folder_parts(unit, pairs_per_part)
        elif unit.path.lower().endswith((".tsv", ".jsonl")):
            units += [TablePart(unit.path, unit.relative, unit.root, *span)
                      for span in line_spans(unit.path, pairs_per_part)]
        else:
            units.append(unit)
    if not units:
        raise FileNotFoundError(f"no pairs under {patterns}: no .tar, .tsv, .jsonl or .parquet "
                                "file, and no folder of images with same-named .txt captions")
    return Inputs(units, inputs.unread)


def folder_parts(folder: InputFile, pairs_per_part: int) -> list[FolderPart]:
    """The folder's names with an image or a caption, listed once, in parts; none when no
    .txt has an image of its name beside it (notes, not captions)."""
    members = folder_members(fsspec.core.url_to_fs(folder.path)[0], folder.path)
    if not any("txt" in files and files.keys() & set(TAR_IMAGE_EXTENSIONS)
               for files in members.values()):
        return []
    named = [(key, tuple((ext, *file) for ext, file in sorted(files.items())))
             for key, files in sorted(members.items())
             if files.keys() & {*TAR_IMAGE_EXTENSIONS, "txt"}]
    return [FolderPart(folder.path, folder.relative, folder.root,
                       tuple(named[start:start + pairs_per_part]))
            for start in range(0, len(named), pairs_per_part)]


def line_spans(path: str, lines_per_span: int) -> list[tuple[int, int, int | None]]:
    """(byte offset, first line number, lines) of runs of `lines_per_span` lines, the last one
    open-ended; found in one pass that counts newlines block by block."""
    spans, line, offset = [(0, 0)], 0, 0
    with fsspec.open(path, "rb") as f:
        while block := f.read(1 << 20):
            next_start = spans[-1][1] + lines_per_span
            if line + block.count(b"\n") >= next_start:
                position = -1
                while (position := block.find(b"\n", position + 1)) >= 0:
                    line += 1
                    if line == next_start:
                        spans.append((offset + position + 1, line))
                        next_start += lines_per_span
            else:
                line += block.count(b"\n")
            offset += len(block)
    if len(spans) > 1 and spans[-1][0] == offset:  # the file ends right after a full span
        spans.pop()
    return [(start, first, (spans[i + 1][1] - first) if i + 1 < len(spans) else None)
            for i, (start, first) in enumerate(spans)]


def _json_meta(data: bytes | None) -> dict[str, Any]:
    if not data:
        return {}
    try:
        record = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {"json_error": "unreadable KEY.json"}
    return _scalar_meta(record, exclude={"exif"}) if isinstance(record, dict) else {}


def _scalar_meta(row: dict[str, Any], exclude: set) -> dict[str, Any]:
    """Small scalar metadata (url, similarity, original size…) kept in `extra`."""
    return {k: v for k, v in row.items() if k not in exclude and v is not None
            and isinstance(v, (str, int, float, bool)) and len(str(v)) <= 1000}


def bounded_lines(f: BinaryIO, limit: int) -> Iterator[bytes | None]:
    """Lines of a binary file, with their newline; a line longer than `limit` bytes is read in
    pieces, never held whole, and comes out as None."""
    while True:
        line = f.readline(limit + 1)
        if not line:
            return
        if len(line) <= limit or line.endswith(b"\n"):
            yield line
            continue
        while line and not line.endswith(b"\n"):  # skip the rest of the long line
            line = f.readline(1 << 20)
        yield None


class CleanPairs:
    """The work of a pairs task: the pairs of one input unit through the rules of A.1 in the
    paper's order. Image rules first; CLIP (when on) scores the survivors in batches of
    `clip.batch_size` decoded near the model's size, then the text rules run on what it keeps
    (or, with `clip.after_text_rules`, CLIP scores what the text rules keep). With no model
    decoding the pixels, each kept pair is decoded once, so a truncated body cannot reach a
    shard. With `exclude` (the benchmark-image guard) every pair the rules keep is last
    compared with the excluded images; that decode, when no model decodes, is the one that
    catches a truncated body. A reader failure partway costs one errored unit
    (`unreadable_file`)."""

    def __init__(self, dataset: str, config: PairsConfig,
                 exclude: BenchmarkImages | None = None):
        self.reader, self.config = PairReader(dataset, config), config
        self.exclude = exclude
        clip = config.clip
        self.before, self.after = rules_around_clip(config)
        self.model = None
        self._model_size = None  # the model's image side, read from its config in `setup`
        self._service = None
        self._input_score = InputScore(clip.score_field, clip.threshold) \
            if config.clip_step and clip.score_field else None
        self._decode = bool(not config.clip_step or clip.score_field) and \
            config.image.verify_decode

    @property
    def _scores_with_model(self) -> bool:
        return self.config.clip_step and not self.config.clip.score_field

    @contextlib.contextmanager
    def serve(self, processes: int):
        """One CLIP model for every worker process of the step, when shared. open_clip (and
        torch) imported here once, before the workers are forked, instead of in each; the
        excluded images' index built here once, shared by the forked workers."""
        if self.exclude is not None:
            self.exclude.load()
        if self._scores_with_model:
            model_input_size(self.config.clip)
        if self._scores_with_model and self.config.clip.shared_model and processes > 1:
            self._service = ClipService(self.config.clip, processes)
            try:
                yield
            finally:
                self._service.close()
                self._service = None
        else:
            yield

    def setup(self, worker: int) -> None:
        set_up(self.before + self.after)
        if self.exclude is not None:
            self.exclude.load()
        if self._scores_with_model and self.model is None:
            self._model_size = model_input_size(self.config.clip)
            self.model = self._service.clients[worker] if self._service is not None else \
                load_clip(self.config.clip)

    def __call__(self, file: InputFile) -> Iterator[Sample | Reject | Counts]:
        batch, bins = [], Counter()
        for item in read_file(self.reader, file):
            if not isinstance(item, Reject):
                item = checked(item, self.before)
            if isinstance(item, Reject):
                yield item
            elif self._scores_with_model:
                batch.append(item)
                if len(batch) == self.config.clip.batch_size:
                    yield from self._scored(batch, bins)
                    batch = []
            else:
                yield from self._without_model(item, bins)
        if batch:
            yield from self._scored(batch, bins)
        if bins:
            yield Counts({"clip_bins": dict(bins)})

    def _without_model(self, sample: Sample, bins: Counter) -> Iterator[Sample | Reject]:
        if self._input_score is not None:
            (sample,) = self._input_score(sample)
            if isinstance(sample, Reject):
                yield sample
                return
            bins[score_bin(sample.clip_score)] += 1
        if self.exclude is not None:
            yield self.exclude.screen(sample)
            return
        if self._decode:
            try:
                verify_decode(sample.image.data)
            except ImageError as error:
                yield Reject.of(sample, error.reason, "errored", error.detail)
                return
        yield sample

    def _scored(self, batch: list[Sample], bins: Counter) -> Iterator[Sample | Reject]:
        """Decode a batch near the model's input size (draft mode), score it in one call,
        apply the threshold and the rules after CLIP. A sample that does not decode is one
        errored reject, not its batch's."""
        decoded, pixels = [], []
        for sample in batch:
            try:
                pixels.append(decode_for_model(sample.image.data, self._model_size))
            except ImageError as error:
                yield Reject.of(sample, error.reason, "errored", error.detail)
                continue
            except Exception as error:  # as filters.base.checked, for this sample only
                yield Reject.of(sample, type(error).__name__, "errored", str(error)[:1000])
                continue
            decoded.append(sample)
        if not decoded:
            return
        scores = self.model.score(np.stack(pixels), [sample.text for sample in decoded])
        threshold = self.config.clip.threshold
        for sample, score in zip(decoded, scores):
            score = round(float(score), 5)
            bins[score_bin(score)] += 1
            if score < threshold:
                yield Reject.of(sample, "clip_score_too_low", detail=f"clip_score={score}")
                continue
            kept = checked(dataclasses.replace(sample, clip_score=score), self.after)
            yield self.exclude.screen(kept) if self.exclude is not None \
                and isinstance(kept, Sample) else kept


# ---- CLIP --------------------------------------------------------------------------------------

class InputScore:
    """Step 3 from a score the input carries (e.g. LAION's `similarity`), without a model."""

    def __init__(self, field_name: str, threshold: float):
        self.field_name, self.threshold = field_name, threshold

    def __call__(self, sample: Sample):
        value = sample.extra.get(self.field_name)
        if not isinstance(value, (int, float)):
            return [Reject.of(sample, "clip_score_missing", detail=self.field_name)]
        if value < self.threshold:
            return [Reject.of(sample, "clip_score_too_low", detail=f"clip_score={value}")]
        return [dataclasses.replace(sample, clip_score=float(value))]


HISTOGRAM_BIN = 0.01  # CLIP cosine scores fall in [-1, 1]
HISTOGRAM_BINS = int(round(2 / HISTOGRAM_BIN))


def score_bin(score: float) -> str:
    """The histogram bin of a score: its 0.01 step over [-1, 1], as a string (a JSON key)."""
    return str(min(HISTOGRAM_BINS - 1, max(0, int((score + 1) / HISTOGRAM_BIN))))


def histogram_stats(counts: list[int], threshold: float) -> dict[str, Any]:
    """The report's histogram: only the span of bins that hold scores, and the threshold."""
    filled = [i for i, n in enumerate(counts) if n]
    if not filled:
        return {"name": "CLIP score", "edges": [], "counts": [], "threshold": threshold}
    first, last = filled[0], filled[-1]
    edges = [round(-1 + i * HISTOGRAM_BIN, 4) for i in range(first, last + 2)]
    return {"name": "CLIP score", "edges": edges, "counts": counts[first:last + 1],
            "threshold": threshold}


# ---- longest caption per image -------------------------------------------------------------------

def same_image(sample: Sample) -> tuple[str, tuple[int, str], str]:
    """The choice key of a pair: among the pairs of one image (same content hash) the longest
    caption is kept; ties go to the smallest id, so the choice does not depend on order."""
    return sample.source.sha256, (-len(sample.text), sample.id), sample.id


LONGEST_CAPTION = Choice(same_image, "shorter_caption_same_image")


# ---- the rules, in the paper's order ------------------------------------------------------------

def rules_around_clip(config: PairsConfig) -> tuple[list, list]:
    """The rules before the CLIP step and after it. The web's: image rules, then CLIP, then the
    text rules (or the text rules before CLIP with `clip.after_text_rules`). The academic sets'
    keep their captions as written: an empty one and one past `max_chars` go, then the
    language tag and the special tags."""
    if config.rule_set == "academic":
        text = config.text
        rules = [TextLength(1, text.max_chars)]
        if text.tag_language or text.languages:
            rules.append(LanguageRule(text.languages, text.min_language_score))
        return rules + [AcademicTags(text.academic_tags)], []
    between = config.clip_step and not config.clip.after_text_rules
    rules = text_rules(config.text)
    return image_rules(config.image) + ([] if between else rules), (rules if between else [])


def text_rules(config: TextRulesConfig) -> list:
    """Steps 4-8 of A.1, the length check again after cleaning, language."""
    rules: list = []
    if config.allowed_scripts:
        rules.append(EnglishChineseOnly(config.allow_accented_latin))
    if config.drop_emoji:
        rules.append(no_emoji)
    rules.append(TextLength(config.min_chars, config.max_chars, config.min_words,
                            config.max_words))
    if config.clean_html:
        rules.append(html_cleaner)
    if config.patterns or config.custom_patterns:
        rules.append(PatternCleaner.from_names(config.patterns, config.custom_patterns))
    if config.recheck_length_after_cleaning:
        rules.append(TextLength(config.min_chars, config.max_chars, config.min_words,
                                config.max_words, suffix="_after_cleaning"))
    if config.tag_language or config.languages:
        rules.append(LanguageRule(config.languages, config.min_language_score))
    return rules


CLIP_REASONS = ["clip_score_too_low", "clip_score_missing"]


def reason_order(config: PairsConfig) -> list[str]:
    """The drop reasons of the rules this config runs, in their order (the report's rows)."""
    before, after = rules_around_clip(config)
    clip = CLIP_REASONS if config.clip_step else []
    choice = [LONGEST_CAPTION.reason] if config.longest_caption_per_image else []
    return rule_reasons(before) + clip + rule_reasons(after) + choice


def describe_clip(pairs_config: PairsConfig) -> str:
    config = pairs_config.clip
    if config.enabled and not pairs_config.clip_step:
        return "off: the academic rule set has no CLIP step"
    if config.score_field:
        return f"on: input field {config.score_field!r}, threshold {config.threshold}"
    if config.checkpoint:
        return (f"on: open_clip {config.model} from {config.checkpoint} on {config.device}, "
                f"batch {config.batch_size}, threshold {config.threshold}")
    return "off: no clip.checkpoint configured (step 3 of A.1 skipped)"


# ---- the pipeline --------------------------------------------------------------------------------

def run_spec(output_dir: str, dataset: str, config: PairsConfig, shard_formats: list[str],
             samples_per_shard: int) -> RunSpec:
    clip = describe_clip(config)
    scored = config.clip_step

    def finish_stats(counts: dict) -> dict:
        """CLIP's status, the score histogram when a model or an input field scored the pairs,
        the languages of the kept pairs."""
        stats: dict[str, Any] = {"clip": clip}
        if scored:
            bins = counts.get("clip_bins", {})
            histogram = [bins.get(str(i), 0) for i in range(HISTOGRAM_BINS)]
            stats["histogram"] = histogram_stats(histogram, config.clip.threshold)
            stats["clip_scored"] = sum(histogram)
        stats["kept_languages"] = dict(sorted(counts.get("kept_languages", {}).items()))
        return stats

    return RunSpec(PIPELINE, dataset, TASK, output_dir, reason_order(config),
                   formats=shard_formats, samples_per_shard=samples_per_shard,
                   config=to_mapping(config), kept_counts=_kept_language,
                   finish_stats=finish_stats,
                   choice=LONGEST_CAPTION if config.longest_caption_per_image else None,
                   images=config.shard_images)


def _kept_language(sample: Sample) -> dict:
    return {"kept_languages": {sample.language or "und": 1}}


def run(inputs: list[str], output_dir: str, dataset: str, config: PairsConfig | None = None,
        beam_argv: list[str] | None = None, shard_formats: list[str] | None = None,
        samples_per_shard: int = 1000, exclude_images: str | None = None, *,
        overwrite: bool = False) -> dict[str, Any]:
    """Clean the pairs under `inputs` into `output_dir`, a task per input unit, dropping those
    whose image is a near-duplicate of one of `exclude_images` (`--exclude-images`); returns
    the report."""
    config = config or PairsConfig()
    found = find_pair_inputs(inputs)
    tasks = plan_tasks(found.files)
    tasks += unread_tasks(found.unread, len(tasks))
    log.info("corpus pairs: %d task(s); CLIP %s", len(tasks), describe_clip(config))
    spec = run_spec(output_dir, dataset, config, shard_formats or ["webdataset"],
                    samples_per_shard)
    record = RunRecord.of(spec, file_inputs(inputs, task_files(tasks),
                                            exclude_images=exclude_images))

    def build(pipeline, execution):
        # once the output folder is claimed: the guard may write its fingerprints there
        exclude = exclusion_guard(exclude_images, output_dir, beam_argv or [])
        guarded = spec
        if exclude is not None:  # the guard runs after every rule, before the choice
            reasons = list(spec.reason_order)
            choice = LONGEST_CAPTION.reason  # when the config chooses a caption per image
            reasons.insert(reasons.index(choice) if choice in reasons else len(reasons),
                           exclude.reason)
            guarded = guarded_spec(dataclasses.replace(spec, reason_order=reasons), exclude)
        run_tasks(pipeline, [guarded], CleanPairs(dataset, config, exclude), tasks, execution)

    return run_pipeline(build, beam_argv or [], output_dir, record=record, overwrite=overwrite)


def add_arguments(parser) -> None:
    add_common_arguments(parser, reads_images=True)
    parser.add_argument("--clip-checkpoint", metavar="WEIGHTS",
                        help="open_clip weights: a file, a URI, a pretrained tag of the model or "
                             "hf-hub:ORG/REPO; overrides clip.checkpoint (default: the config's "
                             "clip.checkpoint; none turns the CLIP step off)")
    parser.add_argument("--clip-device", metavar="DEVICE",
                        help="cpu, cuda or cuda:N; overrides clip.device (default: the config's, "
                             f"{ClipConfig().device})")


def main(args, beam_argv) -> int:
    config = load_pipeline_config(PairsConfig, PIPELINE, args.config, args.dataset)
    if args.clip_checkpoint or args.clip_device:
        clip = dataclasses.replace(config.clip,
                                   checkpoint=args.clip_checkpoint or config.clip.checkpoint,
                                   device=args.clip_device or config.clip.device)
        clip.validate()
        config = dataclasses.replace(config, clip=clip)
    print(f"CLIP step: {describe_clip(config)}")
    report = run(args.input, args.output, args.dataset, config, beam_argv, args.shard_formats,
                 args.samples_per_shard, exclude_images=args.exclude_images,
                 overwrite=args.overwrite)
    print_summary(report)
    return 0


def run_demo(output_dir: str, beam_argv: list[str]) -> dict[str, Any]:
    """Bundled sample pairs (every rule fires at least once) through the whole pipeline: a web
    set with CLIP (a random-init tiny model the demo writes itself) into `web/`, an academic
    set into `academic/`. Returns the totals, with each run's report under `runs`."""
    from corpus.samples.pairs import write_demo_inputs

    inputs = write_demo_inputs(os.path.join(output_dir, "inputs"))
    reports = {}
    for name, dataset, patterns in [("web", "demo", inputs.web),
                                    ("academic", "demo-academic", inputs.academic)]:
        config = load_pipeline_config(PairsConfig, PIPELINE, inputs.config_path, dataset)
        print(f"   CLIP step: {describe_clip(config)}")
        reports[name] = run(patterns, os.path.join(output_dir, name), dataset, config, beam_argv)
    totals = {key: sum(report[key] for report in reports.values())
              for key in ("input", "kept", "dropped_total", "errored_total")}
    return {"pipeline": PIPELINE, **totals, "runs": reports}
