"""Beam plumbing shared by every pipeline: runner options, the step that never loses an element,
and the driver that runs a pipeline and finishes its report.

A step wraps a plain function `element -> iterable of Sample | Reject`. Samples go to the main
output, rejects to the `rejects` output, and an exception becomes an `errored` reject carrying
the exception, so one bad input never stops a run and is never silently lost. Each reason is
also counted as a Beam metric, for the runner's monitoring UI.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any, Callable, Iterable

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.pvalue import TaggedOutput

from corpus.ids import sample_id
from corpus.report import PLOT_NAME, REPORT_NAME, check_accounting, dumps, plot_report
from corpus.schema import Sample
from filters.base import Reject, Rule, apply_rules

REJECTS = "rejects"
METRICS_NAMESPACE = "corpus"


def pipeline_options(beam_argv: list[str]) -> PipelineOptions:
    """Standard Beam flags pass through. Without `--runner`, run locally on every core with the
    Python DirectRunner (multi-processing), which needs no download and no network."""
    argv = list(beam_argv)
    if not any(a.startswith("--runner") for a in argv):
        argv += ["--runner=DirectRunner", "--direct_running_mode=multi_processing",
                 f"--direct_num_workers={os.cpu_count() or 1}"]
    return PipelineOptions(argv)


def add_common_arguments(parser: argparse.ArgumentParser, *, dataset_default: str | None = None,
                         needs_input: bool = True) -> None:
    """Flags every pipeline command shares. Anything else on the line goes to Beam."""
    if needs_input:
        parser.add_argument("--input", nargs="+", required=True, metavar="GLOB",
                            help="input files, folders or globs (local paths or Beam URIs)")
    parser.add_argument("--output", required=True, metavar="DIR", help="output directory")
    parser.add_argument("--dataset", default=dataset_default, required=dataset_default is None,
                        help="dataset name; part of every sample id")
    parser.add_argument("--config", metavar="YAML", help="YAML config overriding the defaults")
    parser.add_argument("--shard-format", dest="shard_formats", nargs="+",
                        default=["webdataset"], choices=["webdataset", "parquet"],
                        help="shard format(s) to write (default: webdataset)")
    parser.add_argument("--samples-per-shard", type=int, default=1000,
                        help="target samples per shard (default: 1000)")


def describe(element: Any, dataset: str) -> tuple[str, str, str]:
    """(id, uri, key) of any element, for a reject record."""
    if isinstance(element, Sample):
        return element.id, element.source.uri, element.source.key
    uri = getattr(element, "uri", None) or str(element)[:500]
    key = str(getattr(element, "key", ""))
    return sample_id(dataset, f"{uri}#{key}"), uri, key


class StepFn(beam.DoFn):
    """Runs `fn` on each element; routes samples, rejects and exceptions. `fn` may define
    `setup()` to load models once per worker."""

    def __init__(self, fn: Callable[[Any], Iterable[Sample | Reject]], dataset: str):
        self.fn = fn
        self.dataset = dataset

    def setup(self):
        setup = getattr(self.fn, "setup", None)
        if setup is not None:
            setup()

    def process(self, element):
        try:
            results = list(self.fn(element))
        except Exception as error:  # the dead letter: any failure becomes a counted reject
            element_id, uri, key = describe(element, self.dataset)
            reason = type(error).__name__
            Metrics.counter(METRICS_NAMESPACE, f"errored_{reason}").inc()
            yield TaggedOutput(REJECTS, Reject(element_id, self.dataset, uri, key, reason,
                                               "errored", str(error)[:1000]))
            return
        for result in results:
            if isinstance(result, Reject):
                Metrics.counter(METRICS_NAMESPACE, f"{result.status}_{result.reason}").inc()
                yield TaggedOutput(REJECTS, result)
            else:
                yield result


def apply_step(pcoll, label: str, fn, dataset: str):
    """Run a step; returns (samples, rejects)."""
    outputs = pcoll | label >> beam.ParDo(StepFn(fn, dataset)).with_outputs(REJECTS, main="main")
    return outputs.main, outputs[REJECTS]


class RulesStep:
    """A step that applies a rule list (filters.base.apply_rules) to each sample."""

    def __init__(self, rules: list[Rule]):
        self.rules = rules

    def setup(self):
        for rule in self.rules:
            if hasattr(rule, "setup"):
                rule.setup()

    def __call__(self, sample: Sample):
        return [apply_rules(sample, self.rules)]


def count_elements(label: str, *pcolls):
    """One-element PCollection: how many elements the given PCollections hold together."""
    counts = [pc | f"{label}Ones{i}" >> beam.Map(lambda _: 1) for i, pc in enumerate(pcolls)]
    return (counts | f"{label}Flatten" >> beam.Flatten()
            | f"{label}Sum" >> beam.CombineGlobally(sum))


def run_pipeline(build: Callable[[beam.Pipeline], None], beam_argv: list[str],
                 output_dir: str) -> dict[str, Any]:
    """Build and run the pipeline, then add wall time to its report and draw the plot."""
    started = time.time()
    FileSystems.mkdirs(output_dir) if not FileSystems.exists(output_dir) else None
    with beam.Pipeline(options=pipeline_options(beam_argv)) as pipeline:
        build(pipeline)
    report_path = FileSystems.join(output_dir, REPORT_NAME)
    with FileSystems.open(report_path) as f:
        report = json.loads(f.read().decode("utf-8"))
    check_accounting(report)
    report["wall_seconds"] = round(time.time() - started, 3)
    with FileSystems.create(report_path) as f:
        f.write(dumps(report).encode("utf-8"))
    if "://" not in output_dir:
        plot_report(report, os.path.join(output_dir, PLOT_NAME))
    return report


def print_summary(report: dict[str, Any]) -> None:
    print(f"{report['pipeline']} {report['dataset']}: input {report['input']}, kept "
          f"{report['kept']}, dropped {report['dropped_total']}, errored "
          f"{report['errored_total']} in {len(report['shards'])} shard(s), "
          f"{report.get('wall_seconds', 0):.1f} s")
    for reason, count in report["dropped"].items():
        print(f"  dropped {reason}: {count}")
    for reason, count in report["errored"].items():
        print(f"  errored {reason}: {count}")
