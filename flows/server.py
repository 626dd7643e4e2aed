"""The temporary Prefect server of a command-line run: started, owned and stopped by us.

Without ``PREFECT_API_URL``, Prefect starts a temporary API server in a subprocess on first
use (``prefect.server.api.server.SubprocessASGIServer``) and stops it from an ``atexit`` hook.
That subprocess inherited the caller's stdout and stderr, and a SIGTERM (which skips ``atexit``)
or a SIGKILL left it running, holding the caller's output pipe open (issue 12). So the command
line starts that same server itself, before the flow asks for it, with three differences:

- its output goes to a temporary file, never to our stdout/stderr (shown if it fails to start);
- it runs in its own session, so a Ctrl-C in the terminal reaches only us, and we stop it
  after the flow has recorded how it ended;
- on Linux it asks the kernel to send it SIGTERM when we die (``PR_SET_PDEATHSIG``), so even a
  SIGKILL of ``linkstyle`` leaves no server behind.

``temporary_server()`` stops it on the way out, whatever the way. With ``PREFECT_API_URL`` set
(a ``prefect server start`` of one's own, or Prefect Cloud) nothing is started.
"""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from typing import IO, Any

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


def _server_class() -> type:
    from prefect.server.api.server import SubprocessASGIServer

    class TemporaryServer(SubprocessASGIServer):
        """Prefect's temporary server with quiet, detached output (see the module docstring)."""

        log: IO[bytes] | None = None

        def _run_uvicorn_command(self) -> subprocess.Popen[Any]:
            import prefect
            from prefect.settings import get_current_settings

            uvicorn = ["-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent),
                       "--factory", "prefect.server.api.server:create_app", "--host",
                       "127.0.0.1", "--port", str(self.port), "--log-level", "error",
                       "--lifespan", "on"]
            if sys.platform.startswith("linux"):
                args = [sys.executable, "-c", _BOOT, str(os.getpid()), *uvicorn]
            else:
                args = [sys.executable, *uvicorn]
            if self.log is None:
                self.log = tempfile.TemporaryFile()
            env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
                   "PREFECT__SERVER_FINAL": "1",
                   **get_current_settings().to_environment_variables(exclude_unset=True)}
            return subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=self.log,
                                    stderr=subprocess.STDOUT, start_new_session=True)

        def output(self) -> str:
            if self.log is None:
                return ""
            self.log.seek(0)
            return self.log.read().decode(errors="replace")[-4000:]

    return TemporaryServer


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
    """True when PREFECT_API_URL names a Prefect server (no temporary one is started)."""
    from prefect.settings import PREFECT_API_URL

    return bool(PREFECT_API_URL.value())


def temporary_api_url() -> str | None:
    """The URL of this process's temporary Prefect server, if one runs (a flow called without
    ``PREFECT_API_URL`` starts one), else None."""
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer._instances.get(None)
    return server.api_url if server is not None and server.running else None


@contextlib.contextmanager
def temporary_server() -> Iterator[str | None]:
    """Start Prefect's temporary server for the duration of the block (yield its API URL), or
    nothing if ``PREFECT_API_URL`` names a server (yield None). Stops it on any exit: return,
    error, KeyboardInterrupt or SIGTERM (``flows.cli`` turns SIGTERM into an exception)."""
    if uses_own_server():
        yield None
        return
    from prefect.server.api.server import SubprocessASGIServer

    existing = temporary_api_url()
    if existing is not None:  # started earlier in this process: reuse
        yield existing
        return
    SubprocessASGIServer._instances.pop(None, None)  # one that failed to start
    server = _server_class()()
    timeout = startup_timeout()
    try:
        try:
            server.start(timeout=math.ceil(timeout))
        except Exception as exc:
            from flows.startup import STARTUP_TIMEOUT_VAR

            raise ServerStartError(
                f"Prefect's temporary server did not start within {timeout:.0f} s "
                f"({_one_line(str(exc), 200)}); its output: {_one_line(server.output())}. On a "
                f"busy machine give it more time ({STARTUP_TIMEOUT_VAR}={4 * timeout:.0f}), or "
                "start a Prefect server of your own (`prefect server start`) and set "
                "PREFECT_API_URL=http://127.0.0.1:4200/api") from None
        yield server.api_url
    finally:
        _flush_prefect_clients()
        server.stop()
        if server.log is not None:
            server.log.close()
            server.log = None


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
