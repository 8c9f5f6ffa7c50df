"""`corpus text`: plain text -> pure-text shards (task `text`) for stage 2 and 3.

A task is a few input files, done whole by one process (`pipelines.tasks`):

  files -> Read (a document per .txt file or blank-line block, per JSONL record, per Parquet
  row; streamed, a document over `max_document_bytes` is rejected without being held) ->
  control characters removed, HTML cleaned, empty / too short / too long, language -> long
  documents split into chunks that fit `max_tokens` -> the task's shards, rejects and marker

A .txt or .jsonl file may be compressed (`.gz`, `.bz2`, `.xz`, `.zst`): it is decompressed as it
is read, and a cut or corrupt one is an `unreadable_file` after the documents read before the
damage. Any other file below an input folder or glob is an errored `unsupported_file` input.

With `deduplicate` (the default) exact duplicates are removed across the whole run: the tasks
stage their chunks and send out only (normalised-text hash of the document, document id): of
the documents sharing a hash the smallest id is kept, with all its chunks, then each task writes
its shards without the others (`Choice`, `pipelines.sinks`). A chunk carries its document's id
and hash in `extra` (`document_id`, `document_hash`), so all chunks of a document go together.

Tasks: a file is a unit; consecutive files (in input order) share a task while together they
hold at most TASK_BYTES (4 MiB: some 8 s of one core, which reads, checks and tokenizes about
0.5 MB/s) and number at most MAX_FILES_PER_TASK. So a folder of many small files (a document
per file) does not become a task, a shard and a marker per document, while a file of a few MiB
or more is a task of its own. Boundaries depend on the files' names and sizes only, never on
the workers; a file that changes size can move the boundaries after it (those tasks are then
redone on resume).

The report counts units after the fan-out: each chunk is one unit, kept or not, and each
document rejected before chunking (or unreadable input) is one unit. So a duplicate of a
document long enough to be chunked counts one `duplicate_document` per chunk (the choice is
made after chunking, where only keys travel); a short duplicate counts one.
"""
from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import json
import logging
import lzma
import os
import zlib
from typing import Any, BinaryIO, Iterator

import fsspec
import pyarrow.parquet as pq

from corpus.config import load_config, to_mapping
from corpus.ids import sample_id
from corpus.inputs import InputFile, find_inputs
from corpus.schema import Sample, Source
from filters.base import Reject, checked, set_up
from filters.language import LanguageRule
from filters.text_docs import TextDocsConfig, chunk_text, control_characters, document_html, \
    empty_document, normalized_hash
from filters.text_rules import TextLength
from pipelines.common import add_common_arguments, load_pipeline_config, print_summary, \
    read_file, run_pipeline
from pipelines.pairs import bounded_lines
from pipelines.run_record import RunRecord, file_inputs, task_files
from pipelines.sinks import Choice, RunSpec
from pipelines.tasks import Task, run_tasks, unread_tasks

log = logging.getLogger(__name__)

PIPELINE = "text"
TASK = "text"
COMPRESSIBLE_EXTENSIONS = (".txt", ".jsonl")  # read plain or compressed (COMPRESSIONS)
COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst")
TEXT_EXTENSIONS = COMPRESSIBLE_EXTENSIONS + (".parquet",) + tuple(
    extension + compression
    for extension in COMPRESSIBLE_EXTENSIONS for compression in COMPRESSIONS)
TEXT_READS = ".txt, .jsonl, .parquet, and .txt/.jsonl compressed with .gz/.bz2/.xz/.zst"
BINARY_PROBE_BYTES = 8192
# Compressed bytes a .zst stream decompresses at a time: some 4 KiB of text, and at most 32 MiB
# even for a bomb (a 4-byte block can hold 128 KiB).
ZSTD_READ_BYTES = 1024
REASON_ORDER = ["empty_document", "text_too_short", "text_too_long", "language_not_allowed",
                "language_uncertain", "duplicate_document"]
TASK_BYTES = 4 << 20  # files smaller than this share a task, up to this many bytes together
MAX_FILES_PER_TASK = 1000


# ---- reading -------------------------------------------------------------------------------------

class ZstdReader(io.RawIOBase):
    """The text of a .zst file, frame after frame, in pieces of bounded size. zstandard's own
    reader ends quietly at a cut inside a frame; this one raises EOFError there, as gzip, bz2
    and lzma do."""

    def __init__(self, f: BinaryIO):
        try:
            import zstandard  # only .zst inputs need it
        except ImportError as error:
            raise OSError("reading .zst needs the zstandard module") from error
        self.f, self.zstd_error = f, zstandard.ZstdError
        self.decompressor = zstandard.ZstdDecompressor()
        self.frame = self.decompressor.decompressobj()
        self.in_frame = False  # part of a frame was fed and it has not ended
        self.left = b""  # input read past the end of the last frame
        self.pending, self.offset = b"", 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while self.offset == len(self.pending):
            data = self.left or self.f.read(ZSTD_READ_BYTES)
            self.left = b""
            if not data:
                if self.in_frame:
                    raise EOFError("zstd file ended inside a frame")
                return 0
            if self.frame.eof:  # the next frame of a file of several
                self.frame = self.decompressor.decompressobj()
            try:
                self.pending, self.offset = self.frame.decompress(data), 0
            except self.zstd_error as error:
                raise OSError(f"corrupt zstd data: {error}") from error
            self.in_frame = not self.frame.eof
            if self.frame.eof:
                self.left = self.frame.unused_data
        size = min(len(buffer), len(self.pending) - self.offset)
        buffer[:size] = memoryview(self.pending)[self.offset:self.offset + size]
        self.offset += size
        return size


# Each wraps a raw file in a stream of the text it holds.
DECOMPRESSORS = {".gz": lambda f: gzip.GzipFile(fileobj=f), ".bz2": bz2.BZ2File,
                 ".xz": lzma.LZMAFile, ".zst": lambda f: io.BufferedReader(ZstdReader(f))}
# What a cut or corrupt compressed file raises besides OSError.
DECOMPRESSION_ERRORS = (EOFError, zlib.error, lzma.LZMAError)


def compression_of(path: str) -> str:
    """The compression suffix a path ends in; "" for plain text."""
    return next((c for c in COMPRESSIONS if path.lower().endswith(c)), "")


def decompressed(raw: BinaryIO, path: str) -> BinaryIO:
    compression = compression_of(path)
    return DECOMPRESSORS[compression](raw) if compression else raw


@contextlib.contextmanager
def open_text(path: str) -> Iterator[tuple[bytes, BinaryIO]]:
    """A file's first BINARY_PROBE_BYTES and a stream of it from the start, both decompressed
    when its name ends in a compression suffix (so the binary probe looks at the text)."""
    with fsspec.open(path, "rb") as raw:
        head = decompressed(raw, path).read(BINARY_PROBE_BYTES)
        raw.seek(0)  # a new decompressor from the start: a zstd stream cannot seek back
        yield head, decompressed(raw, path)


class TextReader:
    """One input file -> Samples (one per document) and Rejects, in bounded memory."""

    def __init__(self, dataset: str, config: TextDocsConfig):
        self.dataset, self.config = dataset, config

    def __call__(self, file: InputFile) -> Iterator[Sample | Reject]:
        try:
            yield from self.read(file)
        except DECOMPRESSION_ERRORS as error:  # what was read before the cut stays
            yield self.reject(file, "<file>", "unreadable_file",
                              f"{type(error).__name__}: {error}")

    def read(self, file: InputFile) -> Iterator[Sample | Reject]:
        if file.path.lower().endswith(".parquet"):
            yield from self.read_parquet(file)
            return
        with open_text(file.path) as (head, f):
            if b"\x00" in head:
                yield self.reject(file, "<file>", "binary_file", "NUL byte in the first 8 KiB")
                return
            if file.path.lower().removesuffix(compression_of(file.path)).endswith(".jsonl"):
                yield from self.read_jsonl(file, f)
            elif self.config.split == "file":
                data = f.read(self.config.max_document_bytes + 1)
                if len(data) > self.config.max_document_bytes:
                    yield self.reject(file, "0", "document_too_large",
                                      f"> {self.config.max_document_bytes} bytes")
                else:
                    yield self.document(file, "0", data)
            else:
                yield from self.read_blocks(file, f)

    def reject(self, file: InputFile, key: str, reason: str, detail: str = "") -> Reject:
        source_key = f"{file.relative}#{key}"
        return Reject(sample_id(self.dataset, source_key), self.dataset, file.uri, source_key,
                      reason, "errored", detail[:1000])

    def document(self, file: InputFile, key: str, data: bytes | str) -> Sample | Reject:
        if isinstance(data, bytes):
            try:
                data = data.decode("utf-8")
            except UnicodeDecodeError as error:
                return self.reject(file, key, "invalid_utf8", str(error))
        source_key = f"{file.relative}#{key}"
        return Sample(id=sample_id(self.dataset, source_key), dataset=self.dataset, task=TASK,
                      source=Source(uri=file.uri, key=source_key), text=data)

    def read_blocks(self, file: InputFile, f: BinaryIO) -> Iterator[Sample | Reject]:
        """A document per run of non-blank lines; its key is its first line number."""
        limit = self.config.max_document_bytes
        block: list[bytes] = []
        size, start, oversized = 0, 0, False
        for number, line in enumerate(bounded_lines(f, limit)):
            blank = line is not None and not line.strip()
            if blank:
                if block or oversized:
                    yield self._block(file, start, block, oversized)
                block, size, oversized = [], 0, False
                continue
            if not block and not oversized:
                start = number
            if line is None or size + len(line) > limit:
                oversized, block, size = True, [], 0  # drop what was held; skip to the next blank
                continue
            if not oversized:
                block.append(line)
                size += len(line)
        if block or oversized:
            yield self._block(file, start, block, oversized)

    def _block(self, file, start, block, oversized):
        if oversized:
            return self.reject(file, str(start), "document_too_large",
                               f"> {self.config.max_document_bytes} bytes")
        return self.document(file, str(start), b"".join(block))

    def read_jsonl(self, file: InputFile, f: BinaryIO) -> Iterator[Sample | Reject]:
        field = self.config.text_field
        for number, line in enumerate(bounded_lines(f, self.config.max_document_bytes)):
            key = str(number)
            if line is None:
                yield self.reject(file, key, "document_too_large",
                                  f"> {self.config.max_document_bytes} bytes")
                continue
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except UnicodeDecodeError as error:
                yield self.reject(file, key, "invalid_utf8", str(error))
                continue
            except json.JSONDecodeError as error:
                yield self.reject(file, key, "malformed_record", str(error))
                continue
            if not isinstance(record, dict) or not isinstance(record.get(field), str):
                yield self.reject(file, key, "no_text_field", f"no string field {field!r}")
                continue
            yield self.document(file, key, record[field])

    def read_parquet(self, file: InputFile) -> Iterator[Sample | Reject]:
        field = self.config.text_field
        with fsspec.open(file.path, "rb") as f:
            parquet = pq.ParquetFile(f)
            if field not in parquet.schema_arrow.names:
                yield self.reject(file, "<file>", "no_text_field", f"no column {field!r}")
                return
            number = 0
            for batch in parquet.iter_batches(batch_size=64, columns=[field]):
                for text in batch.column(0).to_pylist():
                    key = str(number)
                    number += 1
                    if not isinstance(text, str):
                        yield self.reject(file, key, "no_text_field", "null text")
                    elif len(text) > self.config.max_document_bytes:
                        yield self.reject(file, key, "document_too_large",
                                          f"> {self.config.max_document_bytes} characters")
                    else:
                        yield self.document(file, key, text)


# ---- rules, chunks -------------------------------------------------------------------------------

class SampledLanguageRule(LanguageRule):
    """The language rule on the first characters of a long document (fastText is linear)."""

    def __init__(self, languages, min_score, sample_chars: int):
        super().__init__(languages, min_score)
        self.sample_chars = sample_chars

    def __call__(self, sample: Sample):
        head = sample if len(sample.text) <= self.sample_chars else \
            Sample(sample.id, sample.dataset, sample.task, sample.source,
                   text=sample.text[:self.sample_chars])
        result = super().__call__(head)
        if isinstance(result, Sample):
            return Sample(**{**sample.__dict__, "language": result.language,
                             "language_score": result.language_score})
        return result


def document_rules(config: TextDocsConfig) -> list:
    rules: list = []
    if config.remove_control_characters:
        rules.append(control_characters)
    if config.clean_html:
        rules.append(document_html)
    rules.append(empty_document)
    rules.append(TextLength(config.min_chars, config.max_chars))
    rules.append(SampledLanguageRule(config.languages, config.min_language_score,
                                     config.language_sample_chars))
    return rules


class Chunker:
    """A document -> samples of at most `max_tokens - 1` tokens (room for the EOS token)."""

    def __init__(self, max_tokens: int, tokenizer: str | None):
        self.max_tokens, self.tokenizer_path = max_tokens, tokenizer
        self._tokenizer = None

    def setup(self):
        from corpus.tokens import TextTokenizer

        if self._tokenizer is None:
            self._tokenizer = TextTokenizer.load(self.tokenizer_path) if self.tokenizer_path \
                else TextTokenizer.default()

    def __call__(self, sample: Sample) -> list[Sample]:
        self.setup()
        chunks = chunk_text(sample.text, self.max_tokens - 1, self._tokenizer.count)
        if len(chunks) == 1:
            return [Sample(**{**sample.__dict__, "text": chunks[0]})]
        # every chunk names its document, by id and by the hash duplicates are found by
        document = {"chunks": len(chunks), "document_id": sample.id,
                    "document_hash": normalized_hash(sample.text)}
        return [Sample(**{**sample.__dict__,
                          "id": sample_id(sample.dataset, f"{sample.source.key}/{i}"),
                          "text": chunk, "decisions": sample.decisions + ["chunked"],
                          "extra": {**sample.extra, "chunk": i, **document}})
                for i, chunk in enumerate(chunks)]

    def __getstate__(self):
        return {"max_tokens": self.max_tokens, "tokenizer": self.tokenizer_path}

    def __setstate__(self, state):
        self.__init__(**state)


# ---- the work of a task --------------------------------------------------------------------------

class CleanText:
    """The work of a text task: the documents of one input file through the rules, each kept
    document cut into chunks. A reader failure partway costs one errored unit
    (`unreadable_file`); a chunking failure, its document."""

    def __init__(self, dataset: str, config: TextDocsConfig):
        self.reader = TextReader(dataset, config)
        self.rules = document_rules(config)
        self.chunker = Chunker(config.max_tokens, config.tokenizer)

    def setup(self, worker: int) -> None:
        set_up(self.rules)
        self.chunker.setup()

    def __call__(self, file: InputFile) -> Iterator[Sample | Reject]:
        for item in read_file(self.reader, file):
            if isinstance(item, Sample):
                item = checked(item, self.rules)
            if isinstance(item, Reject):
                yield item
            else:
                yield from self._chunks(item)

    def _chunks(self, document: Sample) -> list[Sample | Reject]:
        try:
            return self.chunker(document)
        except Exception as error:  # the dead letter of one document
            return [Reject.of(document, type(error).__name__, "errored", str(error)[:1000])]


def plan_file_tasks(files: list[InputFile]) -> list[Task]:
    """Consecutive files, as many to a task as fit in TASK_BYTES (at least one; a compressed
    file counts its compressed size)."""
    groups: list[list[InputFile]] = []
    held = 0
    for file in files:
        size = file_size(file.path)
        if not groups or held + size > TASK_BYTES or len(groups[-1]) == MAX_FILES_PER_TASK:
            groups.append([])
            held = 0
        groups[-1].append(file)
        held += size
    return [Task(i, tuple(group)) for i, group in enumerate(groups)]


def file_size(path: str) -> int:
    """A file's size; 0 when it cannot be asked (its reading reports the problem)."""
    try:
        fs, inner = fsspec.core.url_to_fs(path)
        return int(fs.size(inner) or 0)
    except Exception:  # an input the task will find unreadable
        return 0


# ---- duplicates and the report -------------------------------------------------------------------

def same_document_text(sample: Sample) -> tuple[str, str, str]:
    """The choice key of a document's samples (it, or each of its chunks): documents with the
    same normalised text form a group, and the smallest document id is kept, with every chunk
    of it."""
    document = sample.extra.get("document_id", sample.id)
    text_hash = sample.extra.get("document_hash") or normalized_hash(sample.text)
    return text_hash, document, document


EXACT_DUPLICATES = Choice(same_document_text, "duplicate_document")


def kept_counts(sample: Sample) -> dict:
    """A kept sample counts as a chunk; a document's first (or only) one counts the document."""
    chunk = sample.extra.get("chunk")
    counts: dict[str, Any] = {"chunks": 1}
    if chunk in (None, 0):
        counts["kept_documents_by_language"] = {sample.language or "und": 1}
    if chunk == 0:
        counts["chunked_documents"] = 1
    return counts


def finish_stats(counts: dict) -> dict:
    languages = dict(sorted(counts.get("kept_documents_by_language", {}).items()))
    return {"kept_documents_by_language": languages, "chunks": counts.get("chunks", 0),
            "chunked_documents": counts.get("chunked_documents", 0),
            "kept_documents": sum(languages.values())}


def run_spec(output_dir: str, dataset: str, config: TextDocsConfig, shard_formats: list[str],
             samples_per_shard: int) -> RunSpec:
    return RunSpec(PIPELINE, dataset, TASK, output_dir, REASON_ORDER, formats=shard_formats,
                   samples_per_shard=samples_per_shard, config=to_mapping(config),
                   kept_counts=kept_counts, finish_stats=finish_stats,
                   choice=EXACT_DUPLICATES if config.deduplicate else None)


def run(inputs: list[str], output_dir: str, dataset: str = "text",
        config: TextDocsConfig | None = None, beam_argv: list[str] | None = None,
        shard_formats: list[str] | None = None, samples_per_shard: int = 1000, *,
        overwrite: bool = False) -> dict[str, Any]:
    """Clean the text under `inputs` into `output_dir`; returns the report."""
    config = config or TextDocsConfig()
    found = find_inputs(inputs, TEXT_EXTENSIONS, "corpus text", TEXT_READS)
    tasks = plan_file_tasks(found.files)
    tasks += unread_tasks(found.unread, len(tasks))
    log.info("corpus text: %d task(s)", len(tasks))
    spec = run_spec(output_dir, dataset, config, shard_formats or ["webdataset"],
                    samples_per_shard)
    return run_pipeline(
        lambda pipeline, execution: run_tasks(pipeline, [spec], CleanText(dataset, config),
                                              tasks, execution),
        beam_argv or [], output_dir,
        record=RunRecord.of(spec, file_inputs(inputs, task_files(tasks))), overwrite=overwrite)


def add_arguments(parser) -> None:
    add_common_arguments(parser, dataset_default="text")


def main(args, beam_argv) -> int:
    config = load_pipeline_config(TextDocsConfig, "text", args.config, args.dataset)
    report = run(args.input, args.output, args.dataset, config, beam_argv, args.shard_formats,
                 args.samples_per_shard, overwrite=args.overwrite)
    print_summary(report)
    return 0


def run_demo(output_dir: str, beam_argv: list[str]) -> dict[str, Any]:
    from corpus.samples.text import write_demo_inputs

    inputs = write_demo_inputs(os.path.join(output_dir, "inputs"))
    config = load_config(TextDocsConfig, inputs.config_path, "demo")
    return run(inputs.patterns, output_dir, "demo", config, beam_argv)
