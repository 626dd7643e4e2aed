"""The temporary Prefect server of a command-line run: started, owned and stopped by us.

Without ``PREFECT_API_URL``, Prefect would start a temporary API server in a subprocess on
first use and stop it from an ``atexit`` hook. That subprocess inherited the caller's stdout and
stderr, and a SIGTERM (which skips ``atexit``) or a SIGKILL left it running, holding the
caller's output pipe open (issue 12). So the command line starts Prefect's server application
itself (``prefect.server.api.server:create_app`` under uvicorn, as Prefect does), before any
flow asks for one, and points this process's ``PREFECT_API_URL`` setting at it while it runs:

- its output goes to a temporary file, never to our stdout/stderr (shown if it fails to start);
- it runs in its own session, so a Ctrl-C in the terminal reaches only us, and we stop it
  after the flow has recorded how it ended;
- on Linux it asks the kernel to send it SIGTERM when we die (``PR_SET_PDEATHSIG``), so even a
  SIGKILL of ``linkstyle`` leaves no server behind.

Only public APIs are used: the app factory, the settings, and the server's ``/health``
endpoint. ``temporary_server()`` stops it on the way out, whatever the way. With
``PREFECT_API_URL`` set (a ``prefect server start`` of one's own, or Prefect Cloud) nothing is
started.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from typing import IO

# Runs in the server's process before uvicorn: die with the parent (Linux), then exec uvicorn.
# argv: [-c, parent pid, uvicorn's python arguments...]
_BOOT = """\
import ctypes, os, signal, sys
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
except Exception:
    pass
if os.getppid() != int(sys.argv[1]):
    sys.exit(0)  # the parent died before prctl: nobody needs this server
os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
"""


class TemporaryServer:
    """Prefect's API server on a free port of 127.0.0.1, in a subprocess of its own session
    whose output goes to a temporary file (see the module docstring)."""

    def __init__(self) -> None:
        with socket.socket() as probe:  # a port nobody listens on now
            probe.bind(("127.0.0.1", 0))
            self.port = int(probe.getsockname()[1])
        self.log: IO[bytes] = tempfile.TemporaryFile()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def start(self, timeout: float) -> None:
        """Start the server and wait until it answers (``TimeoutError`` after ``timeout``
        seconds, ``RuntimeError`` if it exits first)."""
        import prefect
        from prefect.settings import get_current_settings

        uvicorn = ["-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent),
                   "--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1",
                   "--port", str(self.port), "--log-level", "error", "--lifespan", "on"]
        if sys.platform.startswith("linux"):
            args = [sys.executable, "-c", _BOOT, str(os.getpid()), *uvicorn]
        else:
            args = [sys.executable, *uvicorn]
        # the environment Prefect gives its own temporary server (no UI, ephemeral mode)
        env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
               "PREFECT__SERVER_FINAL": "1",
               **get_current_settings().to_environment_variables(exclude_unset=True)}
        env.pop("PREFECT_API_URL", None)  # the server is the API; it names none
        self.process = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL,
                                        stdout=self.log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with code {self.process.returncode}")
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except (OSError, ValueError):
                pass  # not listening yet
            if time.monotonic() > deadline:
                raise TimeoutError("it did not answer its health check")
            time.sleep(0.25)

    def stop(self) -> None:
        """Stop the server (its whole session) and wait for it; close its output."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()

    def output(self) -> str:
        if self.log.closed:
            return ""
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-4000:]


_RUNNING: list[TemporaryServer] = []  # the server this process started, while it runs


class ServerStartError(RuntimeError):
    """Prefect's temporary server did not answer in time; the message holds its output and the
    fix, on one line (the command line prints it as a user error: nothing in the input is
    wrong, but only the user can give the machine more time or run a server)."""


def startup_timeout() -> float:
    """Seconds to wait for the temporary server: the environment's
    PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS as it is now (Prefect reads its settings
    once, at import, and an import before the command line's default missed it), else
    Prefect's setting."""
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS as setting

    from flows.startup import STARTUP_TIMEOUT_VAR

    try:
        return max(float(os.environ[STARTUP_TIMEOUT_VAR]), 1.0)
    except (KeyError, ValueError):
        return float(setting.value())


def _one_line(output: str, limit: int = 600) -> str:
    """The last lines of a process's output on one line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    text = " | ".join(lines)
    return ("..." + text[-limit:]) if len(text) > limit else (text or "nothing")


def uses_own_server() -> bool:
    """True when PREFECT_API_URL names a Prefect server of the user's (not one that
    ``temporary_server`` started)."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    return bool(url) and url != temporary_api_url()


def temporary_api_url() -> str | None:
    """The URL of the temporary Prefect server this process started, while it runs."""
    return _RUNNING[-1].api_url if _RUNNING else None


@contextlib.contextmanager
def temporary_server() -> Iterator[str | None]:
    """Start a temporary Prefect server for the duration of the block and point this process's
    ``PREFECT_API_URL`` setting at it (yield its API URL), or nothing if ``PREFECT_API_URL``
    names a server (yield None). Stops it on any exit: return, error, KeyboardInterrupt or
    SIGTERM (``flows.cli`` turns SIGTERM into an exception)."""
    if uses_own_server():
        yield None
        return
    existing = temporary_api_url()
    if existing is not None:  # started earlier in this process: reuse
        yield existing
        return
    from prefect.settings import PREFECT_API_URL, temporary_settings

    server = TemporaryServer()
    timeout = startup_timeout()
    try:
        try:
            with _startup_lock():
                server.start(timeout=timeout)
        except Exception as exc:
            from flows.startup import STARTUP_TIMEOUT_VAR

            raise ServerStartError(
                f"Prefect's temporary server did not start within {timeout:.0f} s "
                f"({_one_line(str(exc), 200)}); its output: {_one_line(server.output())}. On a "
                f"busy machine give it more time ({STARTUP_TIMEOUT_VAR}={4 * timeout:.0f}), or "
                "start a Prefect server of your own (`prefect server start`) and set "
                "PREFECT_API_URL=http://127.0.0.1:4200/api") from None
        _RUNNING.append(server)
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            yield server.api_url
    finally:
        _flush_prefect_clients()
        if server in _RUNNING:
            _RUNNING.remove(server)
        server.stop()


@contextlib.contextmanager
def _startup_lock() -> Iterator[None]:
    """Start one temporary server at a time per Prefect home: a server migrates its database
    as it starts, and two commands started at once on a fresh home (two scheduled runs) raced
    in those migrations, so one server died with an alembic error. The second server starts
    once the first answers, on a database that is up to date. Where ``fcntl`` is missing
    (Windows) nothing is locked."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    from prefect.settings import get_current_settings

    home = get_current_settings().home
    home.mkdir(parents=True, exist_ok=True)
    with open(home / "linkstyle-server-start.lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _flush_prefect_clients() -> None:
    """Send queued logs and events to the server while it still runs (Prefect drains them at
    exit otherwise, when the temporary server is gone)."""
    for module, name in (("prefect.logging.handlers", "APILogWorker"),
                         ("prefect.events.worker", "EventsWorker")):
        worker = getattr(sys.modules.get(module), name, None)
        if worker is None:
            continue
        with contextlib.suppress(Exception):
            worker.drain_all(timeout=5)
