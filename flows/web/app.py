"""The local web app of the pages that need a live server (DESIGN.md "What people look at").

``web_app(routes)`` is a Starlette app with what every such page needs around its routes:

- a Host guard: only ``127.0.0.1:PORT`` and ``localhost:PORT`` are answered, 403 otherwise (a
  page on another site whose name resolves to 127.0.0.1, DNS rebinding, sends its own Host);
- one error handler (``error_response``): every error is ``{"error": message}`` with its status.
  ``HTTPError`` carries the routes' own (4xx naming the fix; 5xx for a damaged or unwritable
  folder), Starlette's 404 and 405 become the same, anything unexpected is one log line and a
  500 with its message. A client that went away mid-request gets nothing, and nothing is
  printed;
- request bodies read with a size limit (``read_body``), and query parameters parsed into
  checked numbers (``query_int``, ``query_float``: 400 naming the parameter).

``flows.web.serve`` serves such an app with uvicorn (the deadline for receiving a request).
The pages' work is done by the same core code the stages use; the routes only call it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LOG = logging.getLogger("linkstyle.web")
ALL_METHODS = ["GET", "HEAD", "PUT", "POST", "DELETE", "PATCH"]
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript",
                 ".css": "text/css", ".png": "image/png", ".svg": "image/svg+xml"}


class HTTPError(HTTPException):
    """An answer other than 200: ``status`` and a message that names the problem and the fix."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(status, message, dict(headers) if headers else None)


def error_response(status: int, message: str,
                   headers: Mapping[str, str] | None = None) -> Response:
    """The one shape of every error: ``{"error": message}`` with ``status``."""
    return JSONResponse({"error": message}, status, headers=dict(headers or {}),
                        media_type="application/json")


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = str(exc.detail)
    if not isinstance(exc, HTTPError):  # the router's own: no route, or not this method
        message = (f"no such page: {request.url.path}" if exc.status_code == 404 else
                   f"{request.method} is not allowed on {request.url.path}"
                   if exc.status_code == 405 else message)
    return error_response(exc.status_code, message, exc.headers)


class _Guard:
    """Outside every route: the Host check, and the catch-all of the error handler."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        port = (scope.get("server") or ("", None))[1]
        host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
        if host not in (f"127.0.0.1:{port}", f"localhost:{port}"):
            return await error_response(
                403, f"this server answers only http://127.0.0.1:{port}/ (the Host header was "
                f"{host!r})")(scope, receive, send)
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except ClientDisconnect:
            return  # the client went away: nobody to answer, nothing to report
        except Exception as exc:  # a bug or an unforeseen state: one line, and a 500
            LOG.error("%s %s failed: %s: %s", scope["method"], scope["path"],
                      type(exc).__name__, exc)
            if not started:
                await error_response(500, f"the server failed: {type(exc).__name__}: {exc} "
                                     "(see the terminal it runs in)")(scope, receive, send)


def web_app(routes: Sequence[BaseRoute]) -> Starlette:
    """A Starlette app of ``routes`` with the guard and the error handler above."""
    return Starlette(routes=list(routes), middleware=[Middleware(_Guard)],
                     exception_handlers={HTTPException: _http_error})


def static_routes(folder: Path, names: Sequence[str], index: str = "index.html") -> list[Route]:
    """GET routes for the page's own files (``/`` is ``index``), read from ``folder``."""

    def route(name: str) -> Callable[[Request], Awaitable[Response]]:
        media = CONTENT_TYPES[Path(name).suffix]

        async def endpoint(request: Request) -> Response:
            return Response((folder / name).read_bytes(), media_type=media,
                            headers={"Cache-Control": "no-store"})
        return endpoint

    return [Route("/", route(index), methods=["GET"])] + [
        Route(f"/{name}", route(name), methods=["GET"]) for name in names]


async def read_body(request: Request, limit: int, what: str) -> bytes:
    """The request's body: at most ``limit`` bytes as its Content-Length announces. A longer (or
    unannounced) body is refused unread (400). A client that disconnects, or whose body stops
    arriving (``flows.web.serve``'s deadline closes it), raises ``ClientDisconnect``: nothing is
    answered or printed, and the route saves nothing."""
    try:
        length = int(request.headers.get("content-length", "-1"))
    except ValueError:
        length = -1
    if not 0 <= length <= limit:
        raise HTTPError(400, f"{what} is at most {limit} bytes; got Content-Length {length}")
    chunks = [chunk async for chunk in request.stream()]
    return b"".join(chunks)


def query_int(request: Request, name: str, low: int, high: int, default: int | None = None) -> int:
    """Query parameter ``name`` as an integer in [low, high]; 400 naming it otherwise."""
    raw = request.query_params.get(name)
    if raw is None:
        if default is None:
            raise HTTPError(400, f"{name} is missing: give ?{name}=N ({low}-{high})")
        return default
    try:
        value = int(raw)
    except ValueError:
        raise HTTPError(400, f"{name} must be an integer ({low}-{high}), got {raw!r}") from None
    if not low <= value <= high:
        raise HTTPError(400, f"{name} must be between {low} and {high}, got {value}")
    return value


def query_float(request: Request, name: str, low: float, high: float,
                default: float | None = None) -> float:
    """Query parameter ``name`` as a finite number in [low, high]; 400 naming it otherwise."""
    raw = request.query_params.get(name)
    if raw is None:
        if default is None:
            raise HTTPError(400, f"{name} is missing: give ?{name}=X ({low:g} to {high:g})")
        return default
    try:
        value = float(raw)
    except ValueError:
        raise HTTPError(400, f"{name} must be a number, got {raw!r}") from None
    if not low <= value <= high:  # also refuses nan
        raise HTTPError(400, f"{name} must be between {low:g} and {high:g}, got {raw}")
    return value

