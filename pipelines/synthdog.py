"""`corpus synthdog`: SynthDoG synthetic documents as OCR samples with a quad per text line (A.4).

Its inputs are resources every sample draws from (fonts, a text corpus, background and paper
images), never an input file per sample: sample `i` of a run is made from (seed, i) alone, so
any range of indices can be rendered anywhere, in any order, and gives the same images. A task
is a contiguous range of indices (`IndexRange`), done whole by one process (`pipelines.tasks`):

  indices [start, start + count) -> ranges -> per index: render + JPEG -> the task's shard,
  rejects and marker -> report (sums of the kept samples' line counts, the template's inventory)

A range holds ceil(count / 256) indices, at most `samples_per_shard`: a small run still has up
to 256 tasks to spread over a many-core machine (a task of one image costs about 1 % more than
rendering it), and a large one writes shards of `samples_per_shard` images. The ranges depend on
the count and the shard size only, never on the workers.

Each process builds the template once (`setup`); the process that starts the run has already
built one for the report's inventory (and to fail before anything runs), which its own work and
the workers it forks reuse. Each index is one input unit: kept, dropped `no_text_placed` (the
layout fitted no line), or errored (e.g. `unreadable_background`, a background file that passed
the header check but does not decode; any other exception on an index errs that index only).
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
from dataclasses import dataclass
from typing import Any, Iterator

from corpus.config import ConfigError, to_mapping
from corpus.ids import sample_id
from corpus.schema import Image, Region, Sample, Source
from filters.base import Reject
from pipelines.common import add_common_arguments, load_pipeline_config, print_summary, run_pipeline
from pipelines.run_record import RunRecord
from pipelines.sinks import RunSpec
from pipelines.tasks import Task, run_tasks
from renderers.synthdog.config import SynthDogConfig
from renderers.synthdog.fonts import FontError
from renderers.synthdog.template import SynthDoG, encode_jpeg, render
from renderers.synthdog.text_source import CorpusError
from renderers.synthdog.textures import TextureError

PIPELINE = "synthdog"
TASK = "ocr"
REASONS = ["no_text_placed", "unreadable_background"]
# Enough tasks to spread a small run over many cores; a task holds at most samples_per_shard.
MIN_TASKS = 256
STAT_KEYS = ("lines", "chars_skipped_missing_glyph", "lines_outside_image", "en", "zh")


@dataclass(frozen=True)
class SynthIndex:
    """One requested sample; `uri`/`key` name it in rejects."""

    index: int
    seed: int
    lang: str

    @property
    def key(self) -> str:
        return f"{self.lang}/{self.seed}/{self.index}"

    @property
    def uri(self) -> str:
        return f"synthdog://{self.key}"


@dataclass(frozen=True)
class IndexRange:
    """Indices [start, stop) of the run seeded `seed`: the unit of a task."""

    start: int
    stop: int
    seed: int
    lang: str

    @property
    def key(self) -> str:
        return f"{self.lang}/{self.seed}/{self.start}-{self.stop}"

    @property
    def uri(self) -> str:
        return f"synthdog://{self.key}"

    def indices(self) -> Iterator[SynthIndex]:
        for index in range(self.start, self.stop):
            yield SynthIndex(index, self.seed, self.lang)


def task_size(count: int, samples_per_shard: int) -> int:
    """Indices per task: at least MIN_TASKS tasks while they hold under samples_per_shard."""
    return max(1, min(samples_per_shard, -(-count // MIN_TASKS)))


def plan_ranges(start: int, count: int, seed: int, lang: str,
                samples_per_shard: int) -> list[Task]:
    size = task_size(count, samples_per_shard)
    stop = start + count
    return [Task(i, (IndexRange(first, min(first + size, stop), seed, lang),))
            for i, first in enumerate(range(start, stop, size))]


# ---- the template, once per process --------------------------------------------------------------

_built: dict[str, SynthDoG] = {}  # the run's template, by config, while the run lasts


def _config_key(config: SynthDogConfig) -> str:
    return json.dumps(to_mapping(config), sort_keys=True, default=str)


@contextlib.contextmanager
def shared_template(config: SynthDogConfig) -> Iterator[SynthDoG]:
    """The template built here for the run, found by the run's work in this process and in the
    workers forked from it (building one takes 1 to 1.7 s of CPU, two or three images' worth).
    Dropped when the run ends: a later run reads its fonts and textures again."""
    key = _config_key(config)
    _built[key] = SynthDoG(config)
    try:
        yield _built[key]
    finally:
        _built.pop(key, None)


def template_for(config: SynthDogConfig) -> SynthDoG:
    built = _built.get(_config_key(config))
    return built if built is not None else SynthDoG(config)


# ---- the work ------------------------------------------------------------------------------------

class RenderSynthDog:
    """The work of a synthdog task: each index of its range -> one OCR sample or a reject."""

    def __init__(self, config: SynthDogConfig, dataset: str):
        self.config, self.dataset = config, dataset
        self.template = None

    def setup(self, worker: int) -> None:
        if self.template is None:
            self.template = template_for(self.config)

    def __getstate__(self):
        return {**self.__dict__, "template": None}  # each process has its own (`setup`)

    def __call__(self, unit: IndexRange) -> Iterator[Sample | Reject]:
        for item in unit.indices():
            yield self.render_one(item)

    def render_one(self, item: SynthIndex) -> Sample | Reject:
        uid = sample_id(self.dataset, item.key)
        try:
            data = render(self.template, item.seed, item.index)
            if not data["lines"]:
                return Reject(uid, self.dataset, item.uri, item.key, "no_text_placed")
            return to_sample(data, item, uid, self.dataset)
        except TextureError as error:
            return Reject(uid, self.dataset, item.uri, item.key, "unreadable_background",
                          "errored", str(error)[:1000])
        except Exception as error:  # the dead letter of one index
            return Reject(uid, self.dataset, item.uri, item.key, type(error).__name__,
                          "errored", str(error)[:1000])


def to_sample(data: dict, item: SynthIndex, uid: str, dataset: str) -> Sample:
    height, width = data["image"].shape[:2]
    lines = data["lines"]
    return Sample(
        id=uid, dataset=dataset, task=TASK, source=Source(uri=item.uri, key=item.key),
        images=[Image(encode_jpeg(data["image"], data["quality"]), "jpeg", width, height)],
        # SynthDoG's own label: the lines' text joined by spaces.
        text=" ".join(line["text"] for line in lines),
        regions=[Region(kind="line", text=line["text"], quad=line["quad"]) for line in lines],
        language=data["language"],
        extra={"seed": item.seed, "index": item.index, "jpeg_quality": data["quality"],
               "paper_quad": data["roi"], "fonts": sorted({line["font"] for line in lines}),
               "chars_skipped_missing_glyph": data["chars_skipped"],
               "lines_outside_image": data["lines_outside"]},
    )


# ---- the report ----------------------------------------------------------------------------------

def sample_stats(sample: Sample) -> dict[str, int]:
    """What a kept sample adds to the report's stats."""
    return {"lines": len(sample.regions),
            "chars_skipped_missing_glyph": sample.extra["chars_skipped_missing_glyph"],
            "lines_outside_image": sample.extra["lines_outside_image"],
            sample.language: 1}


def stats_with(inventory: dict):
    def finish_stats(counts: dict) -> dict:
        """The sums over kept samples (every STAT_KEYS entry, zero when nothing was kept),
        then the template's inventory."""
        return {**dict.fromkeys(STAT_KEYS, 0), **counts, "inventory": inventory}
    return finish_stats


def run(output_dir: str, dataset: str, config: SynthDogConfig, beam_argv: list[str], *,
        count: int, seed: int = 0, start: int = 0, shard_formats: list[str] | None = None,
        samples_per_shard: int = 1000, overwrite: bool = False) -> dict[str, Any]:
    """Render indices [start, start + count) of the run seeded `seed`; returns the report.
    Raises CorpusError / FontError / TextureError / ConfigError before anything runs when the
    fonts, corpus or textures cannot be used."""
    if count < 1:
        raise ConfigError(f"count must be at least 1, got {count}")
    tasks = plan_ranges(start, count, seed, config.lang, samples_per_shard)
    with shared_template(config) as template:  # fails fast, and goes into the report
        spec = RunSpec(PIPELINE, dataset, TASK, output_dir, REASONS,
                       formats=shard_formats or ["webdataset"],
                       samples_per_shard=samples_per_shard,
                       config={**to_mapping(config), "seed": seed, "start": start,
                               "count": count},
                       kept_counts=sample_stats, finish_stats=stats_with(template.inventory))
        # what the images are made from, in place of input files
        made_from = {"count": count, "seed": seed, "start": start, "lang": config.lang,
                     "backgrounds": config.backgrounds,
                     "corpus": {lang: chosen.corpus for lang, chosen in config.languages.items()}}
        record = RunRecord(PIPELINE, dataset, made_from, to_mapping(config), spec.formats,
                           samples_per_shard)
        return run_pipeline(
            lambda pipeline, execution: run_tasks(pipeline, [spec],
                                                  RenderSynthDog(config, dataset), tasks,
                                                  execution),
            beam_argv, output_dir, record=record, overwrite=overwrite)


def add_arguments(parser) -> None:
    add_common_arguments(parser, needs_input=False, dataset_default="synthdog")
    parser.add_argument("--count", type=int, required=True, help="how many images")
    parser.add_argument("--start", type=int, default=0,
                        help="first index: split one run over machines by range")
    parser.add_argument("--seed", type=int, default=0, help="run seed")
    parser.add_argument("--lang", choices=["en", "zh", "both"],
                        help="language of the text (default: the config's, "
                             f"{SynthDogConfig().lang})")
    parser.add_argument("--fonts", nargs="+", metavar="DIR",
                        help="font files or folders (.ttf/.otf/.ttc; file.ttc#N for one face) "
                             "for the chosen language(s) (default: the config's "
                             "languages.LANG.fonts: Debian's DejaVu, Noto CJK and WenQuanYi)")
    parser.add_argument("--corpus", nargs="+", metavar="FILE",
                        help="UTF-8 text files for the chosen language(s), e.g. a Wikipedia "
                             "dump's text (default: the config's, else the small bundled "
                             "corpus)")
    parser.add_argument("--backgrounds", nargs="+", metavar="DIR",
                        help="background images, files or folders (the paper: COCO train2017 "
                             "and unlabeled2017) (default: the config's, else generated)")
    parser.add_argument("--papers", nargs="+", metavar="DIR",
                        help="paper textures, files or folders (default: the config's, else "
                             "generated)")
    parser.add_argument("--no-effects", action="store_true",
                        help="clean documents: no background blur, document or global effects")


def apply_arguments(config: SynthDogConfig, args) -> SynthDogConfig:
    """Command-line choices over the config file's."""
    if args.lang:
        config.lang = args.lang
    chosen = ["en", "zh"] if config.lang == "both" else [config.lang]
    for language in chosen:
        if args.fonts:
            config.languages[language].fonts = list(args.fonts)
        if args.corpus:
            config.languages[language].corpus = list(args.corpus)
    if args.backgrounds:
        config.backgrounds = list(args.backgrounds)
    if args.papers:
        config.papers = list(args.papers)
    if args.no_effects:
        config.effects = False
    return config


def main(args, beam_argv) -> int:
    try:
        config = apply_arguments(load_pipeline_config(SynthDogConfig, PIPELINE, args.config,
                                                      args.dataset), args)
        report = run(args.output, args.dataset, config, beam_argv, count=args.count,
                     seed=args.seed, start=args.start, shard_formats=args.shard_formats,
                     samples_per_shard=args.samples_per_shard, overwrite=args.overwrite)
    except (ConfigError, CorpusError, FontError, TextureError) as error:
        print(f"corpus synthdog: {error}", file=sys.stderr)
        return 2
    print_summary(report)
    stats = report["stats"]
    print(f"  lines {stats['lines']}, characters skipped for missing glyphs "
          f"{stats['chars_skipped_missing_glyph']}, lines outside the image "
          f"{stats['lines_outside_image']}")
    return 0


def run_demo(output_dir: str, beam_argv: list[str]) -> dict[str, Any]:
    """A few English and Chinese images on sample backgrounds (one of them unreadable, left
    out and counted in the report's inventory) and the shipped corpora."""
    from corpus.samples.synthdog import write_synthdog_inputs

    inputs = write_synthdog_inputs(os.path.join(output_dir, "inputs"))
    config = SynthDogConfig(lang="both", backgrounds=[inputs["backgrounds"]])
    config.validate()
    return run(output_dir, "demo", config, beam_argv, count=6, seed=0, samples_per_shard=1000)
