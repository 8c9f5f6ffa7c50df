"""Clean runs give byte-identical shards, rejects and reports (minus timings) whatever runs them:
one process, 2 or 4 forked worker processes, or Beam's own multi-process DirectRunner (its
workers are fresh processes). The Dask runner is compared in tests/test_dask_runner.py."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import IN_MEMORY
from test_sinks import assert_same_outputs, run_plumbing


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    output = tmp_path_factory.mktemp("one")
    run_plumbing(output, IN_MEMORY, count=30, samples_per_shard=4)
    return output


def test_two_in_memory_runs_are_byte_identical(tmp_path, one_process):
    run_plumbing(tmp_path, IN_MEMORY, count=30, samples_per_shard=4)
    assert_same_outputs(tmp_path, one_process)


@pytest.mark.parametrize("workers", [2, 4])
def test_worker_processes_write_the_bytes_of_one_process(tmp_path, one_process, workers):
    run_plumbing(tmp_path, [f"--workers={workers}"], count=30, samples_per_shard=4)
    assert_same_outputs(tmp_path, one_process)


@pytest.mark.slow
def test_beams_multi_process_runner_matches(tmp_path, one_process, monkeypatch):
    # Beam's workers are fresh processes: they find the test modules this way, as deployed
    # workers find the installed project.
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))
    run_plumbing(tmp_path, ["--runner=DirectRunner", "--direct_running_mode=multi_processing",
                            "--direct_num_workers=2"], count=30, samples_per_shard=4)
    assert_same_outputs(tmp_path, one_process)
