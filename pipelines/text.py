"""`corpus text`: plain text -> pure-text shards (task `text`) for stage 2 and 3.

Flow: input files -> Read (a document per .txt file or blank-line block, per JSONL record, per
Parquet row; streamed, a document over `max_document_bytes` is rejected without being held) ->
control characters removed, HTML cleaned, empty / too short / too long, language -> exact
duplicates removed (GroupByKey on the normalised-text hash; the smallest id is kept) -> long
documents split into chunks that fit `max_tokens` -> shards + rejects + report.

The report counts units after the fan-out: each chunk of a kept document is one unit, and each
rejected document (or unreadable input) is one unit.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, BinaryIO, Iterator

import apache_beam as beam
import fsspec
import pyarrow.parquet as pq
from apache_beam.metrics import Metrics

from corpus.config import load_config, to_mapping
from corpus.ids import sample_id
from corpus.inputs import InputFile, expand_inputs
from corpus.schema import Sample, Source
from filters.base import Reject
from filters.language import LanguageRule
from filters.text_docs import TextDocsConfig, chunk_text, control_characters, document_html, \
    empty_document, normalized_hash
from filters.text_rules import TextLength
from pipelines.common import METRICS_NAMESPACE, RulesStep, add_common_arguments, apply_step, \
    count_elements, print_summary, run_pipeline
from pipelines.pairs import bounded_lines
from pipelines.sinks import write_run

log = logging.getLogger(__name__)

PIPELINE = "text"
TASK = "text"
TEXT_EXTENSIONS = (".txt", ".jsonl", ".parquet")
BINARY_PROBE_BYTES = 8192
REASON_ORDER = ["empty_document", "text_too_short", "text_too_long", "language_not_allowed",
                "language_uncertain", "duplicate_document"]


# ---- reading ------------------------------------------------------------------------------------

class TextReader:
    """One input file -> Samples (one per document) and Rejects, in bounded memory."""

    def __init__(self, dataset: str, config: TextDocsConfig):
        self.dataset, self.config = dataset, config

    def __call__(self, file: InputFile) -> Iterator[Sample | Reject]:
        if file.path.lower().endswith(".parquet"):
            yield from self.read_parquet(file)
            return
        with fsspec.open(file.path, "rb") as f:
            head = f.read(BINARY_PROBE_BYTES)
            if b"\x00" in head:
                yield self.reject(file, "<file>", "binary_file", "NUL byte in the first 8 KiB")
                return
            f.seek(0)
            if file.path.lower().endswith(".jsonl"):
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


class ReadText(beam.DoFn):
    """Streams one file's documents (see pipelines.pairs.ReadPairs for why not StepFn)."""

    def __init__(self, reader: TextReader):
        self.reader = reader

    def process(self, file: InputFile):
        try:
            for result in self.reader(file):
                if isinstance(result, Reject):
                    Metrics.counter(METRICS_NAMESPACE, f"errored_{result.reason}").inc()
                yield result
        except (OSError, ValueError) as error:
            Metrics.counter(METRICS_NAMESPACE, "errored_unreadable_file").inc()
            yield self.reader.reject(file, "<file>", "unreadable_file",
                                     f"{type(error).__name__}: {error}")


# ---- rules, duplicates, chunks -------------------------------------------------------------------

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


def first_of_duplicates(element):
    """Keep the smallest id of documents with the same normalised text."""
    _, samples = element
    ranked = sorted(samples, key=lambda s: s.id)
    return [ranked[0]] + [Reject.of(s, "duplicate_document", detail=f"duplicate of {ranked[0].id}")
                          for s in ranked[1:]]


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

    def __call__(self, sample: Sample):
        self.setup()
        chunks = chunk_text(sample.text, self.max_tokens - 1, self._tokenizer.count)
        if len(chunks) == 1:
            return [Sample(**{**sample.__dict__, "text": chunks[0]})]
        return [Sample(**{**sample.__dict__,
                          "id": sample_id(sample.dataset, f"{sample.source.key}/{i}"),
                          "text": chunk, "decisions": sample.decisions + ["chunked"],
                          "extra": {**sample.extra, "chunk": i, "chunks": len(chunks),
                                    "document_id": sample.id}})
                for i, chunk in enumerate(chunks)]

    def __getstate__(self):
        return {"max_tokens": self.max_tokens, "tokenizer": self.tokenizer_path}

    def __setstate__(self, state):
        self.__init__(**state)


def build(pipeline, files: list[InputFile], output_dir: str, dataset: str,
          config: TextDocsConfig, shard_formats: list[str], samples_per_shard: int) -> None:
    read = (pipeline
            | "Files" >> beam.Create(files)
            | "SpreadFiles" >> beam.Reshuffle()
            | "Read" >> beam.ParDo(ReadText(TextReader(dataset, config))))
    documents = read | "ReadDocuments" >> beam.Filter(lambda x: not isinstance(x, Reject))
    rejects = [read | "ReadRejects" >> beam.Filter(lambda x: isinstance(x, Reject))]
    documents, dropped = apply_step(documents, "DocumentRules",
                                    RulesStep(document_rules(config)), dataset)
    rejects.append(dropped)
    if config.deduplicate:
        grouped = (documents | "KeyByTextHash" >> beam.Map(lambda s: (normalized_hash(s.text), s))
                   | "GroupByText" >> beam.GroupByKey())
        documents, dropped = apply_step(grouped, "Deduplicate", first_of_duplicates, dataset)
        rejects.append(dropped)
    chunks, dropped = apply_step(documents, "Chunk",
                                 Chunker(config.max_tokens, config.tokenizer), dataset)
    rejects.append(dropped)
    input_count = count_elements("CountUnits", chunks, *rejects)
    stats = _stats(pipeline, documents, chunks)
    write_run(pipeline, chunks, rejects, input_count, output_dir=output_dir,
              pipeline_name=PIPELINE, dataset=dataset, task=TASK, reason_order=REASON_ORDER,
              formats=shard_formats, samples_per_shard=samples_per_shard,
              config=to_mapping(config), stats=stats)


def _stats(pipeline, documents, chunks):
    """Kept documents, chunks, chunked documents, languages (one dict, no side inputs)."""
    def tag(kind):
        return lambda value: (0, (kind, value))

    pieces = (
        pipeline | "StatsBase" >> beam.Create([(0, ("base", None))]),
        documents | "DocumentOnes" >> beam.Map(lambda s: (s.language or "und", 1))
        | "CountLanguages" >> beam.CombinePerKey(sum) | "TagLanguages" >> beam.Map(tag("language")),
        chunks | "ChunkOnes" >> beam.Map(lambda s: ("chunks", 1))
        | "CountChunks" >> beam.CombinePerKey(sum) | "TagChunks" >> beam.Map(tag("count")),
        chunks | "ChunkedOnes" >> beam.FlatMap(
            lambda s: [("chunked_documents", 1)] if s.extra.get("chunk") == 0 else [])
        | "CountChunked" >> beam.CombinePerKey(sum) | "TagChunked" >> beam.Map(tag("count")),
    )

    def merge(element):
        _, values = element
        stats: dict[str, Any] = {"kept_documents_by_language": {}, "chunks": 0,
                                 "chunked_documents": 0}
        for kind, value in values:
            if kind == "language":
                stats["kept_documents_by_language"][value[0]] = value[1]
            elif kind == "count":
                stats[value[0]] = value[1]
        stats["kept_documents"] = sum(stats["kept_documents_by_language"].values())
        stats["kept_documents_by_language"] = dict(sorted(
            stats["kept_documents_by_language"].items()))
        return stats

    return (pieces | "GatherStats" >> beam.Flatten() | "GroupStats" >> beam.GroupByKey()
            | "Stats" >> beam.Map(merge))


def run(inputs: list[str], output_dir: str, dataset: str = "text",
        config: TextDocsConfig | None = None, beam_argv: list[str] | None = None,
        shard_formats: list[str] | None = None, samples_per_shard: int = 1000) -> dict[str, Any]:
    config = config or TextDocsConfig()
    files = expand_inputs(inputs, TEXT_EXTENSIONS)
    return run_pipeline(
        lambda p: build(p, files, output_dir, dataset, config,
                        shard_formats or ["webdataset"], samples_per_shard),
        beam_argv or [], output_dir)


def add_arguments(parser) -> None:
    add_common_arguments(parser, dataset_default="text")


def main(args, beam_argv) -> int:
    config = load_config(TextDocsConfig, args.config, args.dataset)
    report = run(args.input, args.output, args.dataset, config, beam_argv, args.shard_formats,
                 args.samples_per_shard)
    print_summary(report)
    return 0


def run_demo(output_dir: str, beam_argv: list[str]) -> dict[str, Any]:
    from corpus.samples.text import write_demo_inputs

    inputs = write_demo_inputs(os.path.join(output_dir, "inputs"))
    config = load_config(TextDocsConfig, inputs.config_path, "demo")
    return run(inputs.patterns, output_dir, "demo", config, beam_argv)
