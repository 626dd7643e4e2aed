"""Stopping a long computation at its next batch.

Python cannot stop a thread from outside. A Prefect task runs in a worker thread, so a Ctrl-C
or SIGTERM reached only the main thread, and the process could not exit before the running task
ended on its own: minutes for a stage-3 null control of 256 directions. Every loop over batches
(stage 1's sampling, stage 3's tuning and null, the segmenter's training, counterfactual
steps) therefore calls ``check`` once per batch; ``request`` (called by the command line's
signal handlers) makes the next call raise ``StopRequested``, so a stop takes at most one batch.
Nothing is committed by the stopped task; committed artifacts and shards are kept.
"""

from __future__ import annotations

import threading

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
