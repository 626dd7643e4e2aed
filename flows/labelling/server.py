"""``linkstyle labels open DIR``: the labelling page of an exported folder, on the local web app
(``flows.web``: Starlette and uvicorn on 127.0.0.1, Host guard, one error handler, request
deadlines). The state behind it is ``flows.labelling.session.LabellingSession``.

=========================  ==================================================================
``GET /``                  the page (``static/``: HTML, JS and CSS, nothing fetched elsewhere)
``GET /api/state``         parts, colours, image count and size, which images are labelled
                           (and which saved masks cannot be read), the pre-fill's status,
                           held-out IoU per part and least-sure images
``GET /api/image/N.png``   exported image N
``GET /api/mask/N``        its saved mask, raw bytes (H*W uint8, row-major)
``GET /api/proposal/N``    the pre-fill's proposed mask, raw bytes (404 while there is none)
``PUT /api/mask/N``        save a mask (raw bytes as above): checked, written atomically;
                           answers the state, with ``warning`` if only the preview failed
=========================  ==================================================================

Every error is ``{"error": message}``: 400 for a mask that does not fit, 403 for an image that
links outside the folder, 404 for an image that is not (or no longer) there, 408 for a body
that stops arriving, 500/507 for a folder that cannot be read or written, naming the fix.
"""

from __future__ import annotations

from pathlib import Path

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from flows.labelling.session import LabellingSession, check_export_folder
from flows.web.app import ALL_METHODS, HTTPError, read_body, static_routes, web_app
from flows.web.serve import REQUEST_TIMEOUT, Served, serve
from linkstyle_core.labels import LabelError

STATIC = Path(__file__).parent / "static"
_RAW = "application/octet-stream"
_NO_STORE = {"Cache-Control": "no-store"}

__all__ = ["STATIC", "LabellingSession", "check_export_folder", "labelling_app", "start",
           "stop_server"]


def labelling_app(session: LabellingSession) -> object:
    """The labelling page's routes over ``session``, as one ASGI app."""

    def state(request: Request) -> Response:
        return JSONResponse(session.state(), headers=_NO_STORE)

    def image(request: Request) -> Response:
        return Response(session.image_png(request.path_params["index"]), media_type="image/png",
                        headers=_NO_STORE)

    def mask(request: Request) -> Response:
        return Response(session.mask_bytes(request.path_params["index"]), media_type=_RAW,
                        headers=_NO_STORE)

    def proposal(request: Request) -> Response:
        index = request.path_params["index"]
        session.image_path(index)
        raw = session.proposal_bytes(index)
        if raw is None:
            raise HTTPError(404, "no proposal yet: the pre-fill proposes masks once two images "
                            "are labelled")
        return Response(raw, media_type=_RAW, headers=_NO_STORE)

    async def save(request: Request) -> Response:
        index = request.path_params["index"]
        raw = await read_body(request, session.width * session.height, "a mask")
        try:
            state = await run_in_threadpool(session.save, index, raw)
        except LabelError as exc:
            raise HTTPError(400, str(exc)) from None
        return JSONResponse(state, headers=_NO_STORE)

    def elsewhere(request: Request) -> Response:
        hint = "; masks are saved with PUT /api/mask/N" if request.method == "PUT" else ""
        raise HTTPError(404, f"no such page: {request.method} {request.url.path}{hint}")

    return web_app([
        *static_routes(STATIC, ["index.html", "app.js", "app.css"]),
        Route("/api/state", state, methods=["GET"]),
        Route("/api/image/{index:int}.png", image, methods=["GET"]),
        Route("/api/mask/{index:int}", mask, methods=["GET"]),
        Route("/api/mask/{index:int}", save, methods=["PUT"]),
        Route("/api/proposal/{index:int}", proposal, methods=["GET"]),
        Route("/{path:path}", elsewhere, methods=ALL_METHODS),
    ])


def start(session: LabellingSession, port: int = 0,
          timeout: float = REQUEST_TIMEOUT) -> tuple[Served, object]:
    """Serve ``session`` on 127.0.0.1 (``port`` 0: a free one) from a background thread.
    Returns the server (``url``, ``server_address``, ``session``, ``stop()``) and its thread;
    ``flows.web.serve.ServeError`` if the port is taken."""
    served = serve(labelling_app(session), session, port, timeout)
    return served, served.thread


def stop_server(server: Served) -> None:
    """Stop serving and close the session (its pre-fill thread)."""
    server.stop()
