"""Resume and exactly-once: a run killed with SIGKILL midway, then run again into the same
directory, ends with exactly the files of a clean run; buckets finished and verified before the
kill are kept as they are, and no half-written file ever carries a final name."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import IN_MEMORY
from corpus.report import REPORT_NAME
from corpus.shards import read_shard
from pipelines.sinks import MARKER_DIR
from test_sinks import assert_same_outputs, run_plumbing

pytestmark = pytest.mark.slow

SCRIPT = str(Path(__file__).with_name("test_sinks.py"))
COUNT, PER_SHARD = 40, 4


@pytest.fixture(scope="module")
def clean_output(tmp_path_factory):
    output = tmp_path_factory.mktemp("clean")
    run_plumbing(output, IN_MEMORY, COUNT, PER_SHARD)
    return output


def run_until(output: Path, ready, *flags: str) -> None:
    """Start the plumbing pipeline in a process of its own; SIGKILL it once `ready()`."""
    process = subprocess.Popen([sys.executable, SCRIPT, str(output), "--count", str(COUNT),
                                "--samples-per-shard", str(PER_SHARD), *flags],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 600
        while not ready():
            assert process.poll() is None, "the run ended before it could be killed"
            assert time.time() < deadline, "the run never reached the point to kill it"
            time.sleep(0.02)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait()


def markers(output: Path) -> list[Path]:
    folder = output / MARKER_DIR
    return sorted(p for p in folder.iterdir() if ".tmp-" not in p.name) if folder.exists() else []


def assert_final_names_hold_whole_files(output: Path) -> None:
    for path in sorted((output / "shards").glob("*")):
        if ".tmp-" not in path.name:
            list(read_shard(str(path)))  # raises on a truncated tar or Parquet file


def test_driver_killed_between_buckets_resumes_where_it_stopped(tmp_path, clean_output):
    total_buckets = len(markers(clean_output))
    run_until(tmp_path, lambda: len(markers(tmp_path)) >= 2, "--slow-write", "0.25")
    done = markers(tmp_path)
    half_written = [p.name for p in (tmp_path / "shards").iterdir() if ".tmp-" in p.name]
    assert 2 <= len(done) < total_buckets
    assert not (tmp_path / REPORT_NAME).exists()
    assert_final_names_hold_whole_files(tmp_path)
    finished = {}
    for marker in done:
        stem = marker.name[:-len(".json")]
        for path in (tmp_path / "shards").glob(stem + ".*"):
            finished[path.name] = (path.stat().st_ino, path.stat().st_mtime_ns)
    assert len(finished) == 2 * len(done)  # tar and Parquet of each finished bucket

    run_plumbing(tmp_path, IN_MEMORY, COUNT, PER_SHARD)
    assert_same_outputs(tmp_path, clean_output)  # the same files: no temporary file is left
    assert all(not (tmp_path / "shards" / name).exists() for name in half_written)
    for name, identity in finished.items():
        path = tmp_path / "shards" / name
        assert (path.stat().st_ino, path.stat().st_mtime_ns) == identity, f"{name} was redone"


def test_driver_killed_while_reading_resumes_from_nothing(tmp_path, clean_output):
    pids = tmp_path.parent / (tmp_path.name + "-pids")
    pids.mkdir()
    run_until(tmp_path / "out", lambda: any(pids.iterdir()), "--slow-read", "0.1",
              "--pid-dir", str(pids))
    assert not (tmp_path / "out" / "shards").exists()
    run_plumbing(tmp_path / "out", IN_MEMORY, COUNT, PER_SHARD)
    assert_same_outputs(tmp_path / "out", clean_output)
