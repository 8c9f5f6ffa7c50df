"""`corpus sft`: dialogues into ChatML SFT samples (Appendix B.2).

Reads the conversation JSON of Qwen-VL (`conversations: [{from: user|assistant, value}]`, images
inline as `Picture N: <img>path</img>`) and LLaVA (`from: human|gpt`, `<image>` placeholders,
paths in `image`), and `messages: [{role, content}]`. Every image becomes an `<image>`
placeholder in its turn and an entry of `sample.images`, in order of appearance; the formatter
writes `Picture N: <img>…</img>` back, numbered in that order, and marks which spans carry loss:
the assistant answers and the special tokens, never role names or prompts
(`corpus.formats.format_sample`).

A task per annotation file (`pipelines.tasks`), done whole by one process:

  records (JSON, JSON Lines, Parquet, tars of KEY.json + image) -> a sample per dialogue
  (images read and decoded) -> the dialogue rules (`filters.dialogue`) -> the task's shards,
  rejects and marker

Dialogue sets ship as a few large files or as many tar/Parquet parts of a few thousand records:
either way a file is a natural task, and a large set has as many tasks as parts. A single huge
file is one task (its records are read in one pass).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Iterator

from corpus.config import to_mapping
from corpus.formats import IMAGE_PLACEHOLDER
from corpus.ids import sample_id
from corpus.inputs import IMAGE_FILES, InputFile, find_inputs
from corpus.schema import Image, Sample, Source, Turn
from filters.base import Reject, checked, set_up
from filters.benchmark_images import REASON as BENCHMARK_IMAGE
from filters.benchmark_images import BenchmarkImages, screened
from filters.dialogue import REASON_ORDER as RULE_REASONS
from filters.dialogue import dialogue_rules
from filters.grounding import IMAGE_DETAIL, IMAGE_PROBLEM
from pipelines.annotations import IMAGE_EXTENSIONS, RECORD_EXTENSIONS, AnnotationRecord, \
    ImageStore, decode_image, embedded_image_bytes, image_problem_of, read_records
from pipelines.common import GuardedWork, add_common_arguments, exclusion_guard, guarded_spec, \
    load_pipeline_config, print_summary, run_pipeline
from pipelines.run_record import RunRecord, file_inputs, task_files
from pipelines.sinks import RunSpec, ShardImages
from pipelines.tasks import plan_tasks, run_tasks, unread_tasks

ROLE_NAMES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
              "bot": "assistant", "model": "assistant", "system": "system"}
# Qwen-VL's inline image: `Picture 3: <img>path</img>` (the number is rewritten on output).
INLINE_IMAGE = re.compile(r"(?:Picture\s*\d+\s*[:：]\s*)?<img>(.*?)</img>", re.S)
REASON_ORDER = ["unreadable_file", "malformed_json", "malformed_record"] + RULE_REASONS + \
    [BENCHMARK_IMAGE]


@dataclass
class SftConfig:
    # Put LLaVA's images (named in `image`, with no `<image>` in the text) at the start of the
    # first user turn, as LLaVA's own training code does.
    images_first_when_unplaced: bool = True
    # one image format in the shards (a loader expects one extension per dataset): others are
    # re-encoded as written; `format: keep` writes every image as it came
    shard_images: ShardImages = field(default_factory=ShardImages)


def convert_turns(messages: list[Any]) -> tuple[list[Turn], list[str]] | None:
    """ChatML turns with `<image>` placeholders, and the inline image paths in order of
    appearance (Qwen-VL form). None when a message is not an object with text."""
    turns, inline_paths = [], []
    for message in messages:
        if not isinstance(message, dict):
            return None
        role = message.get("from", message.get("role"))
        content = message.get("value", message.get("content"))
        if not isinstance(role, str) or not isinstance(content, str):
            return None

        def placeholder(match: re.Match) -> str:
            inline_paths.append(match.group(1).strip())
            return IMAGE_PLACEHOLDER

        content = INLINE_IMAGE.sub(placeholder, content)
        turns.append(Turn(role=ROLE_NAMES.get(role.strip().lower(), role.strip().lower()),
                          content=content))
    return turns, inline_paths


def listed_images(fields: dict[str, Any]) -> list[Any]:
    """LLaVA's `image` (one path) or `images` (paths, or `{bytes|path}` dicts)."""
    value = fields.get("images", fields.get("image"))
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def place_images(turns: list[Turn], count: int) -> list[Turn]:
    """`count` placeholders at the start of the first user turn (LLaVA's convention)."""
    for i, turn in enumerate(turns):
        if turn.role == "user":
            content = (IMAGE_PLACEHOLDER + "\n") * count + turn.content
            return turns[:i] + [Turn(turn.role, content)] + turns[i + 1:]
    return turns


class ReadDialogues:
    """One annotation file -> one SFT sample per dialogue, plus record rejects."""

    def __init__(self, dataset: str, config: SftConfig, images: str | None):
        self.dataset, self.config = dataset, config
        self.store = ImageStore(images)

    def __call__(self, file: InputFile) -> Iterator[Sample | Reject]:
        return read_records(file, self.dataset, lambda record: [self.sample_of(record)])

    def sample_of(self, record: AnnotationRecord) -> Sample | Reject:
        messages = record.fields.get("conversations", record.fields.get("messages"))
        converted = convert_turns(messages) if isinstance(messages, list) else None
        if converted is None:
            return record.reject(self.dataset, "malformed_record", "dropped",
                                 "no conversations/messages list of {from, value}")
        turns, inline = converted
        listed = listed_images(record.fields) or [
            record.members[ext] for ext in IMAGE_EXTENSIONS if ext in record.members][:1]
        placed = sum(t.content.count(IMAGE_PLACEHOLDER) for t in turns) - len(inline)
        if listed and placed == 0 and not inline and self.config.images_first_when_unplaced:
            turns = place_images(turns, len(listed))
        images, problem, detail = self._images(record, inline + listed)
        extra = {IMAGE_PROBLEM: problem, IMAGE_DETAIL: detail} if problem else {}
        if isinstance(record.fields.get("id"), (str, int)):
            extra["source_id"] = record.fields["id"]
        text = "\n".join(f"{t.role}: {t.content}" for t in turns)
        return Sample(id=sample_id(self.dataset, record.key), dataset=self.dataset, task="sft",
                      source=Source(uri=record.uri, key=record.key), images=images, text=text,
                      turns=turns, extra=extra)

    def _images(self, record: AnnotationRecord, references: list[Any]
                ) -> tuple[list[Image], str | None, str]:
        images = []
        for reference in references:
            data = embedded_image_bytes(reference)
            if data is None:
                path = reference.get("path") if isinstance(reference, dict) else reference
                if not isinstance(path, str) or not path.strip():
                    return [], "missing_image", "an image entry names no file"
                data = self.store.first([path], record.uri)
                if data is None:
                    return [], "missing_image", f"not found: {path}"[:500]
            try:
                images.append(decode_image(data))
            except ValueError as error:
                return [], image_problem_of(error), str(error)[:500]
        return images, None, ""


class CleanDialogues(GuardedWork):
    """The work of an SFT task: the dialogues of one annotation file through the rules, then
    (with `exclude`) the benchmark-image guard: a dialogue goes when any of its images
    matches."""

    def __init__(self, dataset: str, config: SftConfig, images: str | None,
                 exclude: BenchmarkImages | None = None):
        self.reader = ReadDialogues(dataset, config, images)
        self.rules = dialogue_rules()
        self.exclude = exclude

    def setup(self, worker: int) -> None:
        set_up(self.rules)
        if self.exclude is not None:
            self.exclude.load()

    def __call__(self, file: InputFile) -> Iterator[Sample | Reject]:
        yield from screened((item if isinstance(item, Reject) else checked(item, self.rules)
                             for item in self.reader(file)), self.exclude)


def run(inputs: list[str], output_dir: str, dataset: str, config: SftConfig,
        beam_argv: list[str], images: str | None = None, shard_formats: list[str] | None = None,
        samples_per_shard: int = 1000, exclude_images: str | None = None, *,
        overwrite: bool = False) -> dict[str, Any]:
    """Dialogues under `inputs` into `output_dir`, a task per annotation file, those with an
    image that is a near-duplicate of one of `exclude_images` dropped; returns the report."""
    # images beside the dialogue files are read through the dialogues that name them
    found = find_inputs(inputs, RECORD_EXTENSIONS, "corpus sft",
                        ".json, .jsonl, .parquet and .tar dialogue files, and the images they name",
                        companions=IMAGE_FILES)
    tasks = plan_tasks(found.files)
    tasks += unread_tasks(found.unread, len(tasks))
    formats = shard_formats or ["webdataset"]
    record = RunRecord("sft", dataset, file_inputs(inputs, task_files(tasks), images=images,
                                                   exclude_images=exclude_images),
                       to_mapping(config), formats, samples_per_shard)

    def build(pipeline, execution):
        # once the output folder is claimed: the guard may write its fingerprints there
        exclude = exclusion_guard(exclude_images, output_dir, beam_argv)
        spec = guarded_spec(RunSpec("sft", dataset, "sft", output_dir, REASON_ORDER,
                                    formats=formats, samples_per_shard=samples_per_shard,
                                    config=to_mapping(config), images=config.shard_images),
                            exclude)
        work = CleanDialogues(dataset, config, images, exclude)
        run_tasks(pipeline, [spec], work, tasks, execution)

    return run_pipeline(build, beam_argv, output_dir, record=record, overwrite=overwrite)


def add_arguments(parser) -> None:
    add_common_arguments(parser, reads_images=True)
    parser.add_argument("--images", metavar="PATH",
                        help="folder or tar of the images the dialogues name (default: none, "
                             "images come from the records or beside the dialogue files)")


def main(args, beam_argv) -> int:
    config = load_pipeline_config(SftConfig, "sft", args.config, args.dataset)
    report = run(args.input, args.output, args.dataset, config, beam_argv, images=args.images,
                 shard_formats=args.shard_formats, samples_per_shard=args.samples_per_shard,
                 exclude_images=args.exclude_images, overwrite=args.overwrite)
    print_summary(report)
    return 0


def run_demo(output_dir: str, beam_argv: list[str]) -> dict[str, Any]:
    """Qwen-VL (multi-image) and LLaVA dialogues, a text-only one, and broken ones."""
    from corpus.samples.sft import write_sft_sample

    inputs, images = write_sft_sample(os.path.join(output_dir, "inputs"))
    return run(inputs, output_dir, "demo-sft", SftConfig(), beam_argv, images=images)
