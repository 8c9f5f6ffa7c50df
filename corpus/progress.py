"""The progress line of a long local run: tasks done of all, inputs handled, their rate and the
time left, redrawn in place on stderr about once a second.

The processes that run a step's tasks count inputs in one shared counter (forked children
inherit it); the process that owns the line draws it. The line is off with `--quiet` and when
stderr is not a terminal, and then nothing is counted either. It is cleared when the step ends:
the run's summary says the rest. The time left is estimated from finished tasks.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
import time
from typing import Iterator

from tqdm import tqdm

REFRESH_SECONDS = 1.0
quiet = False  # `--quiet`: no line at all

_current: Progress | None = None


class Progress:
    def __init__(self, label: str, tasks: int):
        self._inputs = multiprocessing.get_context("fork").Value("q", 0)
        self._owner = os.getpid()
        self._shown = -1
        self._drawn = time.monotonic()
        self._bar = tqdm(total=tasks, desc=label, unit="task", leave=False,
                         mininterval=REFRESH_SECONDS, dynamic_ncols=True,
                         bar_format="{desc}: {n_fmt}/{total_fmt} tasks{postfix} "
                                    "[{elapsed} elapsed, {remaining} left]")
        self._show_inputs()

    def input_done(self) -> None:
        with self._inputs.get_lock():
            self._inputs.value += 1
        if os.getpid() == self._owner:  # a run in one process draws as it goes
            self.refresh()

    def task_done(self) -> None:
        self._show_inputs()
        self._bar.update(1)

    def refresh(self) -> None:
        """Redraw with the latest input count when the line is due."""
        if time.monotonic() - self._drawn >= REFRESH_SECONDS:
            self._drawn = time.monotonic()
            self._show_inputs()
            self._bar.refresh()

    def _show_inputs(self) -> None:
        inputs = self._inputs.value
        if inputs != self._shown:
            elapsed = max(self._bar.format_dict["elapsed"], 1e-9)
            self._bar.set_postfix_str(f"{inputs:,} inputs ({inputs / elapsed:,.1f}/s)",
                                      refresh=False)
            self._shown = inputs

    def close(self) -> None:
        self._bar.close()


@contextlib.contextmanager
def tracking(label: str, tasks: int) -> Iterator[Progress]:
    """The progress line of one step of `tasks` tasks, current while the step runs; None when
    no line is shown, so that the step's processes count nothing (a lock per input)."""
    global _current
    if quiet or not sys.stderr.isatty():
        yield None
        return
    progress = Progress(label, tasks)
    previous, _current = _current, progress
    try:
        yield progress
    finally:
        _current = previous
        progress.close()


def input_done() -> None:
    """One input handled, in whichever process of the step handled it."""
    if _current is not None:
        _current.input_done()


def refresh() -> None:
    if _current is not None:
        _current.refresh()
