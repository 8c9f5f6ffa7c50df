"""Beam plumbing shared by every pipeline: runner options, the step that never loses an element,
and the driver that runs a pipeline and finishes its report.

A step wraps a plain function `element -> iterable of Sample | Reject`. Samples and rejects come
out of one ParDo and are split by type, an exception becomes an `errored` reject carrying the
exception, so one bad input never stops a run and is never silently lost. Each reason is also
counted as a Beam metric, for the runner's monitoring UI (the report never relies on metrics:
not every runner collects them).

The graphs built here avoid what some runners do not support (docs/running-at-scale.md): no
tagged outputs, no side inputs, no `CombineGlobally`, and one terminal transform that depends
on every leaf of the graph.
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

from corpus.ids import sample_id
from corpus.report import PLOT_NAME, REPORT_NAME, check_accounting, dumps, plot_report
from corpus.schema import Sample
from filters.base import Reject, Rule, apply_rules
from corpus.ids import id_number
from pipelines.sinks import ById, BySpill, CountAll, GroupIntoBuckets, read_spilled, \
    write_atomically

METRICS_NAMESPACE = "corpus"


def pipeline_options(beam_argv: list[str]) -> PipelineOptions:
    """Standard Beam flags pass through. Without `--runner`, run locally on every core with the
    Python DirectRunner (multi-processing), which needs no download and no network; a
    `--direct_running_mode` or `--direct_num_workers` given on the line wins."""
    argv = list(beam_argv)
    if not any(a.startswith("--runner") for a in argv):
        # The worker processes log every bundle at INFO and two start-up warnings per worker
        # that ask nothing of the user; an error in a worker still shows.
        defaults = {"--runner": "DirectRunner", "--direct_running_mode": "multi_processing",
                    "--direct_num_workers": str(os.cpu_count() or 1),
                    "--default_sdk_harness_log_level": "ERROR"}
        argv += [f"{flag}={value}" for flag, value in defaults.items()
                 if not any(a == flag or a.startswith(flag + "=") for a in argv)]
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
    """Runs `fn` on each element and emits its samples and rejects; an exception becomes an
    `errored` reject. `fn` may define `setup()` to load models once per worker."""

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
            yield counted(errored_reject(element, error, self.dataset))
            return
        for result in results:
            yield counted(result) if isinstance(result, Reject) else result


def errored_reject(element: Any, error: Exception, dataset: str) -> Reject:
    """The reject an exception on an element becomes: errored, named after the exception."""
    element_id, uri, key = describe(element, dataset)
    return Reject(element_id, dataset, uri, key, type(error).__name__, "errored",
                  str(error)[:1000])


def counted(reject: Reject) -> Reject:
    """The reject, counted as a Beam metric by status and reason."""
    Metrics.counter(METRICS_NAMESPACE, f"{reject.status}_{reject.reason}").inc()
    return reject


def _is_reject(element) -> bool:
    return isinstance(element, Reject)


def _is_not_reject(element) -> bool:
    return not isinstance(element, Reject)


class SplitRejects(beam.PTransform):
    """(samples, rejects) of a PCollection holding both. Use it instead of a multi-output
    ParDo (`with_outputs`/`TaggedOutput`): the Dask runner hands every output of such a ParDo
    to every consumer, so samples would reach the rejects table and rejects the shards."""

    def expand(self, pcoll):
        return (pcoll | "Samples" >> beam.Filter(_is_not_reject),
                pcoll | "Rejects" >> beam.Filter(_is_reject))


class Step(beam.PTransform):
    """One ParDo running a step function, its output split into (samples, rejects)."""

    def __init__(self, fn, dataset: str):
        super().__init__()
        self.fn, self.dataset = fn, dataset

    def expand(self, pcoll):
        results = pcoll | "Run" >> beam.ParDo(StepFn(self.fn, self.dataset))
        return results | "Split" >> SplitRejects()


def apply_step(pcoll, label: str, fn, dataset: str):
    """Run a step; returns (samples, rejects)."""
    samples, rejects = pcoll | label >> Step(fn, dataset)
    return samples, rejects


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
    """How many elements the given PCollections hold together: one int, or nothing for none."""
    return tuple(pcolls) | label >> CountAll()


class Batches(beam.PTransform):
    """Lists of at most `batch_size` elements, the same lists on every runner and every run:
    elements are grouped into buckets of about `batch_size` by id (`sinks.GroupIntoBuckets`),
    sorted by id and cut. For model inference (RunInference with `with_no_batching()`) where
    `beam.BatchElements` cannot be used: it emits its last batch from `finish_bundle`, which
    the Dask runner drops. Costs two shuffles of the elements; batching inside one step over an
    input file, where a file holds many elements, costs none.

    With `spilled=True` the input is spill chunks (`sinks.SpillFile`) and the batches are of
    the samples read back from them: only the chunks travel through the shuffles."""

    def __init__(self, batch_size: int, id_of: Callable[[Any], str] = lambda element: element.id,
                 spilled: bool = False):
        super().__init__()
        self.batch_size, self.id_of, self.spilled = batch_size, id_of, spilled

    def expand(self, pcoll):
        size, id_of, spilled = self.batch_size, self.id_of, self.spilled

        def cut(group):
            _, _, elements = group
            elements = sorted(read_spilled(elements) if spilled else elements, key=id_of)
            for start in range(0, len(elements), size):
                yield elements[start:start + size]

        bucketing = BySpill(size) if spilled else ById(size, lambda e: id_number(id_of(e)))
        return pcoll | "Bucket" >> GroupIntoBuckets(bucketing) | "Cut" >> beam.FlatMap(cut)


class _LeafCollector(beam.pipeline.PipelineVisitor):
    def __init__(self):
        self.produced, self.consumed = [], set()

    def visit_transform(self, node):
        for pcoll in node.inputs:
            self.consumed.add(id(pcoll))
        for side_input in node.side_inputs:
            self.consumed.add(id(side_input.pvalue))
        for pcoll in node.outputs.values():
            if isinstance(pcoll, beam.pvalue.PCollection):
                self.produced.append(pcoll)


def close_graph(pipeline: beam.Pipeline) -> None:
    """Append one transform that depends on every leaf of the graph and outputs nothing.

    The Dask runner computes only the graph of the last transform applied; without this, a
    branch that ends elsewhere (a sink applied before the report, say) would silently not
    run. On other runners it is a no-op."""
    collector = _LeafCollector()
    pipeline.visit(collector)
    leaves = [pc for pc in collector.produced if id(pc) not in collector.consumed]
    if not leaves:
        return
    drained = [leaf | f"CloseGraph/Drain{i}" >> beam.FlatMap(lambda _: ())
               for i, leaf in enumerate(leaves)]
    _ = tuple(drained) | "CloseGraph/Join" >> beam.Flatten()


def run_pipeline(build: Callable[[beam.Pipeline], None], beam_argv: list[str],
                 output_dir: str) -> dict[str, Any]:
    """Build and run the pipeline, then add wall time to its report and draw the plot."""
    return run_pipeline_reports(build, beam_argv, [output_dir])[0]


def run_pipeline_reports(build: Callable[[beam.Pipeline], None], beam_argv: list[str],
                         output_dirs: list[str]) -> list[dict[str, Any]]:
    """`run_pipeline` for a graph that writes one run per directory (one per task).

    A report left by an earlier run is removed first: `report.json` exists only while the
    shards beside it are the ones it lists (a re-run resumes from `_done/` markers instead)."""
    started = time.time()
    for output_dir in output_dirs:
        FileSystems.mkdirs(output_dir) if not FileSystems.exists(output_dir) else None
        report_path = FileSystems.join(output_dir, REPORT_NAME)
        if FileSystems.exists(report_path):
            FileSystems.delete([report_path])
    with beam.Pipeline(options=pipeline_options(beam_argv)) as pipeline:
        build(pipeline)
        close_graph(pipeline)
    wall_seconds = round(time.time() - started, 3)
    return [_finish_report(output_dir, wall_seconds) for output_dir in output_dirs]


def _finish_report(output_dir: str, wall_seconds: float) -> dict[str, Any]:
    with FileSystems.open(FileSystems.join(output_dir, REPORT_NAME)) as f:
        report = json.loads(f.read().decode("utf-8"))
    check_accounting(report)
    report["wall_seconds"] = wall_seconds
    write_atomically(output_dir, REPORT_NAME, lambda f: f.write(dumps(report).encode("utf-8")))
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
