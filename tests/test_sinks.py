"""The generic plumbing (tasks, shards, rejects, markers, report) on a tiny pipeline of its own.

`build_plumbing_pipeline` is the pipeline the Dask, resume and determinism tests run too; run as
a script, this module runs it (the resume test kills such a process midway).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time

import pyarrow.parquet as pq
import pytest

from conftest import IN_MEMORY, make_sample
from corpus.ids import sample_id
from corpus.report import REPORT_NAME
from corpus.shards import read_shard
from filters.base import Reject, checked
from pipelines.common import plan_execution, run_pipeline
from pipelines.run_record import RECORD_NAME
from pipelines.sinks import MARKER_DIR, SPILL_DIR, Choice, Counts, RunSpec
from pipelines.tasks import plan_tasks, run_tasks

DATASET = "plumbing"
REASON_ORDER = ["caption_too_short"]
NUMBERS_PER_TASK = 5


def caption_too_short(sample):
    return "caption_too_short" if len(sample.text) < 8 else None


class ReadNumbers:
    """The work of the plumbing pipeline: unit `i` becomes a sample (dropped by the rule when
    its caption is short), a named reader reject (every 7th) or an exception (every 11th). It
    can note its process id (which workers ran) and sleep (to be killed midway)."""

    def __init__(self, pid_dir: str | None = None, seconds: float = 0.0):
        self.pid_dir, self.seconds = pid_dir, seconds

    def setup(self, worker: int) -> None:
        pass

    def __call__(self, i: int):
        if self.pid_dir:
            open(os.path.join(self.pid_dir, str(os.getpid())), "a").close()
        time.sleep(self.seconds)
        yield Counts({"read": 1})
        key = f"k{i}"
        if i % 7 == 3:
            yield Reject(sample_id(DATASET, key), DATASET, f"mem://{key}", key, "corrupt_image",
                         "errored", "not an image")
            return
        if i % 11 == 5:
            raise ValueError(f"cannot read {key}")
        text = "short" if i % 5 == 0 else f"caption number {i} of the plumbing test"
        yield checked(make_sample(key=key, text=text, dataset=DATASET, images=[_image(i)]),
                      [caption_too_short])


def _image(i: int):
    from conftest import make_image

    return make_image(16 + i % 5, 12, ((37 * i) % 256, (91 * i) % 256, 128))


def plumbing_spec(output_dir: str, count: int, samples_per_shard: int, **fields) -> RunSpec:
    return RunSpec("plumbing", DATASET, "captioning", output_dir, REASON_ORDER,
                   formats=["webdataset", "parquet"], samples_per_shard=samples_per_shard,
                   config={"count": count}, **fields)


def build_plumbing_pipeline(output_dir: str, count: int, samples_per_shard: int,
                            work: ReadNumbers | None = None):
    tasks = plan_tasks(list(range(count)), NUMBERS_PER_TASK)
    spec = plumbing_spec(output_dir, count, samples_per_shard)

    def build(pipeline, execution):
        run_tasks(pipeline, [spec], work or ReadNumbers(), tasks, execution)
    return build


def run_plumbing(output_dir, beam_argv, count=40, samples_per_shard=4, work=None):
    return run_pipeline(build_plumbing_pipeline(str(output_dir), count, samples_per_shard, work),
                        beam_argv, str(output_dir))


def expected_counts(count: int) -> dict:
    errored = {"ValueError": 0, "corrupt_image": 0}
    dropped, kept = 0, 0
    for i in range(count):
        if i % 7 == 3:
            errored["corrupt_image"] += 1
        elif i % 11 == 5:
            errored["ValueError"] += 1
        elif i % 5 == 0:
            dropped += 1
        else:
            kept += 1
    return {"kept": kept, "dropped": {"caption_too_short": dropped} if dropped else {},
            "errored": {k: v for k, v in sorted(errored.items()) if v}}


def output_files(output_dir) -> dict[str, bytes]:
    """Every file of a run, relative path -> bytes; the report without its timing and resume
    count, the markers without their fingerprints (they hold the inputs' modification times),
    the run's record without its start time and the inputs' modification times, no plot."""
    files = {}
    for root, _, names in os.walk(output_dir):
        for name in names:
            path = os.path.join(root, name)
            relative = os.path.relpath(path, output_dir)
            if os.path.basename(relative) == "report.png":
                continue
            with open(path, "rb") as f:
                data = f.read()
            if os.path.basename(relative) == REPORT_NAME:
                report = json.loads(data)
                report.pop("wall_seconds", None)
                report.pop("tasks_reused", None)
                data = json.dumps(report, sort_keys=True).encode()
            elif os.path.basename(relative) == RECORD_NAME:
                record = json.loads(data)
                record.pop("started")
                for file in record["inputs"].get("files", []):
                    file[2] = None  # the modification time
                data = json.dumps(record, sort_keys=True).encode()
            elif MARKER_DIR in relative.split(os.sep):
                marker = json.loads(data)
                marker.pop("fingerprint", None)
                data = json.dumps(marker, sort_keys=True).encode()
            files[relative] = data
    return files


def assert_same_outputs(first, second):
    a, b = output_files(first), output_files(second)
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name] == b[name], f"{name} differs"


# ---- the plumbing on the in-memory runner ------------------------------------------------------

def test_plumbing_accounts_for_every_input(tmp_path, beam_argv):
    report = run_plumbing(tmp_path, beam_argv, count=40, samples_per_shard=4)
    expected = expected_counts(40)
    assert (report["input"], report["kept"]) == (40, expected["kept"])
    assert report["dropped"] == expected["dropped"]
    assert report["errored"] == expected["errored"]
    assert report["stats"] == {"read": 40}
    tasks = 40 // NUMBERS_PER_TASK
    ids = []
    for shard in report["shards"]:
        samples = list(read_shard(str(tmp_path / shard["path"])))
        assert len(samples) == shard["samples"] <= 4
        # task i wrote the samples of its numbers, in their order
        name = shard["path"].split("/")[1]
        task = int(name.split("-")[1])
        assert name.split("-")[3].split(".")[0] == f"{tasks:05d}"
        numbers = [int(s.source.key[1:]) for s in samples]
        assert numbers == sorted(numbers)
        assert all(n // NUMBERS_PER_TASK == task for n in numbers)
        ids += [s.id for s in samples]
    assert len(ids) == len(set(ids)) == expected["kept"]
    # one marker per task, rejects or shards or both
    assert sorted(os.listdir(tmp_path / MARKER_DIR)) == [
        f"captioning-{i:05d}-of-{tasks:05d}.json" for i in range(tasks)]
    assert not [n for n in os.listdir(tmp_path / "shards") if ".tmp-" in n]
    assert not (tmp_path / SPILL_DIR).exists()
    rows = 0
    for name in os.listdir(tmp_path / "rejects"):
        task = int(name.split("-")[1])
        table = pq.read_table(tmp_path / "rejects" / name).to_pylist()
        assert all(row["key"] == "" or int(row["key"][1:]) // NUMBERS_PER_TASK == task
                   for row in table)
        rows += len(table)
    assert rows == report["dropped_total"] + report["errored_total"]


def test_a_unit_that_fails_partway_is_one_errored_unit(tmp_path, beam_argv):
    report = run_plumbing(tmp_path, beam_argv, count=6)
    assert report["errored"] == {"ValueError": 1, "corrupt_image": 1}
    table = pq.read_table(tmp_path / "rejects" / "rejects-00001-of-00002.parquet").to_pylist()
    (failed,) = [row for row in table if row["reason"] == "ValueError"]
    assert (failed["uri"], failed["detail"]) == ("5", "ValueError: cannot read k5")


def test_empty_input_writes_a_report_and_no_shards(tmp_path, beam_argv):
    report = run_plumbing(tmp_path, beam_argv, count=0)
    assert (report["input"], report["kept"], report["shards"]) == (0, 0, [])
    assert not (tmp_path / "shards").exists()


@pytest.mark.parametrize("workers", [2, 3])
def test_worker_processes_write_the_bytes_of_one(tmp_path, workers):
    pids = tmp_path / "pids"
    pids.mkdir()
    run_plumbing(tmp_path / "one", IN_MEMORY)
    run_plumbing(tmp_path / "many", [f"--workers={workers}"], work=ReadNumbers(str(pids)))
    assert_same_outputs(tmp_path / "one", tmp_path / "many")
    ran_in = {int(name) for name in os.listdir(pids)}
    assert ran_in and os.getpid() not in ran_in  # forked workers did the work


def test_execution_plans():
    options, runner, execution = plan_execution([])
    assert runner is not None and execution.local and execution.workers == (os.cpu_count() or 1)
    _, _, execution = plan_execution(["--direct_num_workers=7"])
    assert (execution.local, execution.workers) == (True, 7)
    _, _, execution = plan_execution(IN_MEMORY)
    assert (execution.local, execution.workers) == (True, 1)
    _, _, execution = plan_execution([*IN_MEMORY, "--workers=3"])
    assert (execution.local, execution.workers) == (True, 3)
    options, runner, execution = plan_execution(
        ["--runner=DirectRunner", "--direct_running_mode=multi_processing",
         "--direct_num_workers=2"])
    assert runner is None and not execution.local and execution.workers == 1
    assert options.get_all_options()["direct_num_workers"] == 2
    options, runner, execution = plan_execution(["--runner=DataflowRunner", "--workers", "8"])
    assert (runner, execution.local, execution.workers) == (None, False, 8)
    assert "--workers" not in " ".join(options.get_all_options(retain_unknown_options=True))


def test_rerun_skips_finished_tasks_and_redoes_damaged_ones(tmp_path, beam_argv):
    run_plumbing(tmp_path, beam_argv)
    shards = sorted((tmp_path / "shards").iterdir())
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in shards}
    damaged = shards[0]
    data = bytearray(damaged.read_bytes())
    data[600] ^= 0xFF  # same size, other bytes: only the checksum can tell
    damaged.write_bytes(bytes(data))
    (tmp_path / "shards" / "captioning-00000-of-00003.tar").write_bytes(b"old task count")
    pids = tmp_path.parent / (tmp_path.name + "-pids")
    pids.mkdir()
    run_plumbing(tmp_path, beam_argv, work=ReadNumbers(str(pids)))
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns)
             for p in (tmp_path / "shards").iterdir()}
    assert sorted(after) == sorted(before)  # the stale file of another task count is gone
    task = damaged.name.split("-")[1]
    for name in before:
        if name.split("-")[1] == task:
            assert after[name] != before[name], f"{name} was not rewritten"
        else:
            assert after[name] == before[name], f"{name} was rewritten"
    clean = tmp_path.parent / (tmp_path.name + "-clean")
    run_plumbing(clean, beam_argv)
    assert_same_outputs(tmp_path, clean)


def test_a_changed_run_is_redone(tmp_path, beam_argv):
    run_plumbing(tmp_path, beam_argv, count=12, samples_per_shard=100)
    first = (tmp_path / "shards" / "captioning-00000-of-00003.tar").stat().st_mtime_ns
    run_plumbing(tmp_path, beam_argv, count=12, samples_per_shard=2)  # other shard sizes
    assert (tmp_path / "shards" / "captioning-00000-of-00003.tar").stat().st_mtime_ns != first
    assert (tmp_path / "shards" / "captioning-00000-of-00003-p1.tar").exists()
    report = json.loads((tmp_path / REPORT_NAME).read_text())
    assert report["kept"] == expected_counts(12)["kept"]


TEXTS = ["a cat", "a dog", "a cat", "a bird", "a dog", "a cat"]


class Texts:
    """Unit i is a sample with caption TEXTS[i]; it notes the units it was called for in
    `notes` (a folder: the runner works on a copy of the work)."""

    def __init__(self, notes=None):
        self.notes = notes

    def setup(self, worker):
        pass

    def __call__(self, i):
        if self.notes is not None:
            (self.notes / str(i)).touch()
        yield make_sample(key=f"k{i}", text=TEXTS[i], dataset=DATASET)

    def called(self) -> list[int]:
        return sorted(int(name) for name in os.listdir(self.notes))


def choice_spec(output_dir) -> RunSpec:
    choice = Choice(lambda s: (s.text, int(s.source.key[1:]), s.id), "same_text")
    return RunSpec("unit", DATASET, "unit", str(output_dir), ["same_text"], samples_per_shard=2,
                   stats={"fixed": 1}, kept_counts=lambda s: {"kept_texts": {s.text: 1}},
                   choice=choice)


def run_choice(output_dir, beam_argv, work=None):
    tasks = plan_tasks(list(range(6)), 2)
    spec = choice_spec(output_dir)
    return run_pipeline(
        lambda pipeline, execution: run_tasks(pipeline, [spec], work or Texts(), tasks,
                                              execution),
        beam_argv, str(output_dir))


def test_a_choice_sees_every_task_and_kept_counts_follow_it(tmp_path, beam_argv):
    """The first of the samples sharing a caption is kept, across tasks; only their keys meet.
    `kept_counts` counts over the samples written."""
    report = run_choice(tmp_path, beam_argv)
    assert (report["input"], report["kept"], report["dropped"]) == (6, 3, {"same_text": 3})
    assert report["stats"] == {"fixed": 1, "kept_texts": {"a bird": 1, "a cat": 1, "a dog": 1}}
    kept = sorted(s.source.key for shard in report["shards"]
                  for s in read_shard(str(tmp_path / shard["path"])))
    assert kept == ["k0", "k1", "k3"]
    assert not (tmp_path / SPILL_DIR).exists()
    first = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "shards").iterdir()}
    run_choice(tmp_path, beam_argv)  # the same choice: the files are kept
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "shards").iterdir()} == first


def test_a_rerun_after_a_crash_skips_the_tasks_already_staged(tmp_path, beam_argv):
    from pipelines.tasks import run_task

    spec, tasks = choice_spec(tmp_path / "out"), plan_tasks(list(range(6)), 2)
    (tmp_path / "first").mkdir()
    (tmp_path / "again").mkdir()
    crashed = Texts(tmp_path / "first")
    run_task([spec], crashed, tasks[1], len(tasks), staged=True)  # staged, then the run died
    assert crashed.called() == [2, 3]
    again = Texts(tmp_path / "again")
    run_choice(tmp_path / "out", beam_argv, again)
    assert again.called() == [0, 1, 4, 5]
    run_choice(tmp_path / "clean", beam_argv)
    assert_same_outputs(tmp_path / "out", tmp_path / "clean")


def test_reject_table_columns_are_the_reject_fields():
    import dataclasses

    from pipelines.sinks import REJECT_SCHEMA

    assert [f.name for f in dataclasses.fields(Reject)] == REJECT_SCHEMA.names + ["task"]


# ---- run as a script: the process the resume test kills ----------------------------------------

class _PausingFile:
    """Sleeps after the first write, so a kill lands while the file is half written."""

    def __init__(self, raw, seconds: float):
        self.raw, self.seconds, self.paused = raw, seconds, False

    def write(self, data):
        written = self.raw.write(data)
        if not self.paused:
            self.paused = True
            self.raw.flush()
            time.sleep(self.seconds)
        return written

    def __getattr__(self, name):
        return getattr(self.raw, name)


def _slow_writers(seconds: float) -> None:
    """Make every shard file take `seconds` to write, so a kill lands between tasks."""
    from corpus import shards

    for name, writer in list(shards.WRITERS.items()):
        def slow(samples, fileobj, writer=writer):
            return writer(samples, _PausingFile(fileobj, seconds))
        shards.WRITERS[name] = slow


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("output")
    parser.add_argument("--count", type=int, default=40)
    parser.add_argument("--samples-per-shard", type=int, default=4)
    parser.add_argument("--slow-read", type=float, default=0.0)
    parser.add_argument("--slow-write", type=float, default=0.0)
    parser.add_argument("--pid-dir", help="note the reading processes here")
    args = parser.parse_args(argv)
    if args.slow_write:
        _slow_writers(args.slow_write)
    report = run_plumbing(args.output, IN_MEMORY, args.count, args.samples_per_shard,
                          ReadNumbers(args.pid_dir, args.slow_read))
    print(hashlib.sha256(json.dumps(report["shards"]).encode()).hexdigest())
    return 0


if __name__ == "__main__":
    sys.exit(main())

