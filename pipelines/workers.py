"""The processes of one machine that run a run's tasks.

A run's heavy step gets a list of tasks and a number of processes. With one process the tasks
run here, one after another. With more, a pool of processes forked from this one runs them, each
task in one process from start to end: forking shares the modules this process has imported
(Beam, torch, the project), so a worker starts in milliseconds instead of the seconds a fresh
interpreter takes to import them. Only a task's description goes to a worker and only its small
result comes back; `traffic` counts the bytes of what comes back.

Workers are forked before they touch torch's thread pools or a GPU, and each keeps torch to one
thread: the machine's cores are shared by processes, not threads.
"""
from __future__ import annotations

import gc
import itertools
import multiprocessing
import os
import pickle
import signal
import sys
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any, Iterable, Iterator, Protocol

from corpus import progress

IN_FLIGHT_PER_WORKER = 4  # tasks submitted ahead, so a worker never waits for its next one
traffic: Counter = Counter()  # results and their pickled bytes that came back from workers

_worker_job = None  # the job a pool worker runs, set when it starts


class Job(Protocol):
    """What a pool runs: `setup(worker)` once in each worker process (worker numbers 0..n-1),
    then `run(task)` for each task; a result must pickle."""

    def setup(self, worker: int) -> None: ...

    def run(self, task: Any) -> Any: ...


def one_thread_each() -> None:
    """Torch and the BLAS libraries to one thread: the processes share the cores. Torch reads
    the variable when it is imported; one already imported is told directly."""
    os.environ["OMP_NUM_THREADS"] = "1"
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


def _start_worker(job: Job, numbers) -> None:
    global _worker_job
    # Ctrl-C reaches every process of the terminal's group: the parent alone decides, and
    # stops the workers itself (`Workers.close`).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with numbers.get_lock():
        number = numbers.value
        numbers.value += 1
    one_thread_each()
    job.setup(number)
    _worker_job = job


def _run_in_worker(task) -> bytes:
    return pickle.dumps(_worker_job.run(task), protocol=pickle.HIGHEST_PROTOCOL)


class Workers:
    """A job's processes: this one, or a pool of `processes` forked workers started at the first
    tasks and kept until `close` (a runner worker that gets its tasks one by one reuses them)."""

    def __init__(self, job: Job, processes: int):
        self.job, self.processes = job, processes
        self._pool = None
        self._set_up = False

    def run(self, tasks: Iterable[Any]) -> Iterator[Any]:
        """Each task's result, in the order they finish; pool workers take the next task as
        they finish one."""
        # What is alive now (Beam, torch, the project's modules) lives until the run ends: out
        # of the collector's sight, its passes no longer walk it, and forked workers leave
        # its pages shared instead of touching them.
        gc.freeze()
        if self.processes <= 1:
            if not self._set_up:
                self.job.setup(0)
                self._set_up = True
            yield from map(self.job.run, tasks)  # nothing crosses a process: nothing counted
            return
        if self._pool is None:
            context = multiprocessing.get_context("fork")
            self._pool = ProcessPoolExecutor(self.processes, mp_context=context,
                                             initializer=_start_worker,
                                             initargs=(self.job, context.Value("i", 0)))
        # A few tasks per worker in flight, the next submitted as one finishes: a run of 500k
        # tasks neither holds 500k futures nor scans them at every completion.
        waiting, pending = iter(tasks), set()
        while True:
            for task in itertools.islice(waiting, IN_FLIGHT_PER_WORKER * self.processes
                                         - len(pending)):
                pending.add(self._pool.submit(_run_in_worker, task))
            if not pending:
                return
            done, pending = wait(pending, timeout=progress.REFRESH_SECONDS,
                                 return_when=FIRST_COMPLETED)
            progress.refresh()
            for future in done:
                data = future.result()
                _count(data)
                yield pickle.loads(data)

    def close(self, finished: bool = True) -> None:
        """Ends the pool: after its tasks when the step finished, at once when it did not (an
        interrupt, a failed task): queued tasks are dropped and running ones stopped."""
        if self._pool is None:
            return
        if finished:
            self._pool.shutdown()
        else:
            processes = list((getattr(self._pool, "_processes", None) or {}).values())
            self._pool.shutdown(wait=False, cancel_futures=True)
            for process in processes:
                process.terminate()
            for process in processes:
                process.join()
        self._pool = None


def _count(data: bytes) -> None:
    traffic["results"] += 1
    traffic["bytes"] += len(data)

