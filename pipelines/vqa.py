"""`corpus vqa`: VQA sets into VQA samples, `{question} Answer: {answer}` (Appendix A.2, B.1).

VQAv2 answers are chosen by maximum confidence (`filters.vqa`); other sets pass through. Record
forms read (docs/vqa.md lists the fields):
- VQAv2 as published: a questions file (`{"questions": […]}`) and an annotations file
  (`{"annotations": […]}`), joined on `question_id`; or both in one record (flattened exports);
- one question per record with `answer` or `answers` (GQA, DocVQA, Hugging Face exports);
- OCR-VQA's `dataset.json`: per image, parallel `questions` and `answers` lists;
- Visual Genome's `question_answers.json`: per image, a `qas` list.
The unit counted is the question, after fan-out and after the VQAv2 join.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterator

import apache_beam as beam

from corpus.config import load_config, to_mapping
from corpus.ids import sample_id
from corpus.inputs import InputFile, expand_inputs
from corpus.schema import Sample, Source
from filters.base import Reject
from filters.grounding import IMAGE_PROBLEM, image_problem
from filters.vqa import ANSWERS, ChooseAnswer, MinAnswerConfidence, empty_question
from pipelines.annotations import RECORD_EXTENSIONS, AnnotationRecord, ImageStore, LoadedImage, \
    decode_image, embedded_image_bytes, image_paths_of, image_problem_of, iter_records, \
    load_record_image
from pipelines.common import RulesStep, add_common_arguments, apply_step, count_elements, \
    print_summary, run_pipeline
from pipelines.sinks import write_run

JOIN_PART = "vqa_join_part"  # "question" | "annotation": half of a VQAv2 pair, until joined
REASON_ORDER = ["unreadable_file", "malformed_json", "malformed_record", "unmatched_annotation",
                "duplicate_question", "missing_image", "corrupt_image", "empty_question",
                "no_answer", "answer_confidence_too_low"]


@dataclass
class VqaConfig:
    # Drop questions whose chosen answer no annotator gave with at least this confidence
    # ("maybe" or "yes"). The paper keeps every question (None).
    min_answer_confidence: str | None = None
    # Image path when a record names none, e.g. "COCO_val2014_{image_id:012d}.jpg".
    image_template: str | None = None

    def validate(self) -> None:
        if self.min_answer_confidence not in (None, "no", "maybe", "yes"):
            raise ValueError("min_answer_confidence must be null, no, maybe or yes")


def rules(config: VqaConfig) -> list:
    chosen = [image_problem, empty_question, ChooseAnswer()]
    if config.min_answer_confidence:
        chosen.append(MinAnswerConfidence(config.min_answer_confidence))
    return chosen


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


class ReadVqa:
    """Step: one annotation file -> questions as samples (or VQAv2 halves to join), rejects."""

    def __init__(self, dataset: str, config: VqaConfig, images: str | None):
        self.dataset, self.config = dataset, config
        self.store = ImageStore(images)

    def __call__(self, file: InputFile) -> Iterator[Sample | Reject]:
        for record in iter_records(file.path, file.relative):
            if record.error:
                yield record.reject(self.dataset)
                continue
            yield from self.samples_of(record)

    def samples_of(self, record: AnnotationRecord) -> Iterator[Sample | Reject]:
        fields = record.fields
        if isinstance(fields.get("qas"), list):  # Visual Genome: {id, qas: [{question, answer}]}
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
            return
        if isinstance(fields.get("questions"), list):  # OCR-VQA: parallel lists per image
            questions, answers = fields["questions"], fields.get("answers")
            if not isinstance(answers, list) or len(answers) != len(questions):
                yield record.reject(self.dataset, "malformed_record", "dropped",
                                    "questions and answers differ in length")
                return
            loaded = self._load(record, fields)
            for index, (question, answer) in enumerate(zip(questions, answers)):
                yield self._sample(record, f"{record.key}#{index}",
                                   {"question": question, "answer": answer}, loaded)
            return
        has_question = _text(fields.get("question")) is not None
        has_answers = "answers" in fields or _text(fields.get("answer")) is not None
        if has_question and has_answers:
            yield self._sample(record, record.key, fields, self._load(record, fields))
        elif "question_id" in fields and (has_question or has_answers):
            yield self._join_part(record, "question" if has_question else "annotation")
        elif has_question:
            yield record.reject(self.dataset, "no_answer", "dropped")
        else:
            yield record.reject(self.dataset, "malformed_record", "dropped",
                                "no question and answer fields")

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
            extra["image_detail"] = loaded.detail
        return Sample(id=sample_id(self.dataset, key), dataset=self.dataset, task="vqa",
                      source=Source(uri=record.uri, key=key),
                      images=[loaded.image] if loaded.image else [], text=answer or "",
                      question=question.strip(), answer=answer, extra=extra)

    def _join_part(self, record: AnnotationRecord, part: str) -> Sample:
        """Half of a VQAv2 pair, carrying what the join needs: the fields, and for the
        question its image if the record holds one, else the paths to look for."""
        extra: dict[str, Any] = {
            JOIN_PART: part,
            "fields": {k: v for k, v in record.fields.items()
                       if not isinstance(v, (bytes, bytearray, dict))}}
        images = []
        if part == "question":
            extra["image_paths"] = image_paths_of(record.fields, self.config.image_template)
            if _holds_image(record):
                loaded = load_record_image(record, self.store)
                images = [loaded.image] if loaded.image else []
        return Sample(id=sample_id(self.dataset, record.key), dataset=self.dataset, task="vqa",
                      source=Source(uri=record.uri, key=record.key), images=images, extra=extra)


def _holds_image(record: AnnotationRecord) -> bool:
    return bool(record.members) or any(
        embedded_image_bytes(record.fields.get(n)) is not None for n in ("image", "img"))


class JoinVqaPair:
    """Step: (question_id, halves) -> one sample, or the reason the halves do not pair."""

    def __init__(self, dataset: str, reader: ReadVqa):
        self.dataset, self.reader = dataset, reader

    def __call__(self, element: tuple[Any, list[Sample]]) -> Iterator[Sample | Reject]:
        question_id, halves = element
        questions = sorted((s for s in halves if s.extra[JOIN_PART] == "question"),
                           key=lambda s: s.id)
        annotations = [s for s in halves if s.extra[JOIN_PART] == "annotation"]
        if not questions:
            for annotation in annotations:
                yield Reject.of(annotation, "unmatched_annotation",
                                detail=f"question_id {question_id}")
            return
        for duplicate in questions[1:]:
            yield Reject.of(duplicate, "duplicate_question", detail=f"question_id {question_id}")
        question = questions[0]
        if not annotations:
            yield Reject.of(question, "no_answer", detail="no annotation for the question")
            return
        fields = {**annotations[0].extra["fields"], **question.extra["fields"]}
        record = AnnotationRecord(question.source.uri, question.source.key, fields)
        if question.images:
            loaded = LoadedImage(question.images[0])
        else:
            data = self.reader.store.first(question.extra["image_paths"], question.source.uri)
            loaded = _decoded(data, question.extra["image_paths"])
        yield self.reader._sample(record, question.source.key, fields, loaded)


def _decoded(data: bytes | None, paths: list[str]) -> LoadedImage:
    if data is None:
        return LoadedImage(None, "missing_image", f"not found: {paths[:1]}")
    try:
        return LoadedImage(decode_image(data))
    except ValueError as error:
        return LoadedImage(None, image_problem_of(error), str(error)[:500])


def _is_join_part(sample: Sample) -> bool:
    return JOIN_PART in sample.extra


def run(inputs: list[str], output_dir: str, dataset: str, config: VqaConfig,
        beam_argv: list[str], images: str | None = None, shard_formats: list[str] | None = None,
        samples_per_shard: int = 1000) -> dict[str, Any]:
    files = expand_inputs(inputs, RECORD_EXTENSIONS)

    def build(pipeline):
        reader = ReadVqa(dataset, config, images)
        samples, reader_rejects = apply_step(
            pipeline | "Inputs" >> beam.Create(files) | "SpreadFiles" >> beam.Reshuffle(),
            "Read", reader, dataset)
        whole = samples | "Whole" >> beam.Filter(lambda s: not _is_join_part(s))
        pairs = (samples | "Halves" >> beam.Filter(_is_join_part)
                 | "KeyByQuestion" >> beam.Map(lambda s: (str(s.extra["fields"]["question_id"]), s))
                 | "GroupPairs" >> beam.GroupByKey())
        joined, join_rejects = apply_step(pairs, "Join", JoinVqaPair(dataset, reader), dataset)
        questions = (whole, joined) | "AllQuestions" >> beam.Flatten()
        questions = questions | "SpreadQuestions" >> beam.Reshuffle()
        input_count = count_elements("Input", questions, reader_rejects, join_rejects)
        kept, rule_rejects = apply_step(questions, "Rules", RulesStep(rules(config)), dataset)
        # how confident the chosen answers are; a sum per constant key, not CombineGlobally
        stats = (kept | "ConfidenceOf" >> beam.Map(
                     lambda s: (0, {s.extra.get("answer_confidence", "single_answer"): 1}))
                 | "SumConfidences" >> beam.CombinePerKey(_sum_counts)
                 | "ConfidenceStats" >> beam.Map(lambda kv: {"answer_confidence": kv[1]}))
        write_run(pipeline, kept, [reader_rejects, join_rejects, rule_rejects], input_count,
                  output_dir=output_dir, pipeline_name="vqa", dataset=dataset, task="vqa",
                  reason_order=REASON_ORDER, formats=shard_formats or ["webdataset"],
                  samples_per_shard=samples_per_shard, config=to_mapping(config), stats=stats)

    return run_pipeline(build, beam_argv, output_dir)


def _sum_counts(counts) -> dict[str, int]:
    """Sum of count dicts (inputs and partial sums alike, as Beam's combiner needs)."""
    total: dict[str, int] = {}
    for count in counts:
        for key, value in count.items():
            total[key] = total.get(key, 0) + value
    return dict(sorted(total.items()))


def add_arguments(parser) -> None:
    add_common_arguments(parser)
    parser.add_argument("--images", metavar="PATH",
                        help="folder or tar of images named by the records")


def main(args, beam_argv) -> int:
    config = load_config(VqaConfig, args.config, args.dataset)
    report = run(args.input, args.output, args.dataset, config, beam_argv, images=args.images,
                 shard_formats=args.shard_formats, samples_per_shard=args.samples_per_shard)
    print_summary(report)
    return 0


def run_demo(output_dir: str, beam_argv: list[str]) -> dict[str, Any]:
    """VQAv2 split files (with confidence ties), GQA-, OCR-VQA- and DocVQA-style records."""
    from corpus.samples.vqa import write_vqa_sample

    inputs, images = write_vqa_sample(os.path.join(output_dir, "inputs"))
    return run(inputs, output_dir, "demo-vqa", VqaConfig(), beam_argv, images=images)
