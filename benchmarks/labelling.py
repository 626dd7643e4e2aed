"""Labelling with pre-fill on the toy world: how good the proposals are, and how long it takes.

    python benchmarks/labelling.py miou [--counts 2,3,5,8] [--eval 64] [--steps 300] [--json]
    python benchmarks/labelling.py user [--images 8] [--export 16] [--steps 300]
                                        [--screenshots DIR] [--json]

``miou``: the pre-fill (``linkstyle_core.prefill``: the stage-3 segmenter on the toy
generator's feature maps) trained on the renderer's label maps of the first n of 8 toy images,
standing in for a person's painted labels. Per n: the mIoU on ``--eval`` fresh toy images
(``heldout_miou``, per part in ``heldout_per_part``), the leave-one-out mIoU over the n
labelled images that the page shows (``loo_miou``), and the seconds of one training.

``user``: a scripted new user (tests/fixtures/labelling_user.py) labels ``--images`` of an
exported folder of ``--export`` toy images through the real server and page in headless
Chromium: the first image from scratch, then the next unlabelled image until the pre-fill has
proposals, then the least-sure one (U), correcting whatever the page shows until it equals the
renderer's label map, and saving. From the third image on it first waits until the proposals
come from every image labelled so far (``--no-wait``: it does not). Reported: the wall-clock
seconds for all images (``seconds``, waits included; ``waited_for_prefill_s``), the strokes,
and per image where its mask came from (empty or proposal), how many pixels were wrong when it
opened and how many strokes corrected them. ``--screenshots DIR``
writes the page's pictures for docs/real-models.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PARTS_N = 7


def measure_miou(counts: list[int], n_eval: int, steps: int) -> dict[str, object]:
    from linkstyle_core.labels import toy_labelled
    from linkstyle_core.models.toy import load_toy_generator
    from linkstyle_core.prefill import leave_one_out, propose
    from linkstyle_core.segment import mean_iou
    from linkstyle_core.toyworld.factors import PARTS
    from linkstyle_core.tuning import generator_features

    generator = load_toy_generator()
    ws, labels = toy_labelled(generator, max(counts), 0)
    ws_eval, labels_eval = toy_labelled(generator, n_eval, 10_000)
    feats = generator_features(generator, torch.cat([ws, ws_eval]))
    rows = []
    for n in counts:
        t0 = time.perf_counter()
        proposal = propose(feats, list(range(n)), labels[:n], len(PARTS), steps=steps)
        train_s = time.perf_counter() - t0
        miou, per_part = mean_iou(proposal.labels[len(ws):], labels_eval, len(PARTS))
        loo = leave_one_out([f[:len(ws)] for f in feats], list(range(n)), labels[:n],
                            len(PARTS), steps=steps)
        rows.append({"labelled": n, "heldout_miou": round(miou, 4),
                     "heldout_per_part": dict(zip(PARTS, [round(v, 3) for v in per_part],
                                                  strict=True)),
                     "loo_miou": round(loo.miou, 4), "train_s": round(train_s, 1)})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return {"eval_images": n_eval, "steps": steps, "rows": rows}


def scripted_user(images: int, export: int, steps: int, screenshots: Path | None,
                  wait_prefill: bool = True) -> dict[str, object]:
    from flows.labelling.server import LabellingSession, start, stop_server
    from linkstyle_core.labels import export_latents, toy_labelled
    from linkstyle_core.models.toy import load_toy_generator
    from linkstyle_core.toyworld.factors import PARTS
    from tests.fixtures.cdp import Browser, find_chromium
    from tests.fixtures.labelling_user import PageUser

    binary = find_chromium()
    if binary is None:
        raise SystemExit("no chromium: apt-get install chromium")
    generator = load_toy_generator()
    ws, labels = toy_labelled(generator, export, 5)
    targets = labels.numpy().astype(np.uint8)
    res = targets.shape[-1]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "toy-labels"
        export_latents(generator, folder, ws, list(PARTS))
        session = LabellingSession(folder, generator, steps=steps)
        server, _ = start(session)
        per_image = []
        try:
            with Browser(binary, 1100, 760) as browser:
                user = PageUser(browser, res, res)
                t0 = time.perf_counter()
                browser.navigate(server.url)
                user.wait_ready()
                waited = 0.0
                for k in range(images):
                    if k > 0 and wait_prefill and k >= 2:
                        # proposals from every image labelled so far, as a person would wait
                        # for them before opening the next image
                        t_wait = time.perf_counter()
                        browser.wait_for(f"(app.state.prefill.trained_on || []).length === {k}",
                                         timeout=3600)
                        waited += time.perf_counter() - t_wait
                    if k > 0:
                        has_proposals = browser.evaluate("!!app.state.prefill.trained_on")
                        user.key("u" if has_proposals else "n")
                        browser.wait_for("app.busy === 0")
                    index = user.index()
                    took = user.label_like(targets[index])
                    if screenshots and k == 0:
                        _shot(browser, screenshots / "labels-painted.png")
                    per_image.append({"image": index, **{key: (round(v, 1) if isinstance(
                        v, float) else v) for key, v in took.items()}})
                    print(json.dumps(per_image[-1]), file=sys.stderr, flush=True)
                total = time.perf_counter() - t0
                # the held-out figure the page shows once the last leave-one-out has run
                browser.wait_for(f"app.state.prefill.status === 'ready' && "
                                 f"app.state.prefill.heldout.folds === {images}", timeout=1800)
                state = browser.evaluate("app.state.prefill")
                if screenshots:
                    browser.evaluate("app.open(app.state.prefill.least_sure[0])")
                    user.wait_idle()
                    _shot(browser, screenshots / "labels-prefill.png")
                    state = browser.evaluate("app.state.prefill")
        finally:
            stop_server(server)
        saved = [np.asarray(__import__("PIL.Image").Image.open(
            folder / "labels" / f"{p['image']:04d}.png")) for p in per_image]
        exact = all(np.array_equal(m, targets[p["image"]])
                    for m, p in zip(saved, per_image, strict=True))
    return {"images": images, "seconds": round(total, 1), "steps": steps,
            "waited_for_prefill_s": round(waited, 1),
            "strokes": sum(p["strokes"] for p in per_image),
            "masks_equal_targets": exact, "per_image": per_image,
            "heldout_at_end": state.get("heldout")}


def _shot(browser, path: Path) -> None:
    """A screenshot of the top of the page, stored small."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    browser.screenshot(path, clip={"x": 0, "y": 0, "width": 1100, "height": 600})
    # 128 colours without dithering: about 30 KB, and the part colours stay distinct (a median
    # cut merged the small legend swatches into the image's greys)
    image = Image.open(path).convert("RGB")
    image.quantize(colors=128, method=Image.Quantize.FASTOCTREE,
                   dither=Image.Dither.NONE).save(path, optimize=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("miou")
    p.add_argument("--counts", default="2,3,5,8")
    p.add_argument("--eval", type=int, default=64)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("user")
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--export", type=int, default=16)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--screenshots", type=Path)
    p.add_argument("--no-wait", action="store_true",
                   help="do not wait for proposals from every labelled image before the next")
    p.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    if args.what == "miou":
        out = measure_miou([int(c) for c in args.counts.split(",")], args.eval, args.steps)
    else:
        out = scripted_user(args.images, args.export, args.steps, args.screenshots,
                            wait_prefill=not args.no_wait)
    print(json.dumps(out, indent=None if args.json else 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
