"""Two clean runs give byte-identical shards, rejects and reports (minus timings), whether the
runner works in one process or spreads bundles over worker processes."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import IN_MEMORY
from test_sinks import assert_same_outputs, run_plumbing


def test_two_in_memory_runs_are_byte_identical(tmp_path):
    run_plumbing(tmp_path / "a", IN_MEMORY, count=30, samples_per_shard=4)
    run_plumbing(tmp_path / "b", IN_MEMORY, count=30, samples_per_shard=4)
    assert_same_outputs(tmp_path / "a", tmp_path / "b")


@pytest.mark.slow
def test_multi_process_default_runner_matches_in_memory(tmp_path, monkeypatch):
    # The default runner's workers are fresh processes: they find the test modules this way,
    # as deployed workers find the installed project.
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))
    run_plumbing(tmp_path / "a", IN_MEMORY, count=30, samples_per_shard=4)
    run_plumbing(tmp_path / "b", ["--direct_num_workers=2"], count=30, samples_per_shard=4)
    assert_same_outputs(tmp_path / "a", tmp_path / "b")
