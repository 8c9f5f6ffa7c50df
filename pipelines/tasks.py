"""A run as a list of tasks, each done whole by one process where it lands.

A task is a few input units (a tar of pairs, some PDFs, a range of SynthDoG indices) and the
shard it becomes. The process that runs it reads its units, applies the rules, runs the models
and writes the task's shards, rejects and marker itself (`pipelines.sinks`); what leaves it is a
`TaskSummary`: counts, file names, sizes. So a run spreads over as many processes and machines as
it has tasks, and the runner moves a few hundred bytes per task, never a sample.

  tasks ──> RunTasks ──────────────────────────────────────────────> summaries ──> report
            (per task: units -> work -> shards, rejects, marker)

With a `Choice` (the longest caption per image, one copy of a duplicated document) the tasks
first stage their samples, and only the choice keys meet:

  tasks ──> StageTasks ──> keys ──> GroupByKey(group) ──> losers ──> GroupByKey(task)
                 │                                                        │
                 └── staged samples in _spill/ ───────────> FinishTasks <─┘ ──> report

On the local runner the graph runs in this process and each step hands its whole list of tasks
to a pool of forked worker processes (`pipelines.workers`); on other runners (Dask, Dataflow,
Spark, Flink) each task is an element the runner spreads over its workers, and a step runs its
tasks in `workers` processes of each runner worker (one by default).

A pipeline fills in a `RunSpec` per output (`pipelines.sinks`) and gives a `Work`: an object that
turns one unit into samples, rejects and `Counts`, in an order that depends on the unit alone (a
task's shard keeps that order). `Work.setup(worker)` runs once per process (numbered from 0),
before its first unit, and `Work.close()`, when defined, when the step ends (a forked worker's
process just exits: a work that holds a browser or a child process also closes it at exit). A
work that shares something between the processes of a machine (one CLIP model on the GPU) also
has `serve(processes)`, a context manager around the step.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Iterable, Iterator, Protocol

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from corpus import progress
from corpus.ids import sample_id
from corpus.inputs import UNSUPPORTED_FILE, UnreadFile
from corpus.schema import Sample
from filters.base import Reject
from pipelines import workers as local_workers
from pipelines.sinks import Counts, RunSpec, ShardWriter, StagedWriter, TaskSummary, choose, \
    completed, finish_staged, staged_completed, write_report


@dataclass(frozen=True)
class Task:
    index: int
    units: tuple  # what the work reads, in order


class Work(Protocol):
    def setup(self, worker: int) -> None: ...

    def __call__(self, unit: Any) -> Iterable[Sample | Reject | Counts]: ...


def plan_tasks(units: list, per_task: int = 1) -> list[Task]:
    """Consecutive units, `per_task` to a task."""
    return [Task(i, tuple(units[start:start + per_task]))
            for i, start in enumerate(range(0, len(units), per_task))]


def unread_tasks(unread: list[UnreadFile], index: int) -> list[Task]:
    """One task, numbered `index`, of the files a run lists but does not read (each an errored
    input); none when there are none."""
    return [Task(index, tuple(unread))] if unread else []


# ---- one task --------------------------------------------------------------------------------

@functools.cache
def project_version() -> str:
    try:
        return metadata.version("qwenvl-corpus")
    except metadata.PackageNotFoundError:
        return "unknown"


def unit_files(unit: Any) -> list[str]:
    """The files a unit reads: its `paths` (a unit of several files), or its `path`."""
    paths = getattr(unit, "paths", None)
    if paths is not None:
        return list(paths)
    path = getattr(unit, "path", None)
    return [path] if isinstance(path, str) and not path.endswith("/") else []


def file_identity(path: str) -> list:
    """Size and modification time of an input file (what tells a re-run that it changed)."""
    try:
        metadata_list = FileSystems.match([path])[0].metadata_list
    except Exception:  # unreadable: the task records the failure itself
        return [path, None, None]
    if not metadata_list:
        return [path, None, None]
    found = metadata_list[0]
    return [path, found.size_in_bytes, found.last_updated_in_seconds]


def fingerprint(specs: list[RunSpec], task: Task) -> str:
    """What a task's outputs are a function of: the runs' settings, the project's version, the
    task's units and their files' sizes and modification times."""
    description = {
        "version": project_version(),
        "runs": [[s.pipeline, s.dataset, s.task, s.formats, s.samples_per_shard, s.config,
                  s.choice.reason if s.choice else None] for s in specs],
        "units": [repr(unit) for unit in task.units],
        "files": [file_identity(path) for unit in task.units for path in unit_files(unit)],
    }
    encoded = json.dumps(description, sort_keys=True, default=str).encode("utf-8")
    return hashlib.sha256(encoded).hexdigest()


def unread_reject(unit: UnreadFile, dataset: str) -> Reject:
    """The errored reject of a file the run does not read, keyed as a file's own rejects are."""
    key = f"{unit.relative}#<file>"
    return Reject(sample_id(dataset, key), dataset, unit.uri, key, UNSUPPORTED_FILE, "errored",
                  unit.detail[:1000])


def unit_reject(unit: Any, error: Exception, dataset: str) -> Reject:
    """The errored reject of a unit whose work failed partway: one unit, named after the
    exception (what was yielded before the failure stays counted)."""
    uri = getattr(unit, "uri", None) or str(unit)[:500]
    key = str(getattr(unit, "key", None) or getattr(unit, "relative", ""))
    return Reject(sample_id(dataset, f"{uri}#{key}"), dataset, uri, key, type(error).__name__,
                  "errored", f"{type(error).__name__}: {error}"[:1000])


class _Outputs:
    """A task's writers, one per output; items go to the writer of their task (rejects and
    counts without one, e.g. an unreadable input of a command writing several tasks, to every
    writer)."""

    def __init__(self, writers: dict[str, Any]):
        self.writers = writers
        self.only = next(iter(writers.values())) if len(writers) == 1 else None

    def _targets(self, item) -> list:
        if self.only is not None:
            return [self.only]
        task = getattr(item, "task", "")
        return [self.writers[task]] if task in self.writers else list(self.writers.values())

    def add(self, item) -> None:
        if isinstance(item, Sample):
            for writer in self._targets(item):
                writer.input()
                writer.add(item)
        elif isinstance(item, Reject):
            for writer in self._targets(item):
                writer.input()
                writer.reject(item)
        else:
            for writer in self._targets(item):
                writer.add_counts(item.values)


def run_task(specs: list[RunSpec], work: Work, task: Task, count: int,
             staged: bool = False) -> list[TaskSummary]:
    """Runs one task: its units through the work into its outputs (or their staged files).
    A task an earlier run finished with the same fingerprint is not run again."""
    print_ = fingerprint(specs, task)
    done = [staged_completed(spec, task.index, count, print_) if staged else
            completed(spec, task.index, count, print_) for spec in specs]
    if all(done):
        return done
    writer_class = StagedWriter if staged else ShardWriter
    outputs = _Outputs({spec.task: writer_class(spec, task.index, count) for spec in specs})
    for unit in task.units:
        for item in _items(work, unit, specs[0].dataset):
            outputs.add(item)
            if not isinstance(item, Counts):
                progress.input_done()
    return [writer.close(print_) for writer in outputs.writers.values()]


def _items(work: Work, unit: Any, dataset: str) -> Iterator[Sample | Reject | Counts]:
    """What the work yields for a unit; a failure partway ends the unit with its errored reject
    (the dead letter: a failing unit costs that unit only). Only the work's failures: one of the
    writers (a full disk) fails the task."""
    if isinstance(unit, UnreadFile):  # counted, never given to the work
        yield unread_reject(unit, dataset)
        return
    try:
        for item in work(unit):
            if not isinstance(item, (Sample, Reject, Counts)):
                raise TypeError(f"work yielded {type(item).__name__}, not a sample, reject or "
                                "counts")
            yield item
    except Exception as error:
        yield unit_reject(unit, error, dataset)


class TaskJob:
    """The pool job of a task step: sets the work up once per process, runs tasks."""

    def __init__(self, specs: list[RunSpec], work: Work, count: int, staged: bool):
        self.specs, self.work, self.count, self.staged = specs, work, count, staged
        self.label = f"corpus {specs[0].pipeline}" + (" (staging)" if staged else "")

    def setup(self, worker: int) -> None:
        self.work.setup(worker)

    def run(self, task: Task) -> list[TaskSummary]:
        return run_task(self.specs, self.work, task, self.count, self.staged)


class FinishJob:
    def __init__(self, spec: RunSpec, count: int):
        self.spec, self.count = spec, count
        self.label = f"corpus {spec.pipeline} (finishing)"

    def setup(self, worker: int) -> None:
        pass

    def run(self, element) -> list[TaskSummary]:
        task, (print_, staged), losers = element
        return [finish_staged(self.spec, task, self.count, staged, losers, print_)]


class RunTasks(beam.DoFn):
    """Runs lists of tasks (a list per element) in `processes` processes; emits each task's
    summaries as it finishes. The processes, and what the work shares between them
    (`Work.serve`), last until the step ends: on the local runner the one element holds every
    task (`close_after`); elsewhere they serve every element a runner worker gets."""

    def __init__(self, job, processes: int, close_after: bool, work: Work | None = None):
        self.job, self.processes, self.close_after, self.work = job, processes, close_after, work
        self._workers = None
        self._services = None

    def process(self, tasks: list):
        if self._workers is None:
            # the local runner's one element holds every task: no more processes than tasks
            processes = min(self.processes, len(tasks)) if self.close_after else self.processes
            self._services = contextlib.ExitStack()
            close = getattr(self.work, "close", None)
            if close is not None:  # what setup made here, when the tasks ran in this process
                self._services.callback(close)
            serve = getattr(self.work, "serve", None)
            if serve is not None:
                self._services.enter_context(serve(processes))
            self._workers = local_workers.Workers(self.job, processes)
        # a progress line where this process holds the whole step; elsewhere the runner's UI
        line = progress.tracking(self.job.label, len(tasks)) if self.close_after else \
            contextlib.nullcontext()
        finished = False
        try:
            with line as shown:
                for summaries in self._workers.run(tasks):
                    if shown is not None:
                        shown.task_done()
                    yield from summaries
            finished = True
        finally:
            if self.close_after or not finished:
                self.teardown(finished)

    def teardown(self, finished: bool = True):
        if self._workers is not None:
            self._workers.close(finished)
            self._services.close()
            self._workers = self._services = None


class ToWorkers(beam.PTransform):
    """Tasks as the step that runs them takes them: here one list of every task (the pool
    spreads them over this machine's cores); on other runners a list of one per element, spread
    by the runner."""

    def __init__(self, local: bool):
        super().__init__()
        self.local = local

    def expand(self, pcoll):
        if self.local:
            return (pcoll | "One" >> beam.Map(lambda task: (0, task))
                    | "Gather" >> beam.GroupByKey()
                    | "List" >> beam.MapTuple(lambda _, tasks: sorted(tasks, key=_order)))
        return pcoll | "Spread" >> beam.Reshuffle() | "List" >> beam.Map(lambda task: [task])


def _order(task) -> int:
    return task.index if isinstance(task, Task) else task[0]


@dataclass(frozen=True)
class Execution:
    """How the steps of a run execute (`pipelines.common.plan_execution`)."""

    local: bool  # the graph runs in this process; task steps use a pool of forked workers
    workers: int  # processes per task step (per runner worker when not local)


def run_tasks(pipeline, specs: list[RunSpec], work: Work, tasks, execution: Execution,
              count: int | None = None):
    """The graph of a run: its tasks, their summaries, one report per output.

    `tasks` is the list of tasks, or a PCollection of them when they are formed by the graph
    itself (small records grouped into tasks, e.g. questions joined with their answers); then
    `count` is how many tasks there can be (task indices are below it; a task that gets no
    records is not written)."""
    if isinstance(tasks, list):
        count = len(tasks)
        tasks = pipeline | "Tasks" >> beam.Create(tasks)
    elif count is None:
        raise ValueError("tasks formed by the graph need their count")
    spread = tasks | "ToWorkers" >> ToWorkers(execution.local)
    choice_spec = next((spec for spec in specs if spec.choice is not None), None)
    if choice_spec is None:
        summaries = spread | "RunTasks" >> beam.ParDo(
            RunTasks(TaskJob(specs, work, count, False), execution.workers, execution.local,
                     work))
    else:
        if len(specs) != 1:
            raise ValueError("a choice across tasks needs a run of one output")
        summaries = _choose(pipeline, spread, choice_spec, work, count, execution)
    _report(pipeline, specs, summaries)


def _choose(pipeline, spread, spec: RunSpec, work: Work, count: int, execution: Execution):
    staged = spread | "StageTasks" >> beam.ParDo(
        RunTasks(TaskJob([spec], work, count, True), execution.workers, execution.local, work))
    prints = staged | "Fingerprints" >> beam.Map(
        lambda s: (s.index, ("print", (s.fingerprint, s.staged))))
    losers = (staged
              | "Keys" >> beam.FlatMap(lambda s: [(group, (s.index, rank, member))
                                                  for group, rank, member in s.keys])
              | "GroupKeys" >> beam.GroupByKey()
              | "Choose" >> beam.FlatMap(choose)
              | "TagLosers" >> beam.MapTuple(lambda task, loser: (task, ("loser", loser))))

    def finish_element(grouped):
        task, values = grouped
        ((print_, staged),) = [value for kind, value in values if kind == "print"]
        # the losers in one order: the fingerprint of the finished task covers them
        losers = dict(sorted(value for kind, value in values if kind == "loser"))
        print_ = hashlib.sha256(json.dumps([print_, losers]).encode("utf-8")).hexdigest()
        return task, (print_, staged), losers

    finished = ((prints, losers) | "GatherChoices" >> beam.Flatten()
                | "GroupByTask" >> beam.GroupByKey()
                | "FinishElements" >> beam.Map(finish_element)
                | "FinishToWorkers" >> ToWorkers(execution.local)
                | "FinishTasks" >> beam.ParDo(RunTasks(FinishJob(spec, count),
                                                       execution.workers, execution.local)))
    stage_summaries = staged | "WithoutKeys" >> beam.Map(_without_keys)
    return (stage_summaries, finished) | "AllSummaries" >> beam.Flatten()


def _without_keys(summary: TaskSummary) -> TaskSummary:
    return dataclasses.replace(summary, keys=[])  # a copy: Beam's elements are not ours to change


class WriteReport(beam.DoFn):
    def __init__(self, specs: list[RunSpec]):
        self.specs = specs

    def process(self, element):
        index, summaries = element
        spec = self.specs[index]
        report = write_report(spec, [s for s in summaries if s is not None])
        yield report["kept"]


def _report(pipeline, specs: list[RunSpec], summaries) -> None:
    index_of = {spec.output_dir: i for i, spec in enumerate(specs)}
    # one element per output whatever the tasks did: a run of no input still gets its report
    bases = pipeline | "ReportBases" >> beam.Create([(i, None) for i in range(len(specs))])
    keyed = summaries | "KeyByOutput" >> beam.Map(lambda s: (index_of[s.output_dir], s))
    _ = ((bases, keyed) | "GatherSummaries" >> beam.Flatten()
         | "GroupSummaries" >> beam.GroupByKey()
         | "WriteReport" >> beam.ParDo(WriteReport(specs)))

