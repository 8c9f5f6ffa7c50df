"""The plumbing on a real distributed engine: Beam's DaskRunner on a `dask.distributed` cluster
of two single-threaded worker processes on loopback, started here. Same bytes as DirectRunner,
and a worker killed midway costs nothing but time."""
from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from test_sinks import ReadNumbers, assert_same_outputs, expected_counts, run_plumbing

pytestmark = pytest.mark.slow

COUNT = 40


@pytest.fixture(scope="module")
def dask_address():
    from distributed import LocalCluster

    # Worker processes are spawned with this process's sys.path, so they import the test
    # modules the pipeline's functions come from, as a deployed worker imports the project.
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address=None, silence_logs=40)
    try:
        yield cluster.scheduler_address
    finally:
        _close_clients()
        cluster.close()


def _close_clients():
    """The runner leaves its client open; close it before the cluster goes, or it retries."""
    from distributed import default_client

    while True:
        try:
            client = default_client()
        except ValueError:
            return
        client.close()


def dask_argv(address: str) -> list[str]:
    return ["--runner=apache_beam.runners.dask.dask_runner.DaskRunner",
            f"--dask_client_address={address}", "--dask_npartitions=4"]


@pytest.fixture(scope="module")
def direct_output(tmp_path_factory):
    from conftest import IN_MEMORY

    output = tmp_path_factory.mktemp("direct")
    run_plumbing(output, IN_MEMORY, count=COUNT)
    return output


def test_dask_writes_the_same_bytes_as_direct(tmp_path, dask_address, direct_output):
    pids = tmp_path / "pids"
    pids.mkdir()
    report = run_plumbing(tmp_path / "out", dask_argv(dask_address), count=COUNT,
                          work=ReadNumbers(pid_dir=str(pids)))
    assert report["kept"] == expected_counts(COUNT)["kept"]
    assert_same_outputs(tmp_path / "out", direct_output)
    workers = {int(name) for name in os.listdir(pids)}
    assert os.getpid() not in workers
    assert len(workers) >= 2, f"the work ran in {len(workers)} process(es) only"


def test_a_worker_killed_midway_changes_nothing(tmp_path, dask_address, direct_output):
    pids = tmp_path / "pids"
    pids.mkdir()
    killed = []

    def kill_one_worker():
        deadline = time.time() + 600
        while time.time() < deadline and not killed:
            names = os.listdir(pids)
            if names:
                pid = int(names[0])
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            time.sleep(0.05)

    killer = threading.Thread(target=kill_one_worker, daemon=True)
    killer.start()
    report = run_plumbing(tmp_path / "out", dask_argv(dask_address), count=COUNT,
                          work=ReadNumbers(pid_dir=str(pids), seconds=0.1))
    killer.join()
    assert killed, "no worker was killed"
    assert report["input"] == COUNT
    assert_same_outputs(tmp_path / "out", direct_output)

