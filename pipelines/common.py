"""What every pipeline command shares: its flags, where its graph runs, and the driver that runs
it and finishes its report.

A run's graph (`pipelines/tasks.py`) keeps to what every runner supports
(docs/running-at-scale.md): no tagged outputs, no side inputs, no `CombineGlobally`, and one
terminal transform that depends on every leaf of the graph.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import importlib
import json
import os
import time
from typing import Any, Callable, Iterator

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from corpus.config import ConfigError, load_config
from corpus.profiles import profile_of
from corpus.report import PLOT_NAME, REPORT_NAME, check_accounting, dumps, plot_report
from filters.benchmark_images import BenchmarkImages, fingerprint_images, image_paths, \
    is_fingerprint_file, load_fingerprints, save_fingerprints
from pipelines.run_record import RunRecord, claim_outputs
from pipelines.sinks import RunSpec, write_atomically
from pipelines.tasks import Execution


LOCAL_RUNNERS = ("DirectRunner", "FnApiRunner")
EXCLUDED_FINGERPRINTS = "excluded_images.npz"  # what a run given excluded images writes


def _flag(argv: list[str], name: str) -> str | None:
    """The value of `--name=value` (or `--name value`) in argv, the last one given."""
    value = None
    for i, arg in enumerate(argv):
        if arg.startswith(f"--{name}="):
            value = arg.split("=", 1)[1]
        elif arg == f"--{name}" and i + 1 < len(argv):
            value = argv[i + 1]
    return value


def _without(argv: list[str], *names: str) -> list[str]:
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif any(arg == f"--{name}" for name in names):
            skip = True
        elif not any(arg.startswith(f"--{name}=") for name in names):
            kept.append(arg)
    return kept


def beam_option_names(argv: list[str]) -> set[str]:
    """Every `--flag` Beam's pipeline options declare, those of the runner `argv` names
    included (the Dask runner declares its own where it is defined)."""
    from apache_beam.options.pipeline_options import _BeamArgumentParser

    if "dask" in (_flag(argv, "runner") or "").lower():
        import apache_beam.runners.dask.dask_runner  # noqa: F401 (declares the Dask options)
    parser, seen, pending = _BeamArgumentParser(allow_abbrev=False), set(), [PipelineOptions]
    while pending:
        for options in pending.pop().__subclasses__():
            if options not in seen:
                seen.add(options)
                options._add_argparse_args(parser)
                pending.append(options)
    return {name for action in parser._actions for name in action.option_strings}


def runner_problem(argv: list[str]) -> str | None:
    """Why the `--runner` in argv names no runner Beam can make, in one line with the nearest
    known name; None when it can (or when none is named)."""
    name = _flag(argv, "runner")
    if name is None:
        return None
    if "." in name:  # a class path: it must import
        module, _, attribute = name.rpartition(".")
        try:
            getattr(importlib.import_module(module), attribute)
        except (ImportError, AttributeError) as error:
            return f"--runner {name}: cannot be imported ({type(error).__name__}: {error})"
        return None
    from apache_beam.options.pipeline_options import StandardOptions

    known = StandardOptions.KNOWN_RUNNER_NAMES
    if any(name.lower() in (runner.lower(), runner.lower().removesuffix("runner"))
           for runner in known):
        return None
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return (f"unknown runner {name}{hint}; Beam knows {', '.join(sorted(set(known)))}, or "
            "the full class path of a runner (the Dask runner: "
            "apache_beam.runners.dask.dask_runner.DaskRunner)")


def plan_execution(beam_argv: list[str]) -> tuple[PipelineOptions, Any, Execution]:
    """(Beam options, runner or None for the one the options name, execution) of a run.

    Without `--runner` (or with the DirectRunner in its `in_memory` mode) the graph runs in
    this process on Beam's FnApiRunner, asked for directly: the DirectRunner would first try
    to start its Prism runner, a download and a server. Each task step then spreads its tasks
    over `--workers` forked processes (default: every core, or the DirectRunner's
    `--direct_num_workers`; one when `in_memory` is asked for without a number). Any other
    runner, or the DirectRunner in a multi-process mode, runs as Beam's flags say, and a task
    step uses `--workers` processes (default one) in each of its workers."""
    workers = _flag(beam_argv, "workers")
    argv = _without(beam_argv, "workers")
    runner = _flag(argv, "runner")
    mode = _flag(argv, "direct_running_mode")
    if (runner or "DirectRunner") in LOCAL_RUNNERS and mode in (None, "in_memory"):
        numbered = _flag(argv, "direct_num_workers")
        default = 1 if mode == "in_memory" else (os.cpu_count() or 1)
        count = int(workers or numbered or default) or (os.cpu_count() or 1)
        options = PipelineOptions(_without(argv, "runner", "direct_running_mode",
                                           "direct_num_workers"))
        return options, FnApiRunner(), Execution(local=True, workers=count)
    return PipelineOptions(argv), None, Execution(local=False, workers=int(workers or 1))


def read_file(reader, file) -> Iterator:
    """What a reader yields for one input file; a failure partway (an unreadable or truncated
    file) is one errored `unreadable_file` unit after what was read before it."""
    try:
        yield from reader(file)
    except (OSError, ValueError) as error:
        yield reader.reject(file, "<file>", "unreadable_file", f"{type(error).__name__}: {error}")


def load_pipeline_config(cls, pipeline: str, config_path: str | None, dataset: str | None):
    """The config of a run: defaults, the `--config` file and the dataset's profile
    (`corpus.config.load_config`); says in one line which profile applies."""
    profile = profile_of(dataset)
    print(profile.describe(pipeline))
    return load_config(cls, config_path, dataset, profile.for_pipeline(pipeline))


def add_common_arguments(parser: argparse.ArgumentParser, *, dataset_default: str | None = None,
                         needs_input: bool = True, reads_images: bool = False) -> None:
    """Flags every pipeline command shares (and `--exclude-images` for those that read
    images). Anything else on the line goes to Beam."""
    if needs_input:
        parser.add_argument("--input", nargs="+", required=True, metavar="GLOB",
                            help="input files, folders or globs (local paths or Beam URIs)")
    parser.add_argument("--output", required=True, metavar="DIR", help="output directory")
    parser.add_argument("--dataset", default=dataset_default, required=dataset_default is None,
                        help="dataset name; part of every sample id, and picks the dataset's "
                             "profile (docs/datasets.md)")
    parser.add_argument("--config", metavar="YAML",
                        help="YAML config overriding the defaults (default: none, the defaults "
                             "that pipelines/configs/ lists)")
    parser.add_argument("--shard-format", dest="shard_formats", nargs="+",
                        default=["webdataset"], choices=["webdataset", "parquet"],
                        help="shard format(s) to write")
    parser.add_argument("--samples-per-shard", type=int, default=1000,
                        help="samples per shard at most")
    parser.add_argument("--workers", type=int, metavar="N",
                        help="processes on this machine (default: every core; with another "
                             "runner, processes per runner worker, default 1)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start afresh in an --output that holds an earlier run: remove "
                             "its shards, rejects, markers and report first (other files stay); "
                             "without it a different earlier run stops the command and the "
                             "same one resumes")
    if reads_images:
        parser.add_argument("--exclude-images", metavar="DIR_OR_FILE",
                            help="drop samples showing a near-duplicate of these images (an "
                                 "evaluation set): a folder, a text file of image paths, or "
                                 f"the {EXCLUDED_FINGERPRINTS} an earlier run wrote (default: "
                                 "none, no image is excluded)")


class GuardedWork:
    """What a pipeline's work with the `--exclude-images` guard (`self.exclude`) shares: the
    excluded images' index built once, before the local workers fork and share it."""

    exclude = None

    @contextlib.contextmanager
    def serve(self, processes: int):
        if self.exclude is not None:
            self.exclude.load()
        yield


def exclusion_guard(source: str | None, output_dir: str,
                    beam_argv: list[str]) -> BenchmarkImages | None:
    """The guard of `--exclude-images`, ready before the run starts. A fingerprint file is used
    where it is; a folder or a list of images is fingerprinted here, once, by `--workers`
    processes, into OUTPUT/excluded_images.npz, which later runs can take instead. A file that
    is not an image stops the command before the run (ConfigError, one line)."""
    if source is None:
        return None
    if is_fingerprint_file(source):
        try:
            stored = load_fingerprints(source)
        except ValueError as error:
            raise ConfigError(f"--exclude-images: {error}") from None
        return BenchmarkImages(source, images=len(stored.paths), sha256=stored.sha256)
    paths = image_paths(source)
    if not paths:
        raise ConfigError(f"--exclude-images: no images in {source}")
    workers = _flag(beam_argv, "workers")
    fingerprints, failures = fingerprint_images(
        paths, int(workers) if workers else (os.cpu_count() or 1))
    if failures:
        path, why = failures[0]
        raise ConfigError(f"--exclude-images: {len(failures)} of {len(paths)} images could "
                          f"not be read, the first {path}: {why}")
    written = write_atomically(output_dir, EXCLUDED_FINGERPRINTS,
                               lambda f: save_fingerprints(f, fingerprints, paths))
    path = FileSystems.join(output_dir, EXCLUDED_FINGERPRINTS)
    print(f"Excluded images: {len(paths)} from {source} fingerprinted into {path}; give "
          "that file to --exclude-images to skip this step")
    return BenchmarkImages(path, images=len(paths), sha256=written.sha256)


def guarded_spec(spec: RunSpec, exclude: BenchmarkImages | None) -> RunSpec:
    """The run's spec with the `--exclude-images` guard in the config its report records."""
    if exclude is None:
        return spec
    return dataclasses.replace(spec, config={**spec.config, "exclude_images": exclude.describe()})


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


def run_pipeline(build: Callable[[beam.Pipeline, Execution], None], beam_argv: list[str],
                 output_dirs: str | list[str], *, record: RunRecord | None = None,
                 overwrite: bool = False):
    """Build and run a pipeline (`build(pipeline, execution)`), then add wall time to its
    report(s) and draw the plot; returns the report, or a list for a list of output
    directories (one per task written).

    With a `record` of what the run is made from, each directory is claimed first
    (`pipelines.run_record`): one holding a different run stops the command (ConfigError)
    unless `overwrite`, which removes that run's files; then its run.json is written.
    A report left by an earlier run is removed first: `report.json` exists only while the
    shards beside it are the ones it lists (a re-run resumes from `_done/` markers instead)."""
    started = time.time()
    dirs = [output_dirs] if isinstance(output_dirs, str) else list(output_dirs)
    if record is not None:
        claim_outputs(record, dirs, overwrite)
    for output_dir in dirs:
        FileSystems.mkdirs(output_dir) if not FileSystems.exists(output_dir) else None
        report_path = FileSystems.join(output_dir, REPORT_NAME)
        if FileSystems.exists(report_path):
            FileSystems.delete([report_path])
    options, runner, execution = plan_execution(beam_argv)
    with beam.Pipeline(runner=runner, options=options) as pipeline:
        build(pipeline, execution)
        close_graph(pipeline)
    wall_seconds = round(time.time() - started, 3)
    reports = [_finish_report(output_dir, wall_seconds) for output_dir in dirs]
    return reports[0] if isinstance(output_dirs, str) else reports


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
    if report.get("tasks_reused"):
        count, reused = report["task_count"], report["tasks_reused"]
        print(f"  resuming: {reused} of {count} tasks kept from the earlier run, "
              f"{count - reused} redone")
    for reason, count in report["dropped"].items():
        print(f"  dropped {reason}: {count}")
    for reason, count in report["errored"].items():
        print(f"  errored {reason}: {count}")
