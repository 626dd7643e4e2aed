"""Throughput of each stage against the generator's own batched throughput (the ceiling).

    python benchmarks/throughput.py [--config FILE] [--batch 256] [--repeat 3]

Everything is measured in one process, one after the other, so the ratios compare like with
like on a shared, noisy machine; absolute images/s vary between runs, the ratios much less.
Reported: generator synthesis alone, classifier alone, stage 1 (render + classify + accept),
the link's closed loop, stage 3+4 tuning (render + re-encode + segment + measure + flow).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from linkstyle_core.config import AnalysisConfig
from linkstyle_core.link import LinearLink
from linkstyle_core.paired import sample_class
from linkstyle_core.render import broadcast_w, encode, synthesize
from linkstyle_core.segment import FewShotSegmenter
from linkstyle_core.tuning import base_images, render_with_features, tune
from tasks.context import models_for


def _rate(images: int, fn: Callable[[], object], repeat: int, device: torch.device) -> float:
    fn()  # warm-up (allocations, kernel selection)
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return images / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="analysis config YAML (default: the toy world)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    cfg = AnalysisConfig.from_yaml(args.config) if args.config else AnalysisConfig()
    m = models_for(cfg)
    gen, clf, dev, precision = m.generator, m.classifier, m.device, cfg.runtime.precision
    n = args.batch
    g = torch.Generator().manual_seed(0)
    z = torch.randn(n, gen.z_dim, generator=g).to(dev)
    c = torch.nn.functional.one_hot(torch.arange(n) % gen.c_dim, gen.c_dim).float().to(dev)
    with torch.no_grad():
        w = gen.mapping(z, c, cfg.data.truncation)[:, 0]
        images = synthesize(gen, w, precision)
        r, _ = encode(clf, images, precision)
        feats = render_with_features(gen, broadcast_w(w[:2], gen.num_ws))[1]
    link = LinearLink("ridge").fit(r.cpu(), w.cpu())
    seg = FewShotSegmenter([f.shape[1] for f in feats], 7, gen.resolution).to(dev).eval()

    rates = {
        "generator synthesis": _rate(n, lambda: synthesize(gen, w, precision), args.repeat, dev),
        "classifier": _rate(n, lambda: encode(clf, images, precision), args.repeat, dev),
        "stage 1 paired (accepted)": _rate(
            n // 2, lambda: sample_class(gen, clf, 0, n // 2, batch_size=n, device=dev,
                                         precision=precision, max_attempts_factor=50),
            args.repeat, dev),
    }
    samples, steps, units = 8, 3, max(1, n // 24)
    w0 = link.predict(r[:samples].to(dev))
    base = base_images(gen, clf, seg, w0, n, precision)[0]
    dirs = link.coef_[:, :units].T.to(dev)
    readout = torch.eye(r.shape[1], device=dev)[:units]
    offsets = torch.linspace(-1, 1, steps).expand(units, samples, steps).contiguous()
    labels = torch.zeros(samples, dtype=torch.long, device=dev)
    rates["stage 3+4 tuning (all scoring)"] = _rate(
        units * samples * steps,
        lambda: tune(gen, clf, seg, w0, labels, base, dirs, readout, offsets, batch_size=n,
                     precision=precision, keep_images=False), args.repeat, dev)

    ceiling = rates["generator synthesis"]
    print(f"device {dev}, precision {precision}, batch {n}, "
          f"threads {torch.get_num_threads()}, {gen.resolution}px")
    print(f"{'stage':<34} {'images/s':>10} {'/ generator':>12}")
    for name, rate in rates.items():
        print(f"{name:<34} {rate:>10.1f} {rate / ceiling:>12.2f}")


if __name__ == "__main__":
    main()
