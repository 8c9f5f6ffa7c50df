"""`corpus vqa`: VQA sets into VQA samples, `{question} Answer: {answer}` (Appendix A.2, B.1).

VQAv2 answers are chosen by maximum confidence (`filters.vqa`); other sets pass through. Record
forms read (docs/vqa.md lists the fields):
- VQAv2 as published: a questions file (`{"questions": […]}`) and an annotations file
  (`{"annotations": […]}`), joined on `question_id`; or both in one record (flattened exports);
- one question per record with `answer` or `answers` (GQA, DocVQA, Hugging Face exports);
- OCR-VQA's `dataset.json`: per image, parallel `questions` and `answers` lists;
- Visual Genome's `question_answers.json`: per image, a `qas` list.
The unit counted is the question, after fan-out and after the VQAv2 join.

Two kinds of run task (`pipelines.tasks`), each done whole by one process, all in one run:

  file tasks, one per annotation file:
    records -> whole questions (images read and decoded) -> rules -> the task's shards
  VQAv2 halves, which one file cannot join:
    files -> ReadHalves (small records: fields, image paths; no image decoded) ->
    GroupByKey(question_id) -> a question's halves, to one of N join tasks by a hash of its id
  join tasks:
    halves -> the joined question (its image read and decoded) -> rules -> the task's shards

A file is a natural task (sets ship as a few large files or many parts). The join tasks are
numbered after the file tasks; N depends only on the input files' total size and
`samples_per_shard` (`join_task_count`), so a join task holds about a shard of VQAv2 questions
whatever the runner and its workers. A join task no question hashes to writes nothing. The
files of a run are read twice, once by their tasks and once for the halves, which are the only
records that travel through the runner.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any, Iterator

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from corpus.config import to_mapping
from corpus.ids import sample_id
from corpus.inputs import IMAGE_FILES, InputFile, find_inputs
from corpus.schema import Sample, Source
from filters.base import Reject, checked, set_up
from filters.benchmark_images import REASON as BENCHMARK_IMAGE
from filters.benchmark_images import BenchmarkImages, screened
from filters.grounding import IMAGE_DETAIL, IMAGE_PROBLEM, image_problem
from filters.vqa import ANSWERS, ChooseAnswer, MinAnswerConfidence, empty_question
from pipelines.annotations import ANY_RECORD_IMAGE_FIELDS, RECORD_EXTENSIONS, AnnotationRecord, \
    ImageStore, ImageTemplateError, LoadedImage, check_image_template, image_paths_of, \
    iter_records, load_record_image, loaded_image, read_records, record_image_bytes
from pipelines.common import GuardedWork, add_common_arguments, exclusion_guard, guarded_spec, \
    load_pipeline_config, print_summary, run_pipeline
from pipelines.run_record import RunRecord, file_inputs, task_files
from pipelines.sinks import RunSpec, ShardImages
from pipelines.tasks import Task, plan_tasks, run_tasks, unread_tasks

log = logging.getLogger(__name__)

REASON_ORDER = ["unreadable_file", "malformed_json", "malformed_record", "unmatched_annotation",
                "duplicate_question", "missing_image", "image_template_unfilled", "corrupt_image",
                "empty_question", "no_answer", "answer_confidence_too_low", BENCHMARK_IMAGE]
# The fields each record form names its image by (docs/vqa.md), which `image_template` may use.
IMAGE_TEMPLATE_FIELDS = {
    "VQAv2": ("image_id", "question_id", "data_subtype"),
    "GQA": ("imageId", "_key"),
    "DocVQA": ("image", "docId", "questionId", "ucsf_document_id", "ucsf_document_page_no"),
    "OCR-VQA": ("_key", "imageURL"),
    "Visual Genome": ("id", "image_id", "qa_id"),
    "any record": ANY_RECORD_IMAGE_FIELDS,
}
# VQAv2 holds somewhat under a kilobyte of JSON per question over its two files (ten answers
# each): join tasks get about `samples_per_shard` questions per this many input bytes.
INPUT_BYTES_PER_JOINED_QUESTION = 1024


@dataclass
class VqaConfig:
    # Drop questions whose chosen answer no annotator gave with at least this confidence
    # ("maybe" or "yes"). The paper keeps every question (None).
    min_answer_confidence: str | None = None
    # Image path when a record names none, e.g. "COCO_val2014_{image_id:012d}.jpg".
    image_template: str | None = None
    # one image format in the shards (a loader expects one extension per dataset): others are
    # re-encoded as written; `format: keep` writes every image as it came
    shard_images: ShardImages = field(default_factory=ShardImages)

    def validate(self) -> None:
        if self.min_answer_confidence not in (None, "no", "maybe", "yes"):
            raise ValueError("min_answer_confidence must be null, no, maybe or yes")
        check_image_template(self.image_template, IMAGE_TEMPLATE_FIELDS)


def rules(config: VqaConfig) -> list:
    chosen = [image_problem, empty_question, ChooseAnswer()]
    if config.min_answer_confidence:
        chosen.append(MinAnswerConfidence(config.min_answer_confidence))
    return chosen


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def join_part(fields: dict[str, Any]) -> str | None:
    """Which half of a VQAv2 pair a record is (one with a `question_id` and either the
    question or the answers): "question" or "annotation"; None for any other record."""
    if isinstance(fields.get("qas"), list) or isinstance(fields.get("questions"), list):
        return None
    has_question = _text(fields.get("question")) is not None
    has_answers = "answers" in fields or _text(fields.get("answer")) is not None
    if "question_id" not in fields or has_question == has_answers:
        return None
    return "question" if has_question else "annotation"


@dataclass
class JoinHalf:
    """Half of a VQAv2 pair until joined: the record's fields (no bytes, no nested objects),
    and for a question the paths its image may have, or the image bytes the record carries
    (decoded by the join task)."""

    part: str  # "question" | "annotation"
    uri: str
    key: str
    fields: dict
    image_paths: tuple = ()
    image: bytes | None = field(default=None, repr=False)
    image_sha256: str = ""  # stands for the carried image in the join task's fingerprint
    template_problem: str = ""  # why `image_template` gave no path: the question's reject


@dataclass
class QuestionHalves:
    """The unit of a join task: every half read for one question id, questions first, each
    kind in key order."""

    question_id: str
    halves: tuple

    @property
    def uri(self) -> str:
        return self.halves[0].uri

    @property
    def key(self) -> str:
        return self.halves[0].key


class ReadVqa:
    """One annotation file -> its whole questions as samples, and rejects (`__call__`); or
    its VQAv2 halves, for the join (`halves`)."""

    def __init__(self, dataset: str, config: VqaConfig, images: str | None):
        self.dataset, self.config = dataset, config
        self.store = ImageStore(images)

    def __call__(self, file: InputFile) -> Iterator[Sample | Reject]:
        return read_records(file, self.dataset, self.samples_of)

    def halves(self, file: InputFile) -> Iterator[tuple[str, JoinHalf]]:
        """(question id, half) of each VQAv2 half in the file. A record or file that fails
        here fails in the file's task too, which counts it."""
        try:
            for record in iter_records(file.path, file.relative):
                part = None if record.error else join_part(record.fields)
                if part is None:
                    continue
                try:
                    half = self.half_of(record, part)
                except Exception:  # the file's task makes this record its reject
                    continue
                yield str(record.fields["question_id"]), half
        except Exception as error:  # the file's task counts what it could not read
            log.warning("reading VQAv2 halves of %s stopped: %s", file.path, error)

    def samples_of(self, record: AnnotationRecord) -> Iterator[Sample | Reject]:
        fields = record.fields
        if isinstance(fields.get("qas"), list):  # Visual Genome: {id, qas: [{question, answer}]}
            yield from self._visual_genome(record)
            return
        if isinstance(fields.get("questions"), list):  # OCR-VQA: parallel lists per image
            yield from self._ocr_vqa(record)
            return
        part = join_part(fields)
        if part is not None:
            # read for the join by `halves`; made here too so that a record that cannot be
            # one is this task's reject instead of vanishing from the join
            self.half_of(record, part)
            return
        has_question = _text(fields.get("question")) is not None
        has_answers = "answers" in fields or _text(fields.get("answer")) is not None
        if has_question and has_answers:
            yield self._sample(record, record.key, fields, self._load(record, fields))
        elif has_question:
            yield record.reject(self.dataset, "no_answer", "dropped",
                                "a question with no answers or answer field")
        else:
            yield record.reject(self.dataset, "malformed_record", "dropped",
                                "no question and answer fields")

    def _visual_genome(self, record: AnnotationRecord) -> Iterator[Sample | Reject]:
        fields = record.fields
        image_fields = {k: v for k, v in fields.items() if k != "qas"}
        image_fields.setdefault("image_id", fields.get("id"))
        loaded = None
        for index, qa in enumerate(fields["qas"]):
            if not isinstance(qa, dict):
                yield record.reject(self.dataset, "malformed_record", "dropped")
                continue
            if loaded is None:
                loaded = self._load(record, {**image_fields, **qa})
            key = f"{record.key}#{qa.get('qa_id', index)}"
            yield self._sample(record, key, qa, loaded)
        if not fields["qas"]:
            yield record.reject(self.dataset, "no_answer", "dropped", "empty qas list")

    def _ocr_vqa(self, record: AnnotationRecord) -> Iterator[Sample | Reject]:
        fields = record.fields
        questions, answers = fields["questions"], fields.get("answers")
        if not isinstance(answers, list) or len(answers) != len(questions):
            yield record.reject(self.dataset, "malformed_record", "dropped",
                                "questions and answers differ in length")
            return
        loaded = self._load(record, fields)
        for index, (question, answer) in enumerate(zip(questions, answers)):
            yield self._sample(record, f"{record.key}#{index}",
                               {"question": question, "answer": answer}, loaded)

    def _load(self, record: AnnotationRecord, fields: dict[str, Any]) -> LoadedImage:
        return load_record_image(AnnotationRecord(record.uri, record.key, fields, record.members),
                                 self.store, self.config.image_template)

    def _sample(self, record: AnnotationRecord, key: str, fields: dict[str, Any],
                loaded: LoadedImage) -> Sample:
        question = _text(fields.get("question")) or ""
        extra: dict[str, Any] = {}
        answer = _text(fields.get("answer"))
        if answer is None or isinstance(fields.get("answers"), list):
            extra[ANSWERS] = fields.get("answers") if fields.get("answers") is not None \
                else ([answer] if answer is not None else [])
        if _text(fields.get("multiple_choice_answer")):
            extra["multiple_choice_answer"] = fields["multiple_choice_answer"]
        for name in ("question_id", "questionId", "qa_id"):
            if isinstance(fields.get(name), (int, str)):
                extra["question_id"] = fields[name]
                break
        if loaded.problem:
            extra[IMAGE_PROBLEM] = loaded.problem
            extra[IMAGE_DETAIL] = loaded.detail
        return Sample(id=sample_id(self.dataset, key), dataset=self.dataset, task="vqa",
                      source=Source(uri=record.uri, key=key),
                      images=[loaded.image] if loaded.image else [], text=answer or "",
                      question=question.strip(), answer=answer, extra=extra)

    def half_of(self, record: AnnotationRecord, part: str) -> JoinHalf:
        """Half of a VQAv2 pair, carrying what the join needs."""
        fields = {k: v for k, v in record.fields.items()
                  if not isinstance(v, (bytes, bytearray, dict))}
        if part != "question":
            return JoinHalf(part, record.uri, record.key, fields)
        image = record_image_bytes(record)
        paths, template_problem = (), ""
        if image is None:
            try:
                paths = tuple(image_paths_of(record.fields, self.config.image_template))
            except ImageTemplateError as error:
                template_problem = str(error)[:500]
        return JoinHalf(part, record.uri, record.key, fields, paths, image,
                        hashlib.sha256(image).hexdigest() if image is not None else "",
                        template_problem)

    # -- the join
    def joined(self, unit: QuestionHalves) -> Iterator[Sample | Reject]:
        """The question of a question id joined with its annotation, or the reasons its
        halves do not pair: an annotation without a question, a question given twice (the
        one of smallest id is kept), a question without an annotation."""
        question_id = unit.question_id
        questions = sorted((h for h in unit.halves if h.part == "question"),
                           key=lambda h: sample_id(self.dataset, h.key))
        annotations = [h for h in unit.halves if h.part == "annotation"]
        if not questions:
            for annotation in annotations:
                yield self._half_reject(annotation, "unmatched_annotation",
                                        f"question_id {question_id}")
            return
        for duplicate in questions[1:]:
            yield self._half_reject(duplicate, "duplicate_question", f"question_id {question_id}")
        question = questions[0]
        if not annotations:
            yield self._half_reject(question, "no_answer", "no annotation for the question")
            return
        fields = {**annotations[0].fields, **question.fields}
        record = AnnotationRecord(question.uri, question.key, fields)
        yield self._sample(record, question.key, fields, self._question_image(question))

    def _half_reject(self, half: JoinHalf, reason: str, detail: str) -> Reject:
        return AnnotationRecord(half.uri, half.key, {}).reject(self.dataset, reason, "dropped",
                                                               detail)

    def _question_image(self, question: JoinHalf) -> LoadedImage:
        if question.image is not None:
            return loaded_image(question.image)
        if question.template_problem:
            return LoadedImage(None, ImageTemplateError.reason, question.template_problem)
        if not question.image_paths:
            return LoadedImage(None, "missing_image", "record names no image")
        data = self.store.first(list(question.image_paths), question.uri)
        if data is None:
            return LoadedImage(None, "missing_image",
                               f"not found: {question.image_paths[0]}"[:500])
        return loaded_image(data)


class CleanVqa(GuardedWork):
    """The work of a VQA task: the whole questions of a file, or the joined questions of a
    join task, through the rules, then (with `exclude`) the benchmark-image guard."""

    def __init__(self, dataset: str, config: VqaConfig, images: str | None,
                 exclude: BenchmarkImages | None = None):
        self.reader = ReadVqa(dataset, config, images)
        self.rules = rules(config)
        self.exclude = exclude

    def setup(self, worker: int) -> None:
        set_up(self.rules)
        if self.exclude is not None:
            self.exclude.load()

    def __call__(self, unit: InputFile | QuestionHalves) -> Iterator[Sample | Reject]:
        questions = self.reader.joined(unit) if isinstance(unit, QuestionHalves) \
            else self.reader(unit)
        yield from screened((item if isinstance(item, Reject) else checked(item, self.rules)
                             for item in questions), self.exclude)


# ---- the join tasks ------------------------------------------------------------------------

def join_task_count(files: list[InputFile], samples_per_shard: int) -> int:
    """How many join tasks a run has: enough for about `samples_per_shard` questions each
    were the inputs all VQAv2 (from their sizes, listed, never read)."""
    sizes = [matched.metadata_list[0].size_in_bytes if matched.metadata_list else 0
             for matched in FileSystems.match([file.path for file in files])]
    per_task = INPUT_BYTES_PER_JOINED_QUESTION * samples_per_shard
    return max(1, math.ceil(sum(sizes) / per_task))


def join_bucket(question_id: str, buckets: int) -> int:
    """The join task of a question among `buckets`, the same on every run and runner."""
    digest = hashlib.sha256(question_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % buckets


def _question_halves(question_id: str, halves) -> QuestionHalves:
    ordered = sorted(halves, key=lambda h: (h.part != "question", h.key, h.uri))
    return QuestionHalves(question_id, tuple(ordered))


def _join_task(index: int, units) -> Task:
    return Task(index, tuple(sorted(units, key=lambda unit: unit.question_id)))


class JoinTasks(beam.PTransform):
    """(question id, half) records -> join tasks: the halves of a question meet in one unit,
    units go to `buckets` tasks (numbered from `first`) by a hash of their question id."""

    def __init__(self, first: int, buckets: int):
        super().__init__()
        self.first, self.buckets = first, buckets

    def expand(self, halves):
        first, buckets = self.first, self.buckets
        return (halves
                | "GroupHalves" >> beam.GroupByKey()
                | "Unit" >> beam.MapTuple(_question_halves)
                | "KeyByTask" >> beam.Map(
                    lambda unit: (first + join_bucket(unit.question_id, buckets), unit))
                | "GroupUnits" >> beam.GroupByKey()
                | "Task" >> beam.MapTuple(_join_task))


# ---- the pipeline ----------------------------------------------------------------------------

def _kept_confidence(sample: Sample) -> dict:
    return {"answer_confidence": {sample.extra.get("answer_confidence", "single_answer"): 1}}


def _confidence_stats(counts: dict) -> dict:
    """How confident the chosen answers of the kept questions are."""
    return {"answer_confidence": dict(sorted(counts.get("answer_confidence", {}).items()))}


def run(inputs: list[str], output_dir: str, dataset: str, config: VqaConfig,
        beam_argv: list[str], images: str | None = None, shard_formats: list[str] | None = None,
        samples_per_shard: int = 1000, exclude_images: str | None = None, *,
        overwrite: bool = False) -> dict[str, Any]:
    """Questions under `inputs` into `output_dir`: a task per annotation file, then the join
    tasks of the VQAv2 halves; those whose image is a near-duplicate of one of
    `exclude_images` dropped. Returns the report."""
    # images beside the annotation files are read through the records that name them
    found = find_inputs(inputs, RECORD_EXTENSIONS, "corpus vqa",
                        ".json, .jsonl, .parquet and .tar annotation files, and the images they "
                        "name", companions=IMAGE_FILES)
    files = found.files
    join_tasks = join_task_count(files, samples_per_shard)
    unread = unread_tasks(found.unread, len(files) + join_tasks)  # numbered after the joins
    file_tasks = plan_tasks(files) + unread
    formats = shard_formats or ["webdataset"]
    record = RunRecord("vqa", dataset, file_inputs(inputs, task_files(file_tasks), images=images,
                                                   exclude_images=exclude_images),
                       to_mapping(config), formats, samples_per_shard)

    def build(pipeline, execution):
        # once the output folder is claimed: the guard may write its fingerprints there
        exclude = exclusion_guard(exclude_images, output_dir, beam_argv)
        spec = guarded_spec(RunSpec("vqa", dataset, "vqa", output_dir, REASON_ORDER,
                                    formats=formats, samples_per_shard=samples_per_shard,
                                    config=to_mapping(config), kept_counts=_kept_confidence,
                                    finish_stats=_confidence_stats, images=config.shard_images),
                            exclude)
        work = CleanVqa(dataset, config, images, exclude)
        reads = pipeline | "FileTasks" >> beam.Create(file_tasks)
        joins = (pipeline | "Files" >> beam.Create(files) | "SpreadFiles" >> beam.Reshuffle()
                 | "ReadHalves" >> beam.FlatMap(work.reader.halves)
                 | "JoinTasks" >> JoinTasks(len(files), join_tasks))
        tasks = (reads, joins) | "AllTasks" >> beam.Flatten()
        run_tasks(pipeline, [spec], work, tasks, execution,
                  count=len(files) + join_tasks + len(unread))

    return run_pipeline(build, beam_argv, output_dir, record=record, overwrite=overwrite)


def add_arguments(parser) -> None:
    add_common_arguments(parser, reads_images=True)
    parser.add_argument("--images", metavar="PATH",
                        help="folder or tar of images named by the records (default: none, images "
                             "come from the records or beside the annotation files)")


def main(args, beam_argv) -> int:
    config = load_pipeline_config(VqaConfig, "vqa", args.config, args.dataset)
    report = run(args.input, args.output, args.dataset, config, beam_argv, images=args.images,
                 shard_formats=args.shard_formats, samples_per_shard=args.samples_per_shard,
                 exclude_images=args.exclude_images, overwrite=args.overwrite)
    print_summary(report)
    return 0


def run_demo(output_dir: str, beam_argv: list[str]) -> dict[str, Any]:
    """VQAv2 split files (with confidence ties), GQA-, OCR-VQA- and DocVQA-style records."""
    from corpus.samples.vqa import write_vqa_sample

    inputs, images = write_vqa_sample(os.path.join(output_dir, "inputs"))
    return run(inputs, output_dir, "demo-vqa", VqaConfig(), beam_argv, images=images)
