"""The labelling page of `linkstyle labels open`, driven in headless Chromium like a person.

Strokes, a fill, the eraser, undo and redo on two toy-world images; save; reload; the masks on
disk and in the page must equal, pixel for pixel, what those strokes paint. Then the pre-fill
must propose a mask for the third image, and `labels import` must accept the folder.
Skips only where no Chromium can be found or installed (tests.fixtures.cdp.chromium_or_skip).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flows.labelling.server import LabellingSession, start, stop_server
from linkstyle_core.labels import export_latents, toy_labelled
from tests.fixtures.cdp import Browser, chromium_or_skip
from tests.fixtures.labelling_user import PageUser

RES = 64


@pytest.fixture(scope="module")
def toy_generator():
    from linkstyle_core.models.toy import load_toy_generator

    return load_toy_generator()


def toy_folder(path: Path, generator, count: int, seed: int = 3) -> tuple[Path, np.ndarray]:
    """An exported folder of ``count`` toy images, and the renderer's label maps of them."""
    from linkstyle_core.toyworld.factors import PARTS

    ws, labels = toy_labelled(generator, count, seed)
    export_latents(generator, path, ws, list(PARTS))
    return path, labels.numpy().astype(np.uint8)


def _disk(folder: Path, index: int) -> np.ndarray:
    return np.asarray(Image.open(folder / "labels" / f"{index:04d}.png"))


def test_paint_fill_save_reload_and_prefill(tmp_path, toy_generator, capsys) -> None:
    binary = chromium_or_skip()
    folder, _ = toy_folder(tmp_path / "export", toy_generator, 3)
    session = LabellingSession(folder, toy_generator, steps=30)
    server, _ = start(session)
    try:
        with Browser(binary) as browser:
            browser.navigate(server.url)
            user = PageUser(browser, RES, RES)
            user.wait_ready()
            assert user.index() == 0
            assert browser.evaluate("document.getElementById('progress').textContent") \
                == "0 of 3 labelled"

            # image 0: strokes of every part, a fill, undo/redo, the eraser
            user.sync()
            user.key("1")
            user.key("]")
            user.key("]")  # brush 9
            user.drag([(8, 8), (30, 12), (30, 30)])
            user.key("[")
            user.key("[")  # brush 5
            for part in range(2, 7):
                user.key(str(part))
                user.drag([(4, 36 + 5 * part), (24, 38 + 5 * part)])
            user.key("f")
            user.key("4")
            user.drag([(20, 10)])  # fill the first stroke's region with part 4
            user.key("b")
            user.key("5")
            before_undo = user.painter.mask.copy()
            user.drag([(50, 5), (60, 15)])
            after_stroke = user.painter.mask.copy()
            user.key("z", modifiers=2)  # Ctrl+Z
            assert np.array_equal(user.page_mask(), before_undo)
            user.key("y", modifiers=2)  # Ctrl+Y
            assert np.array_equal(user.page_mask(), after_stroke)
            user.key("e")
            user.drag([(48, 8), (56, 8)])
            assert np.array_equal(user.page_mask(), user.painter.mask)
            user.save()
            expected0 = user.painter.mask.copy()
            assert np.array_equal(_disk(folder, 0), expected0)

            # image 1 (N: next unlabelled): fill the empty mask, paint over it
            user.key("n")
            browser.wait_for("app.index === 1 && app.busy === 0")
            user.sync()
            user.key("f")
            user.key("1")
            user.drag([(0, 0)])
            user.key("b")
            for part in (2, 3, 4, 5, 6, 0):
                user.key(str(part))
                user.drag([(10 + 7 * part, 5), (12 + 7 * part, 58)])
            user.save()
            expected1 = user.painter.mask.copy()
            assert np.array_equal(_disk(folder, 1), expected1)
            assert (expected1 == 1).mean() > 0.5 and len(np.unique(expected1)) == 7

            # reload: the page shows what is on disk
            browser.reload()
            user.wait_ready()
            assert user.index() == 1  # the address remembers the image
            assert np.array_equal(user.page_mask(), expected1)
            browser.evaluate("app.open(0)")
            user.wait_idle()
            assert np.array_equal(user.page_mask(), expected0)
            assert browser.evaluate("document.getElementById('progress').textContent") \
                == "2 of 3 labelled"
            assert browser.evaluate("app.source") == "saved"

            # the pre-fill: trained on images 0 and 1, it proposes image 2's mask
            browser.wait_for("app.state.prefill.status === 'ready'", timeout=600)
            user.key("n")
            browser.wait_for("app.index === 2 && app.busy === 0 && app.source === 'proposal'",
                             timeout=120)
            proposal = session.proposal_bytes(2)
            assert proposal is not None
            assert np.array_equal(user.page_mask(),
                                  np.frombuffer(proposal, np.uint8).reshape(RES, RES))
            text = browser.evaluate("document.getElementById('prefill').textContent")
            assert "proposals from 2 images" in text
            heldout = browser.evaluate("document.getElementById('heldout').textContent")
            assert "held-out mIoU" in heldout and "leave-one-out, 2 images" in heldout
            shots = os.environ.get("LINKSTYLE_LABEL_SCREENSHOTS")
            if shots:
                Path(shots).mkdir(parents=True, exist_ok=True)
                browser.screenshot(Path(shots) / "page-test.png")

            # correct it a little and save: the folder is complete
            user.sync()
            user.key("3")
            user.drag([(30, 30), (34, 34)])
            user.save()
            assert np.array_equal(_disk(folder, 2), user.painter.mask)
    finally:
        stop_server(server)

    from flows.cli import main

    assert main(["labels", "import", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "3 labelled images" in out and "pixels" in out
    for part, count in zip(["background", "body", "head"],
                           np.bincount(np.stack([expected0, expected1, _disk(folder, 2)]).ravel(),
                                       minlength=7), strict=False):
        assert f"{part}" in out and str(count) in out
    previews = sorted(p.name for p in (folder / "preview").iterdir())
    assert previews == ["0000.png", "0001.png", "0002.png"]


@pytest.mark.slow
def test_a_scripted_new_user_labels_eight_images_with_prefill(tmp_path) -> None:
    """benchmarks/labelling.py's scripted user through the real server and page: eight toy
    images labelled to the renderer's label maps, later ones starting from proposals. With
    LINKSTYLE_LABEL_SCREENSHOTS=DIR it also writes the screenshots of docs/real-models.md."""
    import json
    import subprocess
    import sys

    chromium_or_skip()
    root = Path(__file__).resolve().parents[2]
    argv = [sys.executable, "benchmarks/labelling.py", "user", "--images", "8", "--export",
            "12", "--steps", "100", "--json"]
    shots = os.environ.get("LINKSTYLE_LABEL_SCREENSHOTS")
    if shots:
        argv += ["--screenshots", shots]
    done = subprocess.run(argv, cwd=root, capture_output=True, text=True, timeout=3600,
                          env={**os.environ, "PYTHONPATH": str(root)})
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout)
    assert out["masks_equal_targets"] and len(out["per_image"]) == 8
    assert any(p["source"] == "proposal" for p in out["per_image"])
    assert out["heldout_at_end"] is not None
