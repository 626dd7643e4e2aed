"""`linkstyle explore` over a small finished toy run: what the server answers (frames that are
the tuning's own images, counterfactual paths, 400s for bad parameters, superseded requests
dropped), the command and its errors, and the page driven in headless Chromium: a unit picked
from the list, its slider dragged with the mouse, the counterfactual slider walked."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from flows.explore.server import start
from flows.explore.session import ExploreSession
from tasks.context import models_for
from tests.fixtures.cdp import Browser, chromium_or_skip
from tests.fixtures.explore_run import small_run
from tests.fixtures.http_client import call

pytestmark = pytest.mark.usefixtures("prefect_harness")
ROOT = Path(__file__).resolve().parents[2]
EYE = 92  # an eye unit of the bundled toy classifier (README)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return small_run(tmp_path_factory.mktemp("explore"))


@pytest.fixture(scope="module")
def served(run: dict[str, Any]):
    cfg = run["config"]
    session = ExploreSession(run["store"], run["keys"], models_for(cfg), cfg, run["run_id"])
    server = start(session)
    yield server
    server.stop()


def _get(server, path: str) -> tuple[int, dict]:
    status, body = call(server.port, "GET", path)
    return status, json.loads(body)


def _pixels(data_url: str) -> np.ndarray:
    import base64
    import io

    from PIL import Image

    png = base64.b64decode(data_url.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def test_a_frame_is_the_tuning_image_at_that_value(served) -> None:
    """Set to the values the tuning stage rendered, the explorer's frame of the same sample is
    the stored tuning image (to a grey level) and re-encodes to the same unit value."""
    view = served.session.view.unit(EYE)
    for k, cls in enumerate(view["sample_class"][:2]):
        for step in range(view["set_value"].shape[1]):
            value = float(view["set_value"][k, step])
            status, frame = _get(served, f"/api/frame?class={cls}&index=0&units={EYE}"
                                         f"&values={value}")
            assert status == 200, frame
            stored = view["images"][k, step].transpose(1, 2, 0).astype(int)
            assert np.abs(_pixels(frame["image"]) - stored).max() <= 1
            assert frame["units"][0]["reencoded"] == pytest.approx(view["response"][k, step],
                                                                   abs=1e-3)
            assert frame["frame_ms"] > 0


def test_moving_units_changes_the_image_and_the_reencoded_value(served) -> None:
    status, base = _get(served, "/api/sample?class=2&index=1")
    assert status == 200 and base["sample"] == "pug #1" and base["pixel_change"] == 0
    own = base["r"][EYE]
    detail = _get(served, f"/api/unit/{EYE}")[1]
    assert detail["min"] < detail["low"] < detail["high"] < detail["max"]
    assert "<svg" in detail["charts"] and detail["strip"]
    frames = {v: _get(served, f"/api/frame?class=2&index=1&units={EYE}&values={v}")[1]
              for v in (own, detail["max"])}
    assert frames[own]["pixel_change"] == 0  # nothing moved: the base image
    beyond = frames[detail["max"]]
    assert beyond["pixel_change"] > 0.002
    assert beyond["units"][0]["reencoded"] > frames[own]["units"][0]["reencoded"] + 1
    assert beyond["image"] != base["image"]
    assert abs(sum(p["p"] for p in beyond["probs"]) - 1) < 0.01  # all 8 classes shown
    both = _get(served, f"/api/frame?class=2&index=1&units={EYE},88"
                        f"&values={detail['max']},{detail['max']}")[1]
    assert [u["unit"] for u in both["units"]] == [EYE, 88]
    assert both["image"] != beyond["image"]
    status, strip = call(served.port, "GET", f"/api/unit/{EYE}/strip.png")
    assert status == 200 and strip.startswith(b"\x89PNG")


def test_a_fresh_seed_is_a_new_sample(served) -> None:
    one = _get(served, "/api/sample?class=3&seed=5")[1]
    two = _get(served, "/api/sample?class=3&seed=6")[1]
    assert one["sample"] == "hare, fresh seed 5" and one["image"] != two["image"]
    assert _get(served, "/api/sample?class=3&seed=5")[1]["image"] == one["image"]


def test_a_counterfactual_path_crosses_the_boundary(served) -> None:
    status, path = _get(served, "/api/counterfactual?class=0&index=0&target=1")
    assert status == 200 and len(path["top_units"]) == 10
    assert path["prob_after"] > path["prob_before"]
    start_, end = (_get(served, f"/api/path?class=0&index=0&target=1&t={t}")[1]
                   for t in (0, 1))

    def target(frame: dict) -> float:
        return next((p["p"] for p in frame["probs"] if p["class"] == 1), 0.0)

    assert start_["pixel_change"] == 0 and end["pixel_change"] > 0
    assert target(end) > target(start_) + 0.3
    assert end["units"][0]["set"] != start_["units"][0]["set"]


@pytest.mark.parametrize("path,status,words", [
    ("/api/frame?class=0&index=0&units=92&values=nan", 400, "must be a finite number"),
    ("/api/frame?class=0&index=0&units=92&values=1e300", 400, "must be a finite number"),
    ("/api/frame?class=0&index=0&units=92,93&values=1", 400, "one value for each"),
    ("/api/frame?class=0&index=0&units=92,92&values=1,2", 400, "distinct units"),
    ("/api/frame?class=0&index=0&units=ninety&values=1", 400, "units must be unit indices"),
    ("/api/frame?class=0&index=0&units=192&values=1", 400, "unit must be 0-191"),
    ("/api/frame?class=0&index=0&units=5&values=1", 404, "unit 5 was not tuned"),
    ("/api/frame?class=8&index=0&units=92&values=1", 400, "class must be between 0 and 7"),
    ("/api/frame?index=0&units=92&values=1", 400, "class is missing"),
    ("/api/frame?class=0&index=4&units=92&values=1", 404, "has 4 held-out samples"),
    ("/api/frame?class=0&seed=-1&units=92&values=1", 400, "seed must be between"),
    ("/api/frame?class=0&index=0&units=92&values=1&client=a%20b", 400, "client must be"),
    ("/api/counterfactual?class=0&index=0&target=0", 400, "other than the sample's own"),
    ("/api/path?class=0&index=0&target=1&t=9", 400, "t must be between"),
    ("/api/unit/5", 404, "was not tuned"),
    ("/api/unit/-1", 404, "no such page"),
    ("/api/nothing", 404, "no such page"),
])
def test_bad_parameters_are_answered_with_a_message(served, path, status, words) -> None:
    got, body = _get(served, path)
    assert got == status and words in body["error"], body


def test_a_superseded_position_is_dropped_not_rendered(served) -> None:
    base = "/api/frame?class=1&index=0&units=92&values={v}&client=drag&seq={seq}"
    assert _get(served, base.format(v=1.0, seq=10))[0] == 200
    status, body = _get(served, base.format(v=2.0, seq=9))  # older than one already seen
    assert status == 409 and "superseded" in body["error"]
    # a burst from one client: the newest position is always rendered
    results: dict[int, int] = {}

    def send(seq: int) -> None:
        results[seq] = _get(served, base.format(v=seq / 10, seq=seq))[0]

    threads = [threading.Thread(target=send, args=(seq,)) for seq in range(11, 19)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert results[18] == 200 and set(results.values()) <= {200, 409}


# -- the command -------------------------------------------------------------------------------
def test_explore_serves_the_latest_run_until_ctrl_c(run) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "explore", "--config", str(run["file"]),
         "--no-browser"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        match = re.search(r"exploring run (\w+) \(8 tuned units, toy generator on cpu\) at "
                          r"http://127\.0\.0\.1:(\d+)/", first)
        assert match, first + proc.stderr.read()  # type: ignore[union-attr]
        assert match.group(1) == run["run_id"]
        status, info = call(int(match.group(2)), "GET", "/api/run")
        assert status == 200 and json.loads(info)["tuned"] == 8
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and "Traceback" not in err


def _explore_error(argv: list[str], capsys) -> str:
    from flows.cli import main

    assert main(["explore", "--no-browser", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("linkstyle: error: "), err
    return err[0]


def test_explore_errors_name_the_fix(run, tmp_path, capsys) -> None:
    config = yaml.safe_load(run["file"].read_text())
    empty = tmp_path / "empty.yaml"
    empty.write_text(yaml.safe_dump({**config, "artifact_root": str(tmp_path / "none")}))
    assert "run `linkstyle run` first" in _explore_error(["--config", str(empty)], capsys)
    assert "no run 'nope'" in _explore_error(["--config", str(run["file"]), "--run", "nope"],
                                             capsys)
    line = _explore_error(["--config", str(run["file"]), "--run", run["tune_only"]], capsys)
    assert "no selectivity stage" in line and "`linkstyle run`" in line
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({**config, "classifier": {"kind": "toy",
                                                              "weights": "mixed"}}))
    line = _explore_error(["--config", str(other), "--run", run["run_id"]], capsys)
    assert "classifier loaded" in line and "--config" in line
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        line = _explore_error(["--config", str(run["file"]), "--port", str(port)], capsys)
    assert f"127.0.0.1:{port}" in line and "another --port" in line


# -- the page ----------------------------------------------------------------------------------
def _centre(browser: Browser, selector: str) -> tuple[float, float, float, float]:
    """The element's box in the viewport, scrolled into view first (as a person would)."""
    return tuple(browser.evaluate(
        f"(() => {{ const e = document.querySelector({json.dumps(selector)}); "
        "e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect(); "
        "return [r.left, r.top, r.width, r.height]; })()"))


def _click(browser: Browser, selector: str) -> None:
    left, top, width, height = _centre(browser, selector)
    x, y = left + width / 2, top + height / 2
    browser.mouse("mouseMoved", x, y, buttons=0)
    browser.mouse("mousePressed", x, y)
    browser.mouse("mouseReleased", x, y)


def _drag_slider(browser: Browser, selector: str, start: float, end: float,
                 steps: int = 12) -> None:
    """Press the mouse at fraction ``start`` of a range input and drag it to ``end``."""
    left, top, width, height = _centre(browser, selector)
    y = top + height / 2

    def x(f: float) -> float:
        return left + 8 + f * (width - 16)  # the thumb's centre travels inside the track

    browser.mouse("mouseMoved", x(start), y, buttons=0)
    browser.mouse("mousePressed", x(start), y)
    for k in range(1, steps + 1):
        browser.mouse("mouseMoved", x(start + (end - start) * k / steps), y)
    browser.mouse("mouseReleased", x(end), y)


def test_the_page_picks_a_unit_drags_it_and_walks_a_counterfactual(served) -> None:
    binary = chromium_or_skip()
    with Browser(binary, 1500, 1000) as browser:
        browser.navigate(served.url + "#unit=88")
        browser.wait_for("window.app && app.ready && app.idle() && app.drawn >= 1")
        assert browser.evaluate("app.moved[0].unit") == 88
        # pick the eye unit from the list: search, then click its row
        browser.evaluate("document.getElementById('search').value = '92';"
                         "document.getElementById('search').dispatchEvent(new Event('input'))")
        browser.wait_for("document.querySelectorAll('#unit-list tbody tr').length === 1")
        _click(browser, "#unit-list tbody tr")
        browser.wait_for(f"app.moved[0].unit === {EYE} && app.idle()")
        assert "unit 92" in browser.evaluate("document.getElementById('unit-title').textContent")
        assert browser.evaluate("document.querySelector('#unit-charts svg') !== null")
        browser.wait_for("document.getElementById('unit-strip').complete && "
                         "document.getElementById('unit-strip').naturalWidth > 0")

        # drag its slider from the far left to the far right with the mouse
        browser.evaluate("window.inputs = 0; document.getElementById('unit-slider')"
                         ".addEventListener('input', () => window.inputs++)")
        _drag_slider(browser, "#unit-slider", 0.0, 0.0, steps=1)
        browser.wait_for("app.idle()")
        low = browser.evaluate("[app.drawn, app.queue.seq, app.frame.image, "
                               "app.frame.units[0].reencoded]")
        _drag_slider(browser, "#unit-slider", 0.0, 1.0, steps=16)
        browser.wait_for("app.idle()")
        high = browser.evaluate("[app.drawn, app.queue.seq, app.frame.image, "
                                "app.frame.units[0].reencoded, window.inputs, "
                                "app.frame.units[0].set, app.moved[0].detail.max]")
        assert high[0] >= low[0] + 1 and high[2] != low[2]  # the creature changed
        assert high[3] > low[3] + 1  # and the unit with it
        assert high[5] == pytest.approx(high[6], rel=0.02)  # dragged to the slider's end
        assert high[1] - low[1] <= high[4]  # never more requests than slider positions
        shown = browser.evaluate("document.getElementById('frame-image').src")
        assert shown == high[2]
        assert "ms" in browser.evaluate("document.getElementById('timing').textContent")
        shots = os.environ.get("LINKSTYLE_EXPLORE_SCREENSHOTS")
        if shots:
            Path(shots).mkdir(parents=True, exist_ok=True)
            browser.screenshot(Path(shots) / "explore-test.png")

        # cross the boundary: find the path to class 1, walk its slider
        browser.evaluate("document.getElementById('cf-target').value = '1'")
        _click(browser, "#cf-find")
        browser.wait_for("app.path !== null && app.mode === 'path' && app.idle()", timeout=300)
        before = browser.evaluate("app.frame.probs.find(p => p.class === 1)?.p ?? 0")
        _drag_slider(browser, "#cf-t", 0.0, 1.0 / 1.5, steps=8)
        browser.wait_for("app.idle() && Number(document.getElementById('cf-t').value) > 0.6")
        after = browser.evaluate("[app.frame.t, app.frame.probs.find(p => p.class === 1)?.p "
                                 "?? 0, document.querySelectorAll('#cf-units tbody tr').length]")
        assert after[0] > 0.6 and after[1] > before + 0.3 and after[2] == 10


def test_a_run_on_s3_is_explored_as_the_same_run_on_disk(run, served, s3) -> None:
    """The same finished run copied to an S3 bucket (a local moto server): the explorer opened
    on ``s3://`` lists the same units and renders the same frame, to the pixel."""
    import fsspec

    from storage import ArtifactStore

    fs = fsspec.filesystem("s3", use_listings_cache=False)
    fs.put(str(run["config"].artifact_root) + "/", "linkstyle-test/explore", recursive=True)
    store = ArtifactStore("s3://linkstyle-test/explore")
    assert store.root_uri.startswith("s3://")
    cfg = run["config"].model_copy(update={"artifact_root": "s3://linkstyle-test/explore"})
    session = ExploreSession(store, run["keys"], models_for(cfg), cfg, run["run_id"])
    remote = start(session)
    try:
        assert _get(remote, "/api/units")[1] == _get(served, "/api/units")[1]
        query = f"/api/frame?class=1&index=0&units={EYE}&values=3.0"
        status, there = _get(remote, query)
        here = _get(served, query)[1]
        assert status == 200, there
        assert there["image"] == here["image"] and there["units"] == here["units"]
    finally:
        remote.stop()
