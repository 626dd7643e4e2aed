"""The ``linkstyle`` command: its parser, assembled from the command groups' modules, and
``main``, which runs one command and turns what went wrong into one line and an exit code.

Heavy imports (torch, prefect) happen inside the commands that need them, so ``--help``,
``config`` and ``status`` answer at once.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import warnings
from collections.abc import Iterator, Sequence
from typing import NoReturn

from flows import startup
from flows.cli import clean, config, explore, inspect, labels, run, toy
from flows.cli.common import Parser
from flows.cli.errors import describe, install_log_filter, is_user_error, show_warning
from linkstyle_core import stop
from storage.errors import StoreWarning


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread: the same clean shutdown as a Ctrl-C (the flow run is
    marked crashed, the temporary Prefect server is stopped, committed artifacts are kept)."""


@contextlib.contextmanager
def _signals_as_interrupt() -> Iterator[None]:
    """While the block runs, SIGTERM raises ``Terminated`` (a KeyboardInterrupt) in the main
    thread, as SIGINT raises KeyboardInterrupt, and both ask every running loop to stop at its
    next batch (``linkstyle_core.stop``). Python's default for SIGTERM would end the process at
    once, skipping every ``finally`` and ``atexit`` hook (the temporary Prefect server was left
    running); and a task in a worker thread ran on to its end (minutes for the null control)
    before the process could exit."""

    def terminate(signum: int, frame: object) -> NoReturn:
        stop.request("SIGTERM")
        raise Terminated()

    def interrupt(signum: int, frame: object) -> NoReturn:
        stop.request("SIGINT")
        raise KeyboardInterrupt()

    stop.clear()
    try:
        previous = {sig: signal.signal(sig, handler)
                    for sig, handler in ((signal.SIGTERM, terminate), (signal.SIGINT, interrupt))}
    except ValueError:  # not the main thread (an in-process caller): leave signals alone
        yield
        return
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command, each group registered by its module."""
    parser = Parser(
        prog="linkstyle",
        description="Make the learned features of image classifiers visible and measurable "
        "(Linking in Style). Defaults analyse the bundled toy world.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in (run, inspect, explore, labels, toy, clean, config):
        group.register(sub)
    return parser


def _closed_stdout() -> int:
    """The reader of our output went away (``linkstyle status | head``): say nothing more,
    and exit as a process killed by SIGPIPE would (128 + 13)."""
    with contextlib.suppress(OSError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 141


@contextlib.contextmanager
def _own_log_lines() -> Iterator[None]:
    """linkstyle's own log lines (``linkstyle_core``: e.g. which entries of a network pickle
    were left unloaded) on stderr as ``linkstyle: ...``, from INFO up; Prefect's logging,
    whose level is WARNING in a local run, would hide them."""
    logger = logging.getLogger("linkstyle_core")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("linkstyle: %(message)s"))
    before = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(before[0])
        logger.propagate = before[1]


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. Exit codes: 0 done, 1 a check failed (``status --verify``, ``toy
    evaluate``), 2 a user error (one ``linkstyle: error:`` line, no traceback), 130 interrupted
    (Ctrl-C), 141 the reader of the output went away (a closed pipe), 143 terminated (SIGTERM);
    anything else is a bug and keeps its traceback."""
    parser = build_parser()
    install_log_filter()
    args: argparse.Namespace | None = None
    with _signals_as_interrupt(), _own_log_lines(), warnings.catch_warnings():
        warnings.showwarning = show_warning
        warnings.simplefilter("always", StoreWarning)
        try:
            args = parser.parse_args(argv)
            code = int(args.func(args))
            sys.stdout.flush()  # a closed pipe shows here, not at exit
            return code
        except BrokenPipeError:
            return _closed_stdout()
        except Exception as exc:
            if stop.requested():  # a task stopped by the signal raised first: still a stop
                return _stopped(stop.requested() == "SIGTERM")
            if not is_user_error(exc):
                raise
            print(f"linkstyle: error: {describe(exc, args)}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as exc:
            return _stopped(isinstance(exc, Terminated))


def _stopped(terminated: bool) -> int:
    what = "terminated (SIGTERM)" if terminated else "interrupted"
    print(f"linkstyle: {what}; committed artifacts are kept, rerun to resume", file=sys.stderr)
    return 143 if terminated else 130


def entry() -> int:
    """The ``linkstyle`` console command (and ``python -m flows.cli``): the process defaults
    of ``flows.startup`` first, which must be set before anything imports Prefect or torch
    (this module imports neither), then ``main``. Kept out of ``main`` so that a caller in
    the same process (a test, a notebook) keeps its own environment."""
    startup.apply()
    return main()
