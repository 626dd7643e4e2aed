"""Progress of a long loop: a bar on a terminal, one line when it ends everywhere else.

A progress bar redraws itself with carriage returns; written into a log file or a Prefect
worker's log it became hundreds of kilobytes of half-lines. So the bar is drawn only when
stderr is a terminal; otherwise the loop says once, when it is done, what it did: its name, its
count, its time and rate, as an INFO record of the ``linkstyle_core.progress`` logger (the
command line prints those as ``linkstyle: ...`` lines on stderr).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

LOG = logging.getLogger("linkstyle_core.progress")


def on_terminal() -> bool:
    """True when stderr is an interactive terminal (where a bar can redraw itself)."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


@contextmanager
def progress(total: int, desc: str, unit: str = "img") -> Iterator[Callable[[int], None]]:
    """Yield ``update(n)``, to call as ``n`` more of ``total`` are done. On a terminal a bar
    shows it (and vanishes at the end); elsewhere one line is logged when the block ends
    without an error: ``desc: N unit in T s (R unit/s)``."""
    t0 = time.perf_counter()
    done = 0
    bar = None
    if on_terminal():
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True)

    def update(n: int) -> None:
        nonlocal done
        done += n
        if bar is not None:
            bar.update(n)

    try:
        yield update
    finally:
        if bar is not None:
            bar.close()
    if bar is None:
        seconds = time.perf_counter() - t0
        LOG.info("%s: %d %s in %.1f s (%.1f %s/s)", desc, done, unit, seconds,
                 done / max(seconds, 1e-9), unit)
