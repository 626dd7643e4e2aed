"""How fast `linkstyle explore` answers while a unit is dragged, and the README's picture.

    python benchmarks/explore.py frames [--config FILE] [--root URI] [--run ID] [--unit U]
                                        [--frames N] [--threads T] [--json]
    python benchmarks/explore.py scaled [--frames N] [--device D] [--precision P] [--json]
    python benchmarks/explore.py screenshot OUT.png [--config FILE] [--root URI] [--unit U]
                                        [--sample-class C] [--index I] [--at X]

``frames``: a finished run opened as the command opens it, served on 127.0.0.1, then dragged
as the page drags: ``--frames`` requests one after the other (one in flight, as the page
sends them), the unit's value sweeping from below its tuned range to beyond it and back, on
each sample of the run's classes in turn. Reported (milliseconds, p50 and p95):
``frame_ms``, what the issue bounds: render, segment and re-encode of one frame on the server
(``linkstyle_core.explore.frame``, timed there); ``frame_cpu_ms``, the CPU time the process
spent on it meanwhile (all threads: what the frame costs whatever the machine's load, which
stretches the wall clock on a shared machine); ``request_ms``, the whole round trip the page
waits for (frame, PNGs, JSON, HTTP); ``path_frame_ms`` for counterfactual path frames; with
the machine's load average while measuring, torch's threads and the device.

``scaled``: what a frame costs at a real model's size, without a run: bench.py's random-weight
generator and classifier of StyleGAN-XL's and ResNet-50's cost (on a CPU scaled down to 128 px
and ResNet-18) with a segmenter of the same size, ``frame_ms`` as above.

``screenshot``: the page in headless Chromium with unit ``--unit`` of sample ``--index`` of
class ``--sample-class`` set to ``--at`` times its tuned range past its high end (0: its high
end), the part outlines on, the unit list filtered to the unit's part; the top of the page,
stored small.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _open(config_path: str | None, root: str | None, run: str) -> Any:
    """The explorer's session and server over a finished run, as `linkstyle explore` opens it."""
    from flows.cli.common import config_from_args
    from flows.cli.explore import explored_run
    from flows.explore.server import start
    from flows.explore.session import ExploreSession
    from storage import ArtifactStore
    from tasks.context import models_for

    config = config_from_args(argparse.Namespace(config=config_path, root=root))
    run_id, keys = explored_run(config, run)
    session = ExploreSession(ArtifactStore(config.artifact_root), keys, models_for(config),
                             config, run_id)
    return start(session)


def _ms(values: list[float]) -> dict[str, float]:
    a = np.asarray(values)
    return {"p50": round(float(np.percentile(a, 50)), 1),
            "p95": round(float(np.percentile(a, 95)), 1), "max": round(float(a.max()), 1),
            "n": len(a)}


def frames(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from tests.fixtures.http_client import call

    if args.threads:
        torch.set_num_threads(args.threads)
    served = _open(args.config, args.root, args.run)
    session = served.session
    try:
        detail = session.unit_detail(args.unit)
        sweep = np.concatenate([np.linspace(detail["min"], detail["max"], 50),
                                np.linspace(detail["max"], detail["min"], 50)])
        classes = len(session.class_names)
        for cls in range(classes):  # the base frames, as opening a sample renders them
            call(served.port, "GET", f"/api/sample?class={cls}&index=0")
        frame_ms, cpu_ms, request_ms, path_ms = [], [], [], []
        load = os.getloadavg()[0]
        for k in range(args.frames):
            cls, value = (k // len(sweep)) % classes, sweep[k % len(sweep)]
            t0 = time.perf_counter()
            status, body = call(served.port, "GET", f"/api/frame?class={cls}&index=0&units="
                                f"{args.unit}&values={value}&client=bench&seq={k}")
            request_ms.append((time.perf_counter() - t0) * 1000)
            assert status == 200, body
            frame_ms.append(json.loads(body)["frame_ms"])
            cpu_ms.append(json.loads(body)["frame_cpu_ms"])
        call(served.port, "GET", "/api/counterfactual?class=0&index=0&target=1")
        for k, t in enumerate(np.linspace(0, 1.5, min(args.frames, 60))):
            status, body = call(served.port, "GET", f"/api/path?class=0&index=0&target=1&t={t}"
                                f"&client=path&seq={k}")
            assert status == 200, body
            path_ms.append(json.loads(body)["frame_ms"])
        load = max(load, os.getloadavg()[0])
    finally:
        served.stop()
    return {"unit": args.unit, "frames": args.frames, "device": str(session.models.device),
            "resolution": session.models.generator.resolution,
            "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
            "load_average": round(load, 2), "frame_ms": _ms(frame_ms),
            "frame_cpu_ms": _ms(cpu_ms),
            "request_ms": _ms(request_ms), "path_frame_ms": _ms(path_ms)}


def scaled(args: argparse.Namespace) -> dict[str, Any]:
    """Frames of a generator and classifier of a real model's cost (bench.py's ``scaled``
    models: StyleGAN-XL's 256-px layout and ResNet-50 on a GPU; 128 px and ResNet-18 on a CPU;
    random weights, an untrained segmenter of the same size): ``frame_ms`` of
    ``linkstyle_core.explore.frame``, one latent at a time as the explorer renders them."""
    import torch

    from benchmarks.bench import scaled_models
    from linkstyle_core.explore import frame
    from linkstyle_core.segment import FewShotSegmenter
    from linkstyle_core.tuning import generator_features

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.threads:
        torch.set_num_threads(args.threads)
    generator, classifier = scaled_models(device)
    w = torch.randn(args.frames + 5, generator.w_dim, generator=torch.Generator().manual_seed(0))
    feats = generator_features(generator, w[:1, None].expand(1, generator.num_ws, -1).to(device))
    segmenter = FewShotSegmenter([f.shape[1] for f in feats], 7, generator.resolution)
    segmenter = segmenter.to(device).eval().requires_grad_(False)
    times = []
    for k in range(len(w)):
        ms = frame(generator, classifier, segmenter, w[k].to(device), args.precision).seconds
        if k >= 5:  # the first frames warm up the allocator and kernels
            times.append(ms * 1000)
    return {"device": str(device), "resolution": generator.resolution,
            "precision": args.precision, "torch_threads": torch.get_num_threads(),
            "load_average": round(os.getloadavg()[0], 2), "frame_ms": _ms(times)}


def screenshot(args: argparse.Namespace) -> dict[str, Any]:
    from PIL import Image

    from tests.fixtures.cdp import Browser, find_chromium

    binary = find_chromium()
    if binary is None:
        raise SystemExit("no chromium: apt-get install chromium")
    served = _open(args.config, args.root, args.run)
    out = Path(args.out)
    try:
        detail = served.session.unit_detail(args.unit)
        value = detail["high"] + args.at * (detail["high"] - detail["low"])
        with Browser(binary, 1500, 900) as browser:
            browser.navigate(f"{served.url}#unit={args.unit}")
            browser.wait_for("window.app && app.ready && app.idle()")
            browser.evaluate(f"document.getElementById('sample-class').value = "
                             f"'{args.sample_class}'; document.getElementById('sample-index')"
                             f".value = '{args.index}'; loadSample()")
            browser.wait_for(f"app.idle() && app.sample.label === {args.sample_class}")
            browser.evaluate(f"(() => {{ const s = document.getElementById('unit-slider'); "
                             f"s.value = {value}; s.dispatchEvent(new Event('input')); }})()")
            browser.wait_for("app.idle() && app.frame.units && "
                             f"Math.abs(app.frame.units[0].set - {value}) < 1e-3")
            # the list filtered to the unit's part, the unit highlighted in it
            browser.evaluate("(() => { const f = document.getElementById('filter-part'); "
                             f"f.value = {json.dumps(detail['part'])}; "
                             "f.dispatchEvent(new Event('input')); })()")
            frame = browser.evaluate("app.frame")
            out.parent.mkdir(parents=True, exist_ok=True)
            browser.screenshot(out, clip={"x": 0, "y": 0, "width": 1500, "height": 900})
    finally:
        served.stop()
    image = Image.open(out).convert("RGB")
    image.quantize(colors=192, method=Image.Quantize.FASTOCTREE,
                   dither=Image.Dither.NONE).save(out, optimize=True)
    return {"out": str(out), "unit": args.unit, "value": round(value, 3),
            "reencoded": frame["units"][0]["reencoded"], "frame_ms": frame["frame_ms"],
            "pixel_change": frame["pixel_change"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("scaled")
    p.add_argument("--frames", type=int, default=50)
    p.add_argument("--device")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json", action="store_true")
    for name in ("frames", "screenshot"):
        p = sub.add_parser(name)
        if name == "screenshot":
            p.add_argument("out")
            p.add_argument("--sample-class", type=int, default=2)
            p.add_argument("--index", type=int, default=0)
            p.add_argument("--at", type=float, default=0.3)
        else:
            p.add_argument("--frames", type=int, default=300)
            p.add_argument("--threads", type=int, default=0)
            p.add_argument("--json", action="store_true")
        p.add_argument("--config")
        p.add_argument("--root")
        p.add_argument("--run", default="latest")
        p.add_argument("--unit", type=int, default=92)
    args = parser.parse_args(argv)
    out = {"frames": frames, "scaled": scaled, "screenshot": screenshot}[args.what](args)
    print(json.dumps(out, indent=None if getattr(args, "json", False) else 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
