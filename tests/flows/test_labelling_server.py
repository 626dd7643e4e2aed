"""The labelling server of `linkstyle labels open` over HTTP: what it serves, what it saves, and
what it refuses (no browser here; tests/flows/test_labelling_page.py drives the page)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flows.labelling.server import LabellingSession, start, stop_server
from linkstyle_core.labels import export_folder, part_colours
from tests.fixtures.http_client import call
from tests.fixtures.tiny_models import RES, tiny_generator

PARTS = ["background", "bright", "dark"]


@pytest.fixture()
def served(tmp_path: Path):
    folder = tmp_path / "export"
    export_folder(tiny_generator(), folder, 4, PARTS, seed=0, truncation=1.0)
    session = LabellingSession(folder, tiny_generator(), steps=20)
    server, _ = start(session)
    yield folder, server
    stop_server(server)


def _call(server, method: str, path: str, body: bytes | None = None,
          host: str | None = None) -> tuple[int, bytes]:
    return call(server.port, method, path, body, host)


def _mask(value: int = 1) -> np.ndarray:
    mask = np.zeros((RES, RES), np.uint8)
    mask[2:5, 1:6] = value
    mask[6:, :] = 2
    return mask


def test_the_page_images_and_state_are_served(served) -> None:
    folder, server = served
    status, page = _call(server, "GET", "/")
    assert status == 200 and b"<canvas id=\"label-canvas\">" in page and b"app.js" in page
    status, script = _call(server, "GET", "/app.js")
    assert status == 200 and b"window.app = app" in script
    status, png = _call(server, "GET", "/api/image/3.png")
    assert status == 200 and png == (folder / "images/0003.png").read_bytes()
    state = json.loads(_call(server, "GET", "/api/state")[1])
    assert state["parts"] == PARTS and state["count"] == 4
    assert (state["width"], state["height"]) == (RES, RES) and state["labelled"] == []
    assert state["colours"] == part_colours(3).tolist()
    assert state["prefill"]["status"] == "waiting"


def test_the_page_loads_nothing_from_elsewhere() -> None:
    from flows.labelling.server import STATIC

    for path in STATIC.iterdir():
        text = path.read_text()
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, path


def test_a_saved_mask_is_an_index_png_with_a_preview(served) -> None:
    folder, server = served
    mask = _mask()
    status, body = _call(server, "PUT", "/api/mask/1", mask.tobytes())
    assert status == 200, body
    assert json.loads(body)["labelled"] == [1]
    saved = Image.open(folder / "labels/0001.png")
    assert saved.mode == "L" and np.array_equal(np.asarray(saved), mask)
    assert not np.asarray(Image.open(folder / "labels/0000.png")).any()  # others untouched
    preview = np.asarray(Image.open(folder / "preview/0001.png").convert("RGB")).astype(int)
    image = np.asarray(Image.open(folder / "images/0001.png").convert("RGB")).astype(int)
    assert np.array_equal(preview[mask == 0], image[mask == 0])
    assert not np.array_equal(preview[mask == 2], image[mask == 2])  # tinted
    status, raw = _call(server, "GET", "/api/mask/1")
    assert status == 200 and np.array_equal(np.frombuffer(raw, np.uint8).reshape(RES, RES), mask)
    assert not [p for p in (folder / "labels").iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("path,body,status,words", [
    ("/api/mask/4", _mask().tobytes(), 400, "no image 4"),
    ("/api/mask/999999", _mask().tobytes(), 400, "no image 999999"),
    ("/api/mask/0", _mask().tobytes()[:-1], 400, f"needs {RES * RES} bytes"),
    ("/api/mask/0", _mask(3).tobytes(), 400, "uses label 3"),
    ("/api/mask/-1", _mask().tobytes(), 404, "PUT /api/mask/N"),
    ("/api/mask/../../parts.json", _mask().tobytes(), 404, "PUT /api/mask/N"),
    ("/api/mask/%2e%2e%2fparts.json", _mask().tobytes(), 404, "PUT /api/mask/N"),
    ("/api/mask/0.png", _mask().tobytes(), 404, "PUT /api/mask/N"),
    ("/api/image/0", _mask().tobytes(), 404, "PUT /api/mask/N"),
])
def test_bad_saves_are_refused_and_write_nothing(served, path, body, status, words) -> None:
    folder, server = served
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    got, data = _call(server, "PUT", path, body)
    assert got == status and words in json.loads(data)["error"], data
    after = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert after == before
    assert not list(folder.parent.glob("*.png"))


def test_a_body_longer_than_a_mask_is_refused_unread(served) -> None:
    _, server = served
    status, data = _call(server, "PUT", "/api/mask/0", b"\x01" * (RES * RES * 1000))
    assert status == 400 and b"Content-Length" in data


def test_requests_for_another_host_are_refused(served) -> None:
    _, server = served
    assert _call(server, "GET", "/api/state", host="evil.example:80")[0] == 403
    assert _call(server, "PUT", "/api/mask/0", _mask().tobytes(), host="evil.example")[0] == 403
    assert _call(server, "GET", "/../parts.json")[0] == 404
    assert _call(server, "GET", "/api/image/9.png")[0] == 404


def test_the_prefill_proposes_after_two_labels(served) -> None:
    folder, server = served
    assert _call(server, "GET", "/api/proposal/2")[0] == 404
    for index in (0, 1):
        assert _call(server, "PUT", f"/api/mask/{index}", _mask().tobytes())[0] == 200
    deadline = time.monotonic() + 120
    while True:
        state = json.loads(_call(server, "GET", "/api/state")[1])
        if state["prefill"]["status"] in ("ready", "error") or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    prefill = state["prefill"]
    assert prefill["status"] == "ready", prefill
    assert prefill["trained_on"] == [0, 1] and prefill["heldout"]["folds"] == 2
    assert len(prefill["heldout"]["per_part"]) == 3
    assert sorted(prefill["least_sure"]) == [2, 3]  # the unlabelled ones
    status, raw = _call(server, "GET", "/api/proposal/2")
    assert status == 200 and len(raw) == RES * RES and max(raw) < 3


def _wait(server, condition, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        state = json.loads(_call(server, "GET", "/api/state")[1])
        if condition(state["prefill"]):
            return state
        assert time.monotonic() < deadline, state["prefill"]
        time.sleep(0.1)


def test_a_new_label_abandons_a_stale_training(served) -> None:
    """The first training would take 10**6 steps; the third save must stop it and start one on
    all three labels, which finishes."""
    _, server = served
    session = server.session
    session.settings["steps"] = 10**6
    for index in (0, 1):
        assert _call(server, "PUT", f"/api/mask/{index}", _mask().tobytes())[0] == 200
    _wait(server, lambda p: p["status"] == "training" and p["training_on"] == [0, 1])
    session.settings["steps"] = 20
    assert _call(server, "PUT", "/api/mask/2", _mask(2).tobytes())[0] == 200
    prefill = _wait(server, lambda p: p["status"] in ("ready", "error"))["prefill"]
    assert prefill["status"] == "ready" and prefill["trained_on"] == [0, 1, 2]
    assert prefill["heldout"]["folds"] == 3
