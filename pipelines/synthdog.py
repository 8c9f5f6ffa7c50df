"""`corpus synthdog`: SynthDoG synthetic documents as OCR samples with a quad per text line (A.4).

Reads no input files: sample `i` of a run is made from (seed, i) alone, so any range of indices
can be rendered anywhere, in any order, and gives the same images. The requested indices fan
out over Beam workers as ranges; each worker builds the template once (`setup`). Each index is one input
unit: kept, dropped `no_text_placed` (the layout fitted no line), or errored (e.g.
`unreadable_background`, a background file that passed the header check but does not decode).
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any, Iterator

import apache_beam as beam

from corpus.config import ConfigError, load_config, to_mapping
from corpus.ids import sample_id
from corpus.schema import Image, Region, Sample, Source
from filters.base import Reject
from pipelines.common import add_common_arguments, apply_step, count_elements, print_summary, \
    run_pipeline
from pipelines.sinks import write_run
from renderers.synthdog.config import SynthDogConfig
from renderers.synthdog.fonts import FontError
from renderers.synthdog.template import SynthDoG, encode_jpeg, render
from renderers.synthdog.text_source import CorpusError
from renderers.synthdog.textures import TextureError

REASONS = ["no_text_placed", "unreadable_background"]
# Indices are created as ranges and expanded on the workers. Enough ranges to spread over many
# workers (the Dask runner partitions only what `beam.Create` holds), none over 1,000 indices.
MIN_RANGES, MAX_RANGE = 256, 1000
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


class RenderSynthDog:
    """Step: one index -> one OCR sample, or a counted reject."""

    def __init__(self, config: SynthDogConfig, dataset: str):
        self.config, self.dataset = config, dataset
        self.template = None

    def setup(self):
        if self.template is None:
            self.template = SynthDoG(self.config)

    def __call__(self, item: SynthIndex) -> Iterator[Sample | Reject]:
        self.setup()
        uid = sample_id(self.dataset, item.key)
        try:
            data = render(self.template, item.seed, item.index)
        except TextureError as error:
            yield Reject(uid, self.dataset, item.uri, item.key, "unreadable_background",
                         "errored", str(error)[:1000])
            return
        if not data["lines"]:
            yield Reject(uid, self.dataset, item.uri, item.key, "no_text_placed")
            return
        yield to_sample(data, item, uid, self.dataset)


def to_sample(data: dict, item: SynthIndex, uid: str, dataset: str) -> Sample:
    height, width = data["image"].shape[:2]
    lines = data["lines"]
    return Sample(
        id=uid, dataset=dataset, task="ocr", source=Source(uri=item.uri, key=item.key),
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


def _sample_stats(sample: Sample) -> tuple[int, dict[str, int]]:
    return 0, {"lines": len(sample.regions),
               "chars_skipped_missing_glyph": sample.extra["chars_skipped_missing_glyph"],
               "lines_outside_image": sample.extra["lines_outside_image"],
               sample.language: 1}


def _sum_stats(dicts) -> dict[str, int]:
    total = dict.fromkeys(STAT_KEYS, 0)
    for stats in dicts:
        for key, value in stats.items():
            total[key] = total.get(key, 0) + value
    return total


def _index_range(chunk: tuple[int, int], seed: int, lang: str) -> Iterator[SynthIndex]:
    start, stop = chunk
    for index in range(start, stop):
        yield SynthIndex(index, seed, lang)


def run(output_dir: str, dataset: str, config: SynthDogConfig, beam_argv: list[str], *,
        count: int, seed: int = 0, start: int = 0, shard_formats: list[str] | None = None,
        samples_per_shard: int = 1000) -> dict[str, Any]:
    """Render indices [start, start + count) of the run seeded `seed`; returns the report.
    Raises CorpusError / FontError / TextureError / ConfigError before anything runs when the
    fonts, corpus or textures cannot be used."""
    if count < 1:
        raise ConfigError(f"count must be at least 1, got {count}")
    inventory = SynthDoG(config).inventory  # fails fast, and goes into the report
    step = min(MAX_RANGE, max(1, -(-count // MIN_RANGES)))
    chunks = [(s, min(s + step, start + count)) for s in range(start, start + count, step)]
    lang = config.lang

    def build(pipeline):
        indices = (pipeline
                   | "Ranges" >> beam.Create(chunks)
                   | "SpreadRanges" >> beam.Reshuffle()
                   | "Indices" >> beam.FlatMap(_index_range, seed, lang)
                   | "SpreadIndices" >> beam.Reshuffle())
        input_count = count_elements("Input", indices)
        samples, rejects = apply_step(indices, "Render", RenderSynthDog(config, dataset), dataset)
        # a sum per constant key (not CombineGlobally, see pipelines/common.py); the zero
        # entry makes the sum exist even when nothing was kept
        stats = ((samples | "SampleStats" >> beam.Map(_sample_stats),
                  pipeline | "ZeroStats" >> beam.Create([(0, {})]))
                 | "AllStats" >> beam.Flatten()
                 | "SumStats" >> beam.CombinePerKey(_sum_stats)
                 | "StatsValue" >> beam.Map(lambda kv: {**kv[1], "inventory": inventory}))
        write_run(pipeline, samples, [rejects], input_count, output_dir=output_dir,
                  pipeline_name="synthdog", dataset=dataset, task="ocr", reason_order=REASONS,
                  formats=shard_formats or ["webdataset"], samples_per_shard=samples_per_shard,
                  config={**to_mapping(config), "seed": seed, "start": start, "count": count},
                  stats=stats)

    return run_pipeline(build, beam_argv, output_dir)


def add_arguments(parser) -> None:
    add_common_arguments(parser, needs_input=False, dataset_default="synthdog")
    parser.add_argument("--count", type=int, required=True, help="how many images")
    parser.add_argument("--start", type=int, default=0,
                        help="first index (default 0): split one run over machines by range")
    parser.add_argument("--seed", type=int, default=0, help="run seed (default 0)")
    parser.add_argument("--lang", choices=["en", "zh", "both"],
                        help="language of the text (default: the config's, en)")
    parser.add_argument("--fonts", nargs="+", metavar="DIR",
                        help="font files or folders (.ttf/.otf/.ttc; file.ttc#N for one face) "
                             "for the chosen language(s)")
    parser.add_argument("--corpus", nargs="+", metavar="FILE",
                        help="UTF-8 text files for the chosen language(s)")
    parser.add_argument("--backgrounds", nargs="+", metavar="DIR",
                        help="background images (files or folders); default: generated")
    parser.add_argument("--papers", nargs="+", metavar="DIR",
                        help="paper textures (files or folders); default: generated")
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
        config = apply_arguments(load_config(SynthDogConfig, args.config, args.dataset), args)
        report = run(args.output, args.dataset, config, beam_argv, count=args.count,
                     seed=args.seed, start=args.start, shard_formats=args.shard_formats,
                     samples_per_shard=args.samples_per_shard)
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
