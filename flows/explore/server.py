"""``linkstyle explore``: a finished run explored live, on the local web app (``flows.web``:
Starlette and uvicorn on 127.0.0.1, Host guard, one error handler, request deadlines). The
state behind it is ``flows.explore.session.ExploreSession``.

=====================================  ==========================================================
``GET /``                              the page (``static/``: HTML, JS, CSS; nothing fetched
                                       from elsewhere)
``GET /api/run``                       the run: id, root, models, classes and their held-out
                                       sample counts, parts and their colours
``GET /api/units``                     every unit: top part, verdict, q, concentration, gain
``GET /api/unit/U``                    unit U: its row, tuned range, slider range, closed loop
                                       and sensitivity bars (SVG)
``GET /api/unit/U/strip.png``          unit U's stored tuning strips
``GET /api/sample?class&index|seed``   a sample's own frame (nothing moved)
``GET /api/frame?...&units&values``    the sample with units U1,U2 set to values V1,V2
``GET /api/counterfactual?...&target`` the sample's path to class ``target``: flipped or not,
                                       the units that move most
``GET /api/path?...&target&t``         the frame at position t of that path
=====================================  ==========================================================

A sample is ``class=C&index=I`` (the I-th held-out sample of class C) or ``class=C&seed=S`` (a
new one). Frames also take ``client`` (the page's id) and ``seq`` (its request number): a
request overtaken by a newer one of the same client is dropped with 409 before it renders.
Bad parameters are 400s naming the parameter and what it may be.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from flows.explore.session import MAX_UNITS, ExploreSession, Sample
from flows.web.app import ALL_METHODS, HTTPError, query_float, query_int, static_routes, web_app
from flows.web.serve import REQUEST_TIMEOUT, Served, serve

STATIC = Path(__file__).parent / "static"
_NO_STORE = {"Cache-Control": "no-store"}
_CLIENT = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_VALUE = 1e6  # |value| a unit may be set to
MAX_SEED = 2**31 - 1


def _sample(session: ExploreSession, request: Request) -> Sample:
    classes = len(session.class_names)
    cls = query_int(request, "class", 0, classes - 1)
    if "seed" in request.query_params:
        return session.sample(cls, seed=query_int(request, "seed", 0, MAX_SEED))
    return session.sample(cls, index=query_int(request, "index", 0, 10**9, default=0))


def _order(request: Request) -> tuple[str, int]:
    client = request.query_params.get("client", "anonymous")
    if not _CLIENT.match(client):
        raise HTTPError(400, "client must be 1-64 letters, digits, - or _")
    return client, query_int(request, "seq", 0, 2**53, default=0)


def _units(session: ExploreSession, request: Request) -> tuple[list[int], list[float]]:
    """units=U1,U2 and values=V1,V2: distinct unit indices and finite values, as many of each."""
    raw_units = request.query_params.get("units", "")
    raw_values = request.query_params.get("values", "")
    try:
        units = [int(u) for u in raw_units.split(",")]
        values = [float(v) for v in raw_values.split(",")]
    except ValueError:
        raise HTTPError(400, f"units must be unit indices and values numbers, separated by "
                        f"commas (units=93,118&values=2.5,0.4); got units={raw_units!r} "
                        f"values={raw_values!r}") from None
    if not 1 <= len(units) <= MAX_UNITS or len(units) != len(values) \
            or len(set(units)) != len(units):
        raise HTTPError(400, f"give 1-{MAX_UNITS} distinct units and one value for each; got "
                        f"{len(units)} unit(s) and {len(values)} value(s)")
    top = session.r_test.shape[1] - 1
    for unit, value in zip(units, values, strict=True):
        if not 0 <= unit <= top:
            raise HTTPError(400, f"unit must be 0-{top}, got {unit}")
        if not abs(value) <= MAX_VALUE:  # also refuses nan
            raise HTTPError(400, f"the value of unit {unit} must be a finite number of at most "
                            f"{MAX_VALUE:g} in size, got {value}")
    return units, values


def explore_app(session: ExploreSession) -> Any:
    """The explorer's routes over ``session``, as one ASGI app."""

    def answer(value: Any) -> Response:
        return JSONResponse(value, headers=_NO_STORE)

    def run(request: Request) -> Response:
        return answer(session.run_info())

    def units(request: Request) -> Response:
        return answer(session.unit_list())

    def unit(request: Request) -> Response:
        return answer(session.unit_detail(request.path_params["unit"]))

    def strip(request: Request) -> Response:
        return Response(session.strip_png(request.path_params["unit"]), media_type="image/png",
                        headers=_NO_STORE)

    def sample(request: Request) -> Response:
        chosen = _sample(session, request)
        base = session.base(chosen)
        out = session.describe(chosen, base, base)
        out["r"] = [round(float(v), 4) for v in chosen.r.tolist()]
        return answer(out)

    def frame(request: Request) -> Response:
        client, seq = _order(request)
        session.note(client, seq)
        moved, values = _units(session, request)
        return answer(session.unit_frame(_sample(session, request), moved, values, client, seq))

    def counterfactual(request: Request) -> Response:
        chosen = _sample(session, request)
        target = query_int(request, "target", 0, len(session.class_names) - 1)
        return answer(session.counterfactual(chosen, target))

    def path(request: Request) -> Response:
        client, seq = _order(request)
        session.note(client, seq)
        chosen = _sample(session, request)
        target = query_int(request, "target", 0, len(session.class_names) - 1)
        t = query_float(request, "t", -1.0, 3.0)
        return answer(session.path_frame(chosen, target, t, client, seq))

    def elsewhere(request: Request) -> Response:
        raise HTTPError(404, f"no such page: {request.method} {request.url.path}")

    return web_app([
        *static_routes(STATIC, ["index.html", "app.js", "app.css"]),
        Route("/api/run", run, methods=["GET"]),
        Route("/api/units", units, methods=["GET"]),
        Route("/api/unit/{unit:int}", unit, methods=["GET"]),
        Route("/api/unit/{unit:int}/strip.png", strip, methods=["GET"]),
        Route("/api/sample", sample, methods=["GET"]),
        Route("/api/frame", frame, methods=["GET"]),
        Route("/api/counterfactual", counterfactual, methods=["GET"]),
        Route("/api/path", path, methods=["GET"]),
        Route("/{path:path}", elsewhere, methods=ALL_METHODS),
    ])


def start(session: ExploreSession, port: int = 0, timeout: float = REQUEST_TIMEOUT) -> Served:
    """Serve the explorer of ``session`` on 127.0.0.1 (``port`` 0: a free one) from a
    background thread; ``flows.web.serve.ServeError`` if the port is taken."""
    return serve(explore_app(session), session, port, timeout)
