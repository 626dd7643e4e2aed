"""The local web app shared by `labels open` and `explore` (flows.web): the Host guard, the one
error shape, and what an unexpected exception does (one line on the terminal, a 500 with its
message, never a traceback or a dropped connection)."""

from __future__ import annotations

import json
import socket

import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from flows.web.app import query_float, query_int, web_app
from flows.web.serve import ServeError, serve
from tests.fixtures.http_client import call


def _boom(request: Request) -> JSONResponse:
    raise RuntimeError("the model fell over")


def _numbers(request: Request) -> JSONResponse:
    return JSONResponse({"n": query_int(request, "n", 0, 10),
                         "x": query_float(request, "x", -1.0, 1.0, default=0.5)})


@pytest.fixture(scope="module")
def served():
    server = serve(web_app([Route("/boom", _boom), Route("/numbers", _numbers)]))
    yield server
    server.stop()


def _get(port: int, path: str, host: str | None = None,
         method: str = "GET") -> tuple[int, dict]:
    status, body = call(port, method, path, host=host)
    return status, json.loads(body)


def test_an_unexpected_exception_is_one_line_and_a_500(served, capfd) -> None:
    capfd.readouterr()
    status, body = _get(served.port, "/boom")
    assert status == 500
    assert body == {"error": "the server failed: RuntimeError: the model fell over (see the "
                             "terminal it runs in)"}
    err = capfd.readouterr().err
    assert err.splitlines() == ["linkstyle: server: GET /boom failed: RuntimeError: the model "
                                "fell over"]
    assert _get(served.port, "/numbers?n=3")[0] == 200  # and it goes on serving


def test_errors_have_one_shape(served) -> None:
    assert _get(served.port, "/nowhere") == (404, {"error": "no such page: /nowhere"})
    assert _get(served.port, "/numbers?n=3", method="DELETE") == (
        405, {"error": "DELETE is not allowed on /numbers"})
    assert _get(served.port, "/numbers?n=3") == (200, {"n": 3, "x": 0.5})
    for query, words in (("", "n is missing"), ("?n=x", "n must be an integer"),
                         ("?n=11", "n must be between 0 and 10, got 11"),
                         ("?n=1&x=nan", "x must be between -1 and 1"),
                         ("?n=1&x=1e9", "x must be between -1 and 1"),
                         ("?n=1&x=one", "x must be a number")):
        status, body = _get(served.port, f"/numbers{query}")
        assert status == 400 and words in body["error"], (query, body)


@pytest.mark.parametrize("host", ["evil.example", "evil.example:{port}", "127.0.0.1:1",
                                  "localhost", ""])
def test_only_our_own_address_is_answered(served, host) -> None:
    status, body = _get(served.port, "/numbers?n=1", host=host.format(port=served.port))
    assert status == 403 and f"only http://127.0.0.1:{served.port}/" in body["error"]
    assert _get(served.port, "/numbers?n=1", host=f"localhost:{served.port}")[0] == 200


def test_a_port_in_use_names_the_fix() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(ServeError, match=f"127.0.0.1:{port} .*choose another --port"):
            serve(web_app([]), port=port)
