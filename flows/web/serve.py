"""Serving a page's app (``flows.web.app``) on 127.0.0.1 with uvicorn, from a background thread.

``serve(app, session, port)`` binds the socket itself (a port in use is a ``ServeError`` naming
the fix, before anything starts), runs uvicorn's server in a thread and returns a ``Served``:
its address, and ``stop()``. ``wait(served)`` is the commands' main loop: it returns when the
server stops and lets Ctrl-C (SIGINT) and SIGTERM through (``flows.cli`` turns them into exit
codes 130 and 143) after stopping the server cleanly.

Slow clients: uvicorn drops a connection that is idle between requests (``timeout_keep_alive``)
but waits for a request's headers forever. ``_DeadlineH11`` gives every request ``timeout``
seconds from its first byte (or from the connection's start) until its headers and body are in;
one that takes longer is answered 408 and its connection closed (a route still waiting for the
body sees the client gone: ``ClientDisconnect``, nothing is saved or printed).

Logging: uvicorn's own lines (a malformed request, say) are one ``linkstyle: server: ...`` line
on stderr each, warnings and errors only, never with a traceback; requests are not logged.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

REQUEST_TIMEOUT = 30.0  # seconds from a request's first byte until all of it has arrived
KEEP_ALIVE = 5.0  # seconds an idle connection is kept between requests
_TIMEOUT_408 = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                b"connection: close\r\ncontent-length: %d\r\n\r\n%s")


class ServeError(Exception):
    """The server cannot start (the port is taken, say); the message names the fix."""


class _DeadlineH11(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a deadline for receiving each request (``timeout``)."""

    timeout = REQUEST_TIMEOUT
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._deadline is None:
            self._arm()
        super().data_received(data)
        state = self.conn.their_state
        if state in (h11.DONE, h11.MUST_CLOSE, h11.CLOSED, h11.ERROR) or (
                state is h11.IDLE and not self.conn.trailing_data[0]):
            self._disarm()  # the request is in (or nothing of the next one has come yet)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.timeout, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        cycle = self.cycle  # the request being received; its answer may have been sent
        if self.conn.their_state is h11.IDLE or (cycle is not None
                                                 and not cycle.response_started):
            body = (b'{"error": "the request did not arrive within %d s; send it again"}'
                    % self.timeout)
            self.transport.write(_TIMEOUT_408 % (len(body), body))
        self.transport.close()  # an app still waiting for the body sees a disconnect


class _OneLine(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"linkstyle: server: {record.getMessage()}"


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """sys.stderr as it is when a line is written (tests capture it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def _quiet_logs() -> None:
    for name in ("uvicorn", "linkstyle.web"):
        logger = logging.getLogger(name)
        if not any(isinstance(h, _Stderr) for h in logger.handlers):
            handler = _Stderr()
            handler.setFormatter(_OneLine())
            logger.addHandler(handler)
        logger.setLevel(logging.WARNING)
        logger.propagate = False


@dataclass
class Served:
    """A running server: its address, the session behind its page, and ``stop()``."""

    port: int
    session: Any
    server: uvicorn.Server = field(repr=False)
    thread: threading.Thread = field(repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def server_address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def stop(self) -> None:
        """Stop serving (open requests get a few seconds), then close the session."""
        self.server.should_exit = True
        self.thread.join(timeout=30)
        close = getattr(self.session, "close", None)
        if callable(close):
            close()


def _bind(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError as exc:
        sock.close()
        raise ServeError(f"cannot listen on 127.0.0.1:{port} ({exc.strerror}); choose another "
                         "--port, or leave it out for a free one") from None
    return sock


def serve(app: Any, session: Any = None, port: int = 0,
          timeout: float = REQUEST_TIMEOUT) -> Served:
    """Serve ``app`` on 127.0.0.1:``port`` (0: a free one) from a background thread; returns
    once it accepts connections. ``timeout``: seconds a request may take to arrive."""
    _quiet_logs()
    sock = _bind(port)
    protocol = type("DeadlineH11", (_DeadlineH11,), {"timeout": timeout})
    config = uvicorn.Config(app, loop="asyncio", http=protocol, ws="none", lifespan="off",
                            log_config=None, access_log=False, timeout_keep_alive=int(KEEP_ALIVE),
                            timeout_graceful_shutdown=3)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                              name="linkstyle-web", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise ServeError("the web server did not start (see the lines above)")
        time.sleep(0.02)
    return Served(sock.getsockname()[1], session, server, thread)


def wait(served: Served) -> None:
    """Block until the server stops. Ctrl-C (KeyboardInterrupt) and SIGTERM (``flows.cli``'s
    ``Terminated``, a KeyboardInterrupt) stop it, then propagate: the command exits 130 or
    143."""
    try:
        while served.thread.is_alive():
            served.thread.join(timeout=0.5)
    finally:
        served.stop()


def _can_open_browser() -> bool:
    """A graphical browser can be shown: macOS, Windows, or a display on Linux (a text browser
    in the same terminal would hide the server's output)."""
    return sys.platform in ("darwin", "win32") or bool(
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def open_page(served: Served, no_browser: bool) -> None:
    """Open the page in a browser where there is one (and ``no_browser`` is False), else say
    how to open it, from this machine or another one."""
    import webbrowser

    if no_browser or not _can_open_browser() or not webbrowser.open(served.url):
        print("open that address in a browser on this machine (from another one: "
              f"ssh -L {served.port}:127.0.0.1:{served.port} HOST)", flush=True)
