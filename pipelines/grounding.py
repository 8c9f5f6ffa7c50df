"""`corpus grounding`: grounding annotation sets into the grounding tasks of Appendix A.3 / B.1.

- GRIT (Kosmos-2) records become "caption with grounding" samples (task `grounding`) after
  recursive-box pruning (`filters.grit`); every GRIT span and box also yields the two duality
  samples below (GRIT is among the sources of both in the paper's Table 3; `grit_duality: false`
  writes the grounding task alone).
- Region sets (RefCOCO, RefCOCO+, RefCOCOg, Visual Genome region descriptions: image + phrase +
  box) become both duality tasks: `ref_grounding` (`<ref>phrase</ref>` -> `<box>`) and
  `grounded_captioning` (`<ref>This</ref><box>` -> phrase).

Each task is written as its own run, `OUTPUT/TASK/` (shards, rejects, report.json), so a
manifest can weigh the tasks apart. The unit counted is the sample after fan-out: a RefCOCO
record with three expressions is six samples, three per task. A record that cannot be read at
all is one errored unit in the report of every task of the run.

A run task (`pipelines.tasks`) per annotation file, done whole by one process, which writes the
shards of every output task of the run from that one read:

  records -> samples of each output task (images read and decoded once per record) -> that
  task's rules (GRIT: image, caption, span checks, score, recursive-box pruning; regions:
  image, phrase, box) -> OUTPUT/TASK/ shards, rejects and marker of each output task

GRIT comes as many Parquet or tar parts and region sets as one or a few files, so a file is a
natural task: a large GRIT run has as many tasks as parts, and a single huge file is one task.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from typing import Any, Iterator

import fsspec
from apache_beam.io.filesystems import FileSystems

from corpus.config import to_mapping
from corpus.ids import sample_id
from corpus.inputs import IMAGE_FILES, InputFile, find_inputs
from corpus.schema import Image, Region, Sample, Source
from filters.base import Reject, checked, set_up
from filters.benchmark_images import REASON as BENCHMARK_IMAGE
from filters.benchmark_images import BenchmarkImages, screened
from filters.grit import GRIT_SPANS, GritScoreThreshold, GritSpansValid, PruneRecursiveBoxes, \
    scored_at_least
from filters.grounding import IMAGE_DETAIL, IMAGE_PROBLEM, empty_caption, empty_phrase, \
    image_problem, region_box_valid
from pipelines.annotations import ANY_RECORD_IMAGE_FIELDS, RECORD_EXTENSIONS, AnnotationRecord, \
    ImageStore, LoadedImage, check_image_template, iter_records, load_record_image, read_records
from pipelines.common import GuardedWork, add_common_arguments, exclusion_guard, guarded_spec, \
    load_pipeline_config, print_summary, run_pipeline
from pipelines.run_record import RunRecord, file_inputs
from pipelines.sinks import RunSpec, ShardImages
from pipelines.tasks import plan_tasks, run_tasks, unread_tasks

GRIT_TASKS = ["grounding"]
DUALITY_TASKS = ["ref_grounding", "grounded_captioning"]
# Record fields read, in the order tried (see docs/grounding.md).
PHRASE_LIST_FIELDS = ("sentences", "expressions", "phrases", "refs", "captions")
PHRASE_FIELDS = ("sent", "expression", "phrase", "ref_exp", "caption", "text")
SENTENCE_TEXT_FIELDS = ("sent", "raw", "text", "phrase")
BOX_FIELDS = ("bbox", "box", "boxes")
# The fields each kind of record names its image by (docs/grounding.md), which
# `image_template` may use (`file_name` of a refer record also comes from --coco-instances).
IMAGE_TEMPLATE_FIELDS = {
    "GRIT": ("key", "id", "url"),
    "RefCOCO/RefCOCO+/RefCOCOg": ("image_id", "ann_id", "ref_id", "file_name"),
    "Visual Genome": ("id", "image_id", "region_id"),
    "any record": ANY_RECORD_IMAGE_FIELDS,
}


@dataclass
class GroundingConfig:
    # GRIT: which span lists become `<ref>` candidates. `ref_exps` are the referring
    # expressions, which nest (the recursive boxes of A.3); `noun_chunks` their head phrases.
    span_fields: list[str] = field(default_factory=lambda: ["ref_exps"])
    # GRIT entries scored below this are removed before pruning. The paper gives no value;
    # GRIT was already filtered when it was built, so none is applied by default.
    min_score: float | None = None
    # Also emit ref_grounding / grounded_captioning from every GRIT span and box (Table 3 lists
    # GRIT among the sources of both).
    grit_duality: bool = True
    # Region sets: how `bbox`/`box` is written. RefCOCO* (refer, COCO) use [x, y, w, h].
    box_format: str = "xywh"
    # Image path when a record names none, e.g. "COCO_train2014_{image_id:012d}.jpg".
    image_template: str | None = None
    # one image format in the shards (a loader expects one extension per dataset): others are
    # re-encoded as written; `format: keep` writes every image as it came
    shard_images: ShardImages = field(default_factory=ShardImages)

    def validate(self) -> None:
        if self.box_format not in ("xywh", "xyxy"):
            raise ValueError(f"box_format must be xywh or xyxy, not {self.box_format!r}")
        unknown = set(self.span_fields) - {"ref_exps", "noun_chunks"}
        if not self.span_fields or unknown:
            raise ValueError(f"span_fields: choose from ref_exps, noun_chunks (got "
                             f"{self.span_fields})")
        check_image_template(self.image_template, IMAGE_TEMPLATE_FIELDS)


GRIT_REASONS = ["unreadable_file", "malformed_json", "other_record_kind", "malformed_record",
                "missing_image", "image_template_unfilled", "corrupt_image", "empty_caption",
                "malformed_span", "span_outside_caption", "box_outside_unit_range", "box_inverted",
                "no_grounding_spans", BENCHMARK_IMAGE]
DUALITY_REASONS = ["unreadable_file", "malformed_json", "other_record_kind", "malformed_record",
                   "no_phrases", "missing_image", "image_template_unfilled", "corrupt_image",
                   "empty_phrase", "missing_box",
                   "box_inverted", "box_outside_image", "empty_box", BENCHMARK_IMAGE]


def grit_rules(config: GroundingConfig) -> list:
    rules = [image_problem, empty_caption, GritSpansValid()]
    if config.min_score is not None:
        rules.append(GritScoreThreshold(config.min_score))
    return rules + [PruneRecursiveBoxes()]


def duality_rules() -> list:
    return [image_problem, empty_phrase, region_box_valid]


def rules_for(task: str, config: GroundingConfig) -> list:
    return grit_rules(config) if task == "grounding" else duality_rules()


def record_kind(fields: dict[str, Any]) -> str:
    """`grit` for a GRIT record, `regions` for a region-set record."""
    return "grit" if any(k in fields for k in ("ref_exps", "noun_chunks")) else "regions"


# ---- reading ------------------------------------------------------------------------------

class ReadGrounding:
    """One annotation file -> samples of every task of the run, plus record rejects (those
    count in every task of the run: their `task` is "")."""

    def __init__(self, dataset: str, config: GroundingConfig, images: str | None, kind: str,
                 coco_instances: str | None = None):
        self.dataset, self.config, self.kind = dataset, config, kind
        self.store = ImageStore(images)
        self.instances = CocoInstances(coco_instances) if coco_instances else None

    def __call__(self, file: InputFile) -> Iterator[Sample | Reject]:
        return read_records(file, self.dataset, self.samples_of)

    def samples_of(self, record: AnnotationRecord) -> Iterator[Sample | Reject]:
        kind = record_kind(record.fields)
        if kind != self.kind:  # its tasks are not written by this run: say so, count it
            yield record.reject(self.dataset, "other_record_kind", "dropped",
                                f"a {kind} record in a {self.kind} run")
        elif kind == "grit":
            yield from self.grit_samples(record)
        elif "regions" in record.fields and isinstance(record.fields["regions"], list):
            yield from self.visual_genome_samples(record)
        else:
            yield from self.region_samples(record, record.fields, record.key)

    def _load(self, record: AnnotationRecord) -> LoadedImage:
        return load_record_image(record, self.store, self.config.image_template)

    def grit_samples(self, record: AnnotationRecord) -> Iterator[Sample | Reject]:
        fields = record.fields
        caption = fields.get("caption")
        if caption is None and "txt" in record.members:
            caption = record.members["txt"].decode("utf-8", "replace")
        entries = []
        for name in self.config.span_fields:
            value = fields.get(name)
            if isinstance(value, str):  # some exports keep the lists as JSON text
                try:
                    value = json.loads(value)
                except json.JSONDecodeError:
                    yield record.reject(self.dataset, "malformed_record", "dropped",
                                        f"{name} is not JSON")
                    return
            if value is not None and not isinstance(value, list):
                yield record.reject(self.dataset, "malformed_record", "dropped",
                                    f"{name} is not a list")
                return
            entries += [list(e) if isinstance(e, (list, tuple)) else e for e in value or []]
        if not isinstance(caption, str):
            yield record.reject(self.dataset, "malformed_record", "dropped", "no caption")
            return
        loaded = self._load(record)
        sample = self._sample(record, record.key, "grounding", caption, loaded)
        sample.extra[GRIT_SPANS] = entries
        yield sample
        if self.config.grit_duality:
            for index, entry in enumerate(entries):
                yield from self._grit_duality(record, index, entry, caption, loaded)

    def _grit_duality(self, record, index, entry, caption, loaded) -> Iterator[Sample]:
        """Each GRIT span and box, written as a region-set record; invalid entries drop as
        `missing_box` / `empty_phrase` / box rules. Entries under `min_score` are left out, as
        they are before pruning."""
        if not scored_at_least(entry, self.config.min_score):
            return
        phrase, box = "", None
        if isinstance(entry, list) and len(entry) >= 6:
            try:
                start, end = int(entry[0]), int(entry[1])
                phrase = caption[start:end] if 0 <= start < end <= len(caption) else ""
                if loaded.image is not None:
                    w, h = loaded.image.width, loaded.image.height
                    box = (entry[2] * w, entry[3] * h, entry[4] * w, entry[5] * h)
            except (TypeError, ValueError):
                phrase, box = "", None
        for task in DUALITY_TASKS:
            yield self._sample(record, f"{record.key}#{index}", task, phrase, loaded, box)

    def visual_genome_samples(self, record: AnnotationRecord) -> Iterator[Sample | Reject]:
        """A Visual Genome image entry: `{"id"|"image_id", "regions": [{phrase, x, y, width,
        height}…]}`; every region is one record of the region set, sharing the image."""
        regions = record.fields["regions"]
        if not regions:
            yield record.reject(self.dataset, "no_phrases", "dropped", "an empty regions list")
            return
        image_fields = {k: v for k, v in record.fields.items() if k != "regions"}
        if "image_id" not in image_fields and "id" in image_fields:
            image_fields["image_id"] = image_fields["id"]
        loaded = None
        for index, region in enumerate(regions):
            if not isinstance(region, dict):
                yield record.reject(self.dataset, "malformed_record", "dropped",
                                    f"region {index} is not an object")
                continue
            fields = {**image_fields, **region}
            if loaded is None:
                loaded = load_record_image(
                    AnnotationRecord(record.uri, record.key, fields, record.members),
                    self.store, self.config.image_template)
            key = f"{record.key}#{region.get('region_id', index)}"
            yield from self.region_samples(record, fields, key, loaded)

    def region_samples(self, record: AnnotationRecord, fields: dict[str, Any], key: str,
                       loaded: LoadedImage | None = None) -> Iterator[Sample | Reject]:
        phrases = phrases_of(fields)
        if not phrases:
            yield record.reject(self.dataset, "no_phrases", "dropped",
                                f"no text in {', '.join(PHRASE_LIST_FIELDS + PHRASE_FIELDS)}")
            return
        if self.instances is not None and box_of(fields, self.config.box_format) is None:
            fields = self.instances.complete(fields)
        if loaded is None:
            loaded = load_record_image(
                AnnotationRecord(record.uri, record.key, fields, record.members),
                self.store, self.config.image_template)
        box = box_of(fields, self.config.box_format)
        for index, phrase in enumerate(phrases):
            phrase_key = f"{key}#{index}" if len(phrases) > 1 else key
            for task in DUALITY_TASKS:
                yield self._sample(record, phrase_key, task, phrase, loaded, box)

    def _sample(self, record: AnnotationRecord, key: str, task: str, text: str,
                loaded: LoadedImage, box=None) -> Sample:
        task_key = key if task == "grounding" else f"{key}/{task}"
        text = text.strip() if task != "grounding" else text
        regions = []
        if box is not None and task != "grounding":
            regions = [Region(kind="ref", text=text, box=box, char_start=0, char_end=len(text))]
        extra = {IMAGE_PROBLEM: loaded.problem, IMAGE_DETAIL: loaded.detail} \
            if loaded.problem else {}
        images: list[Image] = [loaded.image] if loaded.image is not None else []
        return Sample(id=sample_id(self.dataset, task_key), dataset=self.dataset, task=task,
                      source=Source(uri=record.uri, key=task_key), images=images, text=text,
                      regions=regions, extra=extra)


class CocoInstances:
    """refer's `refs` name their box by `ann_id` only; the box (`[x, y, w, h]`) and the image's
    `file_name` come from the COCO `instances.json` it was drawn from. Loaded once per worker,
    keeping only those two facts per annotation."""

    def __init__(self, path: str):
        self.path = path
        self._boxes: dict[int, list[float]] | None = None
        self._files: dict[int, str] | None = None

    def __getstate__(self):
        return {"path": self.path, "_boxes": None, "_files": None}

    def _load(self) -> None:
        with fsspec.open(self.path, "rb") as f:
            document = json.loads(f.read())
        self._boxes = {a["id"]: a["bbox"] for a in document.get("annotations", [])
                       if "id" in a and "bbox" in a}
        self._files = {i["id"]: i["file_name"] for i in document.get("images", [])
                       if "id" in i and "file_name" in i}

    def complete(self, fields: dict[str, Any]) -> dict[str, Any]:
        """The record with its box (as `x, y, width, height`) and image `file_name` filled in
        from `ann_id` and `image_id`."""
        if self._boxes is None:
            self._load()
        completed = dict(fields)
        box = self._boxes.get(fields.get("ann_id"))
        if box is not None:  # COCO's [x, y, w, h], whatever `box_format` says of the refs
            completed.update(zip(("x", "y", "width", "height"), box))
        image_file = self._files.get(fields.get("image_id"))
        if image_file is not None:
            completed["file_name"] = image_file  # the real name, not refer's `…_<ann_id>.jpg`
        return completed


def phrases_of(fields: dict[str, Any]) -> list[str]:
    """The phrases of a region-set record: a list (`sentences` of refer, as strings or
    `{sent|raw: …}`), or one string field."""
    for name in PHRASE_LIST_FIELDS:
        value = fields.get(name)
        if isinstance(value, list) and value:
            phrases = []
            for item in value:
                if isinstance(item, dict):
                    item = next((item[k] for k in SENTENCE_TEXT_FIELDS
                                 if isinstance(item.get(k), str)), None)
                if isinstance(item, str):
                    phrases.append(item)
            return phrases
    for name in PHRASE_FIELDS:
        value = fields.get(name)
        if isinstance(value, str):
            return [value]
    return []


def box_of(fields: dict[str, Any], box_format: str) -> tuple[float, float, float, float] | None:
    """The pixel box (x1, y1, x2, y2) of a region-set record, or None if it has none readable.
    Visual Genome writes `x, y, width, height` as separate fields."""
    if all(_number(fields.get(k)) for k in ("x", "y", "width", "height")) \
            and not any(k in fields for k in BOX_FIELDS):
        x, y, w, h = (float(fields[k]) for k in ("x", "y", "width", "height"))
        return (x, y, x + w, y + h)
    for name in BOX_FIELDS:
        value = fields.get(name)
        if isinstance(value, list) and len(value) == 1 and isinstance(value[0], list):
            value = value[0]  # a single box inside a list of boxes
        if isinstance(value, (list, tuple)) and len(value) == 4 and all(map(_number, value)):
            a, b, c, d = (float(v) for v in value)
            return (a, b, a + c, b + d) if box_format == "xywh" else (a, b, c, d)
    return None


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# ---- pipeline -----------------------------------------------------------------------------

def detect_kind(files: list[InputFile]) -> str:
    """`grit` or `regions`, from the first readable record of the inputs."""
    for file in files:
        for record in iter_records(file.path, file.relative):
            if not record.error:
                return record_kind(record.fields)
    return "regions"


class CleanGrounding(GuardedWork):
    """The work of a grounding run task: one annotation file read once into the samples of
    every output task, each through its task's rules, then (with `exclude`) the
    benchmark-image guard, which fingerprints each image once for all its samples."""

    def __init__(self, reader: ReadGrounding, tasks: list[str],
                 exclude: BenchmarkImages | None = None):
        self.reader = reader
        self.rules = {task: rules_for(task, reader.config) for task in tasks}
        self.exclude = exclude

    def setup(self, worker: int) -> None:
        set_up([rule for rules in self.rules.values() for rule in rules])
        if self.exclude is not None:
            self.exclude.load()

    def __call__(self, file: InputFile) -> Iterator[Sample | Reject]:
        yield from screened((item if isinstance(item, Reject) else
                             checked(item, self.rules[item.task]) for item in self.reader(file)),
                            self.exclude)


GRIT_STATS = ("spans_in", "boxes_in", "spans_kept", "boxes_kept")


def _kept_grit_counts(sample: Sample) -> dict:
    """What pruning did to a kept GRIT sample (`filters.grit.PruneRecursiveBoxes`)."""
    grit = sample.extra.get("grit", {})
    return {name: grit.get(name, 0) for name in GRIT_STATS}


def _grit_stats(counts: dict) -> dict:
    return {name: counts.get(name, 0) for name in GRIT_STATS}


def run_spec(task: str, output_dir: str, dataset: str, config: GroundingConfig, kind: str,
             shard_formats: list[str], samples_per_shard: int) -> RunSpec:
    """The output of one task of the run, in `OUTPUT/TASK/`; GRIT's report counts the spans
    and boxes its pruning kept."""
    grit = task == "grounding"
    return RunSpec("grounding", dataset, task, FileSystems.join(output_dir, task),
                   GRIT_REASONS if grit else DUALITY_REASONS, formats=shard_formats,
                   samples_per_shard=samples_per_shard,
                   config={**to_mapping(config), "kind": kind}, images=config.shard_images,
                   kept_counts=_kept_grit_counts if grit else None,
                   finish_stats=_grit_stats if grit else None)


def run(inputs: list[str], output_dir: str, dataset: str, config: GroundingConfig,
        beam_argv: list[str], images: str | None = None, kind: str = "auto",
        coco_instances: str | None = None, shard_formats: list[str] | None = None,
        samples_per_shard: int = 1000, exclude_images: str | None = None, *,
        overwrite: bool = False) -> dict[str, Any]:
    """Run the pipeline, a run task per annotation file, dropping samples whose image is a
    near-duplicate of one of `exclude_images`; returns the combined report (`tasks` holds each
    output task's report)."""
    # images beside the annotation files are read through the records that name them
    found = find_inputs(inputs, RECORD_EXTENSIONS, "corpus grounding",
                        ".json, .jsonl, .parquet and .tar annotation files, and the images they "
                        "name", companions=IMAGE_FILES)
    files = found.files
    kind = detect_kind(files) if kind == "auto" else kind
    tasks = (GRIT_TASKS + (DUALITY_TASKS if config.grit_duality else [])) if kind == "grit" \
        else list(DUALITY_TASKS)
    specs = [run_spec(task, output_dir, dataset, config, kind, shard_formats or ["webdataset"],
                      samples_per_shard) for task in tasks]
    file_tasks = plan_tasks(files)
    file_tasks += unread_tasks(found.unread, len(file_tasks))
    # each task's folder records the whole run
    record = RunRecord.of(specs[0], file_inputs(inputs, [f.path for f in files], images=images,
                                                coco_instances=coco_instances,
                                                exclude_images=exclude_images))

    def build(pipeline, execution):
        # once the output folders are claimed: the guard may write its fingerprints beside them
        exclude = exclusion_guard(exclude_images, output_dir, beam_argv)
        guarded = [guarded_spec(spec, exclude) for spec in specs]
        work = CleanGrounding(ReadGrounding(dataset, config, images, kind, coco_instances),
                              tasks, exclude)
        run_tasks(pipeline, guarded, work, file_tasks, execution)

    reports = run_pipeline(build, beam_argv, [spec.output_dir for spec in specs], record=record,
                           overwrite=overwrite)
    return combine_reports(dict(zip(tasks, reports)), dataset)


def combine_reports(reports: dict[str, dict[str, Any]], dataset: str) -> dict[str, Any]:
    """The totals over a run's tasks (a record counts in every task it feeds), the samples each
    task kept (`kept_by_task`), and each task's report under `tasks`."""
    combined = {"pipeline": "grounding", "dataset": dataset, "task": "+".join(reports),
                "input": 0, "kept": 0, "dropped_total": 0, "errored_total": 0,
                "kept_by_task": {task: report["kept"] for task, report in reports.items()},
                "dropped": {}, "errored": {}, "shards": [], "tasks": reports,
                "wall_seconds": max(r.get("wall_seconds", 0) for r in reports.values())}
    for task, report in reports.items():
        for key in ("input", "kept", "dropped_total", "errored_total"):
            combined[key] += report[key]
        for outcome in ("dropped", "errored"):
            for reason, count in report[outcome].items():
                combined[outcome][reason] = combined[outcome].get(reason, 0) + count
        combined["shards"] += [{**s, "path": f"{task}/{s['path']}"} for s in report["shards"]]
    return combined


def add_arguments(parser) -> None:
    add_common_arguments(parser, reads_images=True)
    parser.add_argument("--images", metavar="PATH",
                        help="folder or tar of images named by the records (default: none, "
                             "images come from the records or beside the annotation files)")
    parser.add_argument("--coco-instances", metavar="JSON",
                        help="COCO instances.json giving the box of refer records that name "
                             "only their ann_id (RefCOCO/RefCOCO+/RefCOCOg refs) (default: "
                             "none, such records drop as missing_box)")
    parser.add_argument("--kind", choices=["auto", "grit", "regions"], default="auto",
                        help="GRIT records or region-set records; auto: told by the first "
                             "readable record")


def main(args, beam_argv) -> int:
    config = load_pipeline_config(GroundingConfig, "grounding", args.config, args.dataset)
    report = run(args.input, args.output, args.dataset, config, beam_argv, images=args.images,
                 coco_instances=args.coco_instances,
                 kind=args.kind, shard_formats=args.shard_formats,
                 samples_per_shard=args.samples_per_shard, exclude_images=args.exclude_images,
                 overwrite=args.overwrite)
    for task, task_report in report["tasks"].items():
        print_summary({**task_report, "pipeline": f"grounding/{task}"})
    return 0


def run_demo(output_dir: str, beam_argv: list[str]) -> dict[str, Any]:
    """GRIT records (nested spans and every kind of bad entry) into `output_dir/grounding`,
    RefCOCO and Visual Genome records into `output_dir/{ref_grounding,grounded_captioning}`.
    GRIT's duality samples are left out here: the region run writes those two task folders."""
    from corpus.samples.grounding import write_grit_sample, write_region_sample

    inputs = os.path.join(output_dir, "inputs")
    grit_inputs = write_grit_sample(os.path.join(inputs, "grit"))
    region_inputs, images = write_region_sample(os.path.join(inputs, "regions"))
    config = GroundingConfig()
    grit = run(grit_inputs, output_dir, "demo-grit", replace(config, grit_duality=False),
               beam_argv)
    regions = run(region_inputs, output_dir, "demo-refs", config, beam_argv, images=images)
    return combine_reports({**grit["tasks"], **regions["tasks"]}, "demo")
