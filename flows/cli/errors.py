"""How the command line shows what went wrong: a user's mistake (in the input or the
environment) is one ``linkstyle: error:`` line naming the fix, without a traceback, also when a
Prefect task raised it; a bug keeps its traceback."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import TextIO

from flows.cli.common import UsageError
from flows.outputs import OutputError
from linkstyle_core import stop
from linkstyle_core.config import ConfigError
from storage import ArtifactNotFound, CorruptArtifact, IncompleteArtifact, NotAnArtifactRoot
from storage.errors import USER_ERRNOS, StoreWarning


def user_errors() -> tuple[type[Exception], ...]:
    """Errors that explain a problem with the input: shown as one message, no traceback."""
    errors: list[type[Exception]] = [ConfigError, UsageError, FileNotFoundError,
                                     ArtifactNotFound, CorruptArtifact, IncompleteArtifact,
                                     NotAnArtifactRoot, OutputError]
    if "torch" in sys.modules:  # the model errors live beside torch code; import only if used
        from linkstyle_core.labels import LabelError
        from linkstyle_core.models.errors import ModelError
        from linkstyle_core.paired import AcceptanceError

        errors += [ModelError, AcceptanceError, FloatingPointError, LabelError]
    if "flows.results" in sys.modules:
        from flows.results import RunNotFound

        errors.append(RunNotFound)
    if "flows.server" in sys.modules:
        from flows.server import ServerStartError

        errors.append(ServerStartError)
    if "botocore" in sys.modules:  # credentials that vanished or expired after the preflight
        from botocore.exceptions import NoCredentialsError, PartialCredentialsError

        errors += [NoCredentialsError, PartialCredentialsError]
    return tuple(errors)


_ERRNO_FIX = {
    errno.ENOSPC: "free space on that disk (or choose another artifact root) and rerun; "
                  "committed artifacts are kept and the run resumes",
    errno.EROFS: "the file system is read-only: choose a writable artifact root (--root)",
}
_ERRNO_FIX[errno.EDQUOT] = _ERRNO_FIX[errno.ENOSPC]


def is_user_error(exc: BaseException) -> bool:
    """True for an error that explains a mistake in the input or the environment."""
    if isinstance(exc, user_errors()):
        return True
    return isinstance(exc, OSError) and exc.errno in USER_ERRNOS


def _path_flag(filename: object, args: argparse.Namespace | None) -> str | None:
    """The option (``--out``, ``DIR``) of the command's own output or folder that ``filename``
    lies in, if any: a failed write there is not a problem of the artifact root."""
    if args is None or not filename:
        return None
    path = Path(os.fsdecode(filename)).absolute()  # type: ignore[arg-type]
    for attr, flag in (("out", "--out"), ("folder", "DIR")):
        value = getattr(args, attr, None)
        if isinstance(value, str) and value:
            mine = Path(value).absolute()
            # a folder output is built in a sibling ".<name>.partial-<pid>" folder
            if any(p == mine or p.parent == mine.parent and p.name.startswith(f".{mine.name}.")
                   for p in (path, *path.parents)):
                return flag
    return None


def describe(exc: BaseException, args: argparse.Namespace | None = None) -> str:
    """The message of a user error; an OSError gets its file and the fix (for the command's
    own output or folder, or else the artifact root)."""
    if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError) and exc.strerror \
            and exc.errno in USER_ERRNOS:
        where = f": {exc.filename}" if exc.filename else ""
        flag = _path_flag(exc.filename, args)
        if flag is not None:
            return f"{exc.strerror}{where}; check that {flag} can be written, or choose another"
        fix = _ERRNO_FIX.get(exc.errno or 0, "check the permissions of the artifact root "
                             "(--root) or choose another one")
        return f"{exc.strerror}{where}; {fix}"
    if type(exc).__module__.startswith("botocore"):
        return (f"{exc}: the artifact root's AWS credentials are missing or incomplete; set "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), then rerun")
    return str(exc)


class HideUserErrorTracebacks(logging.Filter):
    """On Prefect's run loggers: a task or flow that failed because of a user's mistake (or was
    stopped by a signal) logs no traceback ("Task run failed with exception ..."); ``main``
    prints the one message. With a Prefect server of one's own (PREFECT_API_URL) the line
    stays, without the traceback, so the UI shows it; in a local run it is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        # a task stopped by Ctrl-C or SIGTERM is no bug either: main says "interrupted"
        if exc is None or not (is_user_error(exc) or isinstance(exc, stop.StopRequested)):
            return True
        record.exc_info, record.exc_text = None, None
        record.linkstyle_user_error = True  # for QuietConsole
        from flows.server import uses_own_server

        return uses_own_server()


_RUN_LOGGERS = ("prefect.task_runs", "prefect.flow_runs", "prefect.engine")


class QuietConsole(logging.Filter):
    """On Prefect's console handler during a command: no line about a run that failed
    ("Finished in state Failed(...)", "NotReady", the failed task's own line for a user's
    mistake). ``main`` prints the error once, after the run, as one line (a bug with its
    traceback, which Prefect's "Task run failed with exception" record still shows). A server
    of one's own still receives every line for its UI (through Prefect's API handler)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "linkstyle_user_error", False):
            return False
        return not (record.name.startswith(_RUN_LOGGERS) and record.levelno >= logging.WARNING
                    and record.getMessage().startswith("Finished in state"))


def install_log_filter() -> None:
    """The filters above: on Prefect's run loggers, and on its console handler once Prefect
    has configured logging (at its import; call again after it)."""
    for name in _RUN_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, HideUserErrorTracebacks) for f in logger.filters):
            logger.addFilter(HideUserErrorTracebacks())
    if "prefect.logging.handlers" not in sys.modules:
        return
    from prefect.logging.handlers import PrefectConsoleHandler

    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler) \
                and not any(isinstance(f, QuietConsole) for f in handler.filters):
            handler.addFilter(QuietConsole())


_SHOW_WARNING = warnings.showwarning


def show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: TextIO | None = None, line: str | None = None) -> None:
    """A ``StoreWarning`` is one ``linkstyle: warning: ...`` line; other warnings as usual."""
    if issubclass(category, StoreWarning):
        print(f"linkstyle: warning: {message}", file=sys.stderr)
    else:
        _SHOW_WARNING(message, category, filename, lineno, file, line)
