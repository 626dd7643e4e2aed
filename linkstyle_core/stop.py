"""Stopping a long computation at its next batch.

Python cannot stop a thread from outside. A Prefect task runs in a worker thread, so a Ctrl-C
or SIGTERM reached only the main thread, and the process could not exit before the running task
ended on its own: minutes for a stage-3 null control of 256 directions. Every loop over batches
(stage 1's sampling, stage 3's tuning and null, the segmenter's training, counterfactual
steps) therefore calls ``check`` once per batch; ``request`` makes the next call raise
``StopRequested``, so a stop takes at most one batch. Nothing is committed by the stopped task;
committed artifacts and shards are kept.

Who calls ``request``: ``on_signals`` around a flow's stages. Prefect's flow engine replaces the
SIGTERM handler while a flow runs, and on SIGTERM it first waits for the running task to end
(its task runner's shutdown), so a handler of the caller's runs only after that; ``on_signals``
chains a handler in front of Prefect's instead.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

_STOP = threading.Event()
_WHY: list[str] = []  # what asked for the stop, e.g. "SIGTERM"


class StopRequested(RuntimeError):
    """The process was asked to stop (Ctrl-C or SIGTERM); raised at a batch boundary."""


def request(why: str = "SIGINT") -> None:
    """Ask every running loop to stop at its next batch (safe in a signal handler); ``why``:
    what asked (a signal's name)."""
    _WHY[:] = [why]
    _STOP.set()


def clear() -> None:
    """Forget an earlier request (a new command in the same process)."""
    _STOP.clear()
    _WHY.clear()


def requested() -> str | None:
    """What asked for a stop (a signal's name), or None if nothing did."""
    return _WHY[0] if _STOP.is_set() and _WHY else None


def check() -> None:
    """Raise ``StopRequested`` if a stop was requested; call it once per batch."""
    if _STOP.is_set():
        raise StopRequested("stopped at a batch boundary because the process was asked to "
                            "stop (Ctrl-C or SIGTERM); rerun to resume")


@contextlib.contextmanager
def on_signals() -> Iterator[None]:
    """While the block runs, SIGTERM and SIGINT first ``request`` a stop, then go on to the
    handler that was installed before (Prefect's, the command line's, Python's). In the main
    thread only (elsewhere signals cannot be handled, and nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict[int, Any] = {}

    def chained(signum: int, frame: Any) -> None:
        request(signal.Signals(signum).name)
        handler = previous[signum]
        if callable(handler):
            handler(signum, frame)
        elif handler == signal.SIG_DFL:  # what the signal would have done: end the process
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        previous[signum] = signal.signal(signum, chained)
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
