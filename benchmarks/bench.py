"""Pipeline throughput against the generator's ceiling and the reference implementation's loops.

    python benchmarks/bench.py [--device D] [--generator toy|scaled|CONFIG] [--json] [--tiny]

Every figure comes from this one process, measured one after the other, so the ratios compare
like with like on a shared, noisy machine (absolute images/s vary between runs, ratios much
less). Figures (``--json`` prints them as one object):

- ``ceiling_img_s``: batched synthesis alone, the practical ceiling;
- ``tune_img_s`` / ``tune_ratio``: stages 3+4 end to end as the tune stage runs them, shard by
  shard: render with features, re-encode, segment, measure, optical flow, and the shard's
  artifact written and committed (images, parts, arrays, tables);
- ``paired_img_s`` / ``paired_ratio``: stage 1, accepted samples per second (``sample_class``),
  at each of ``--samples`` (``paired_by_samples``; top level: the fewest samples);
- ``reference_tune_img_s``, ``reference_paired_img_s``: the same work for the same outputs, as
  the reference implementation's loops do it: one image per generator call, a PNG written and
  read back (PIL), then one image at a time classified (two classifier calls in stage 1),
  segmented and measured;
- ``speedup_tune``, ``speedup_paired``: ours over the reference (paired: the smallest over
  ``--samples``);
- ``link_fit_s``: fitting a link on 25,000 x 2048 -> 512 (``lr`` and ``ridge``; the slower);
- ``peak_mem_mb``: peak resident memory of the tune loop at two unit counts; it stays flat
  because shards stream.

``--generator scaled``: a random-weight generator with StyleGAN-XL-like cost (256 px, 512- to
1024-channel layers, about 1 TFLOP per image) and a random-weight ResNet-50, so overheads are
measured at a realistic size; on a CPU it is scaled down (128 px, 256 channels, ResNet-18).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from linkstyle_core.config import AnalysisConfig
from linkstyle_core.link import LinearLink
from linkstyle_core.measure import optical_flow, part_measures, part_motion
from linkstyle_core.models.classifiers import Preprocessing, SplitClassifier
from linkstyle_core.paired import one_hot, sample_class, sample_latents
from linkstyle_core.render import broadcast_w, encode, synthesize
from linkstyle_core.segment import FewShotSegmenter
from linkstyle_core.toyworld.generator import ToyGenerator, ToyGeneratorConfig
from linkstyle_core.tuning import base_images, render_with_features, to_uint8, tune
from storage import ArtifactStore, content_key
from tasks.context import models_for
from tasks.trajectories import write_result
from tasks.tuning import run_streamed

PARTS = 7  # the toy world's parts and background


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _seconds(fn: Callable[[], object], device: torch.device, repeat: int) -> float:
    """Median wall time of ``fn`` over ``repeat`` runs after one warm-up run."""
    fn()
    times = []
    for _ in range(repeat):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class _PeakMemory:
    """Peak resident memory (MB) while the block runs: sampled every 5 ms on Linux, else the
    process's high-water mark; the device's peak allocation on CUDA."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.peak = device, 0.0
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_mb())
            time.sleep(0.005)

    def __enter__(self) -> _PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif not os.path.exists("/proc/self/statm"):
            self.peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------ models


def scaled_models(device: torch.device) -> tuple[Any, Any]:
    import torchvision

    if device.type == "cuda":  # ~1.1 TFLOP per 256 px image, like StyleGAN-XL's 256 px network
        channels, net = (1024, 1024, 1024, 1024, 1024, 512, 512), torchvision.models.resnet50
        prep = Preprocessing(resize_size=232, crop_size=224)
    else:  # the same layout, small enough for a CPU
        channels, net = (256, 256, 256, 256, 128, 64), torchvision.models.resnet18
        prep = Preprocessing(resize_size=128, crop_size=112)
    torch.manual_seed(0)
    generator = ToyGenerator(ToyGeneratorConfig(channels=channels)).eval().requires_grad_(False)
    classifier = SplitClassifier(net(num_classes=generator.c_dim), prep, name="random")
    return generator.to(device), classifier.to(device).eval().requires_grad_(False)


def _models(spec: str, device_arg: str | None) -> tuple[Any, Any, torch.device, AnalysisConfig]:
    cfg = AnalysisConfig() if spec in ("toy", "scaled") else AnalysisConfig.from_yaml(spec)
    if device_arg:
        cfg = cfg.model_copy(update={"runtime": cfg.runtime.model_copy(
            update={"device": device_arg})})
    m = models_for(cfg)
    if spec == "scaled":
        generator, classifier = scaled_models(m.device)
        return generator, classifier, m.device, cfg
    return m.generator, m.classifier, m.device, cfg


# ------------------------------------------------------------------ the reference loops


def _png_round_trip(image: torch.Tensor, zf: zipfile.ZipFile | None = None,
                    name: str = "") -> torch.Tensor:
    """One [3, H, W] image in [-1, 1] -> PNG (into ``zf``, as the reference stores its tuning
    images) -> read back -> [1, 3, H, W] in [-1, 1] on the image's device."""
    array = to_uint8(image).permute(1, 2, 0).cpu().numpy()
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    data = buffer.getvalue()
    if zf is not None:
        zf.writestr(name, data)
        data = zf.read(name)
    back = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    x = torch.from_numpy(back.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
    return x.to(image.device)


@torch.no_grad()
def reference_paired(generator: Any, classifier: Any, cls: int, n: int, truncation: float,
                     device: torch.device) -> int:
    """Stage 1 as the reference does it: per latent one mapping and one synthesis call, a PIL
    round trip, one classifier call to accept and one for the activations. Returns draws."""
    accepted, drawn = 0, 0
    c = one_hot(torch.tensor([cls], device=device), generator.c_dim)
    while accepted < n:
        z = sample_latents(generator.z_dim, 0, "train", cls, np.array([drawn])).to(device)
        w = generator.mapping(z, c, truncation)[:, 0]
        image = _png_round_trip(synthesize(generator, w)[0])
        x = classifier.preprocess(image)
        if int(classifier.head(classifier.features(x)).argmax(1)) == cls:
            classifier.features(classifier.preprocess(image))  # r, by a second call
            accepted += 1
        drawn += 1
    return drawn


@torch.no_grad()
def reference_tune(generator: Any, classifier: Any, segmenter: FewShotSegmenter,
                   w0: torch.Tensor, dirs: torch.Tensor, offsets: torch.Tensor,
                   out: Path) -> None:
    """Stages 3+4 as the reference does them, for the same outputs as ``tune``: per image one
    synthesis call (with its features), the PNG written into a zip and read back, then that
    image classified, segmented and measured; per trajectory the flow and part motion."""
    k_dirs, n_samples, steps = offsets.shape
    rows = []
    with zipfile.ZipFile(out, "w") as zf:
        for k in range(k_dirs):
            for s in range(n_samples):
                images, parts = [], []
                for j in range(steps):
                    w = w0[s] + offsets[k, s, j] * dirs[k]
                    image, feats = render_with_features(generator, broadcast_w(w[None],
                                                                               generator.num_ws))
                    back = _png_round_trip(image[0], zf, f"unit{k}/sample{s}/step{j}.png")
                    r, logits = encode(classifier, back)
                    labels = segmenter.predict(feats)
                    measures = part_measures(back, labels, segmenter.num_parts)
                    rows.append((r.cpu(), logits.cpu(), measures.cpu()))
                    images.append(back)
                    parts.append(labels)
                flow = optical_flow(images[0], images[-1])
                part_motion(flow, parts[0], segmenter.num_parts)


# ------------------------------------------------------------------ ours


def _tune_inputs(generator: Any, classifier: Any, device: torch.device, samples: int,
                 precision: str, batch: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    c_dim = generator.c_dim
    labels = torch.arange(samples) % c_dim
    with torch.no_grad():
        z = torch.randn(samples, generator.z_dim, generator=g).to(device)
        w0 = generator.mapping(z, one_hot(labels.to(device), c_dim), 0.7)[:, 0]
        r, _ = encode(classifier, synthesize(generator, w0[:2], precision), precision)
        feats = render_with_features(generator, broadcast_w(w0[:2], generator.num_ws))[1]
    segmenter = FewShotSegmenter([f.shape[1] for f in feats], PARTS,
                                 generator.resolution).to(device).eval()
    base, base_area = base_images(generator, classifier, segmenter, w0, batch, precision)
    return {"w0": w0, "labels": labels.to(device), "base": base, "base_area": base_area,
            "segmenter": segmenter, "feature_dim": r.shape[1], "picks": torch.arange(samples),
            "parts": ["background", *(f"part{i}" for i in range(1, PARTS))]}


def _tune_run(generator: Any, classifier: Any, inp: dict[str, Any], units: int, steps: int,
              shard_size: int, batch: int, precision: str, root: Path) -> None:
    """Stages 3+4 over ``units`` units as the tune stage runs them: shard by shard, each tuned
    with its images streamed to storage by the background writer, then its other arrays and
    tables written and the shard committed."""
    g = torch.Generator().manual_seed(1)
    device, w_dim, dim = inp["w0"].device, inp["w0"].shape[1], inp["feature_dim"]
    shards = {f"units-{s:04d}": list(range(s, min(s + shard_size, units)))
              for s in range(0, units, shard_size)}
    key = content_key("tune", "bench", {"units": units})
    writer = ArtifactStore(str(root)).sharded("tune", key, list(shards))
    samples = len(inp["w0"])
    for shard, ids in shards.items():
        k = len(ids)
        dirs = torch.randn(k, w_dim, generator=g).to(device) * 0.05
        readout = torch.nn.functional.one_hot(torch.tensor(ids) % dim, dim).float()
        offsets = torch.linspace(-1, 1, steps).expand(k, samples, steps).contiguous()
        nan = torch.full((k,), float("nan"))
        calibration = {"scale": torch.ones(k), "latent_step": dirs.norm(dim=1).cpu() * 2,
                       "gain_analytic": nan, "gain_measured": nan}
        with writer.shard(shard) as out:
            res = run_streamed(out, k, samples, lambda on_images, dirs=dirs, readout=readout,
                               offsets=offsets: tune(
                generator, classifier, inp["segmenter"], inp["w0"], inp["labels"], inp["base"],
                dirs, readout, offsets, batch_size=batch, precision=precision,
                on_images=on_images))
            write_result(out, np.asarray(ids), "unit", res, res.offset, inp | {
                "r_std": torch.ones(dim)}, calibration)
    writer.finalize()


@torch.no_grad()
def _paired_class(generator: Any, classifier: Any, device: torch.device) -> int:
    """The class whose images the classifier accepts most often: a random-weight classifier
    assigns most images to one class, whichever the generator was asked for."""
    z = torch.randn(16, generator.z_dim, generator=torch.Generator().manual_seed(2)).to(device)
    rates = []
    for c in range(generator.c_dim):
        label = torch.full((16,), c, device=device)
        w = generator.mapping(z, one_hot(label, generator.c_dim), 0.7)[:, 0]
        logits = encode(classifier, synthesize(generator, w))[1]
        rates.append(float((logits.argmax(1) == c).float().mean()))
    return int(np.argmax(rates))


def measure(spec: str = "toy", device_arg: str | None = None, tiny: bool = False,
            samples_list: tuple[int, ...] = (64, 256), repeat: int = 3) -> dict[str, Any]:
    generator, classifier, device, cfg = _models(spec, device_arg)
    precision, batch = cfg.runtime.precision, cfg.runtime.batch_size
    steps, shard_size = cfg.tuning.steps, cfg.tuning.shard_size
    if tiny:
        batch, shard_size, samples_list, repeat = 16, 2, (4,), 1
    out: dict[str, Any] = {
        "device": str(device), "generator": spec, "resolution": generator.resolution,
        "precision": precision, "batch_size": batch, "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    g = torch.Generator().manual_seed(0)
    z = torch.randn(batch, generator.z_dim, generator=g).to(device)
    c = one_hot((torch.arange(batch) % generator.c_dim).to(device), generator.c_dim)
    with torch.no_grad():
        w = generator.mapping(z, c, 0.7)[:, 0]
    out["ceiling_img_s"] = batch / _seconds(lambda: synthesize(generator, w, precision),
                                            device, repeat)

    # stages 3+4: shards of tuned units, written; peak memory at two unit counts
    samples = 4 if tiny else cfg.tuning.samples_per_class * generator.c_dim
    inp = _tune_inputs(generator, classifier, device, samples, precision, batch)
    unit_counts = (2, 4) if tiny else (shard_size, 4 * shard_size)
    with tempfile.TemporaryDirectory() as tmp:
        _tune_run(generator, classifier, inp, unit_counts[0], steps, shard_size, batch,
                  precision, Path(tmp, "warm"))  # warm-up
        peaks, rates = [], []
        for units in unit_counts:
            with _PeakMemory(device) as peak:
                _sync(device)
                t0 = time.perf_counter()
                _tune_run(generator, classifier, inp, units, steps, shard_size, batch,
                          precision, Path(tmp, f"u{units}"))
                _sync(device)
                rates.append(units * samples * steps / (time.perf_counter() - t0))
            peaks.append(peak.peak)
        out["tune_img_s"] = statistics.median(rates)
        out["tune_units"] = list(unit_counts)
        out["peak_mem_mb"] = {str(u): round(p, 1) for u, p in zip(unit_counts, peaks,
                                                                   strict=True)}
        ref_units = 1 if tiny else 2
        ref_samples = min(samples, 2 if tiny else 8)
        dirs = torch.randn(ref_units, inp["w0"].shape[1], generator=g).to(device) * 0.05
        offsets = torch.linspace(-1, 1, steps).expand(ref_units, ref_samples, steps)
        t = _seconds(lambda: reference_tune(generator, classifier, inp["segmenter"],
                                            inp["w0"][:ref_samples], dirs, offsets,
                                            Path(tmp, "reference.zip")), device, 1)
        out["reference_tune_img_s"] = ref_units * ref_samples * steps / t
    out["tune_ratio"] = out["tune_img_s"] / out["ceiling_img_s"]
    out["speedup_tune"] = out["tune_img_s"] / out["reference_tune_img_s"]

    # stage 1: accepted samples per second, ours and the reference's, per sample count
    cls = _paired_class(generator, classifier, device) if spec == "scaled" else 0
    out["paired_class"] = cls
    by_samples = {}
    for n in samples_list:
        def ours(n: int = n) -> None:
            sample_class(generator, classifier, cls, n, batch_size=batch, device=device,
                         precision=precision, truncation=0.7, max_attempts_factor=50,
                         min_acceptance=0.0)
        rate = n / _seconds(ours, device, repeat)
        reference = n / _seconds(lambda n=n: reference_paired(generator, classifier, cls, n,
                                                              0.7, device), device, 1)
        by_samples[str(n)] = {"paired_img_s": rate, "paired_ratio": rate / out["ceiling_img_s"],
                              "reference_paired_img_s": reference,
                              "speedup_paired": rate / reference}
    out["paired_by_samples"] = by_samples
    out.update(by_samples[str(min(samples_list))])  # the fewest samples: the hardest case
    out["speedup_paired"] = min(v["speedup_paired"] for v in by_samples.values())

    # the link: 25,000 x 2048 -> 512 (tiny: 2,000 x 256 -> 64)
    n_fit, d_in, d_out = (2000, 256, 64) if tiny else (25000, 2048, 512)
    r = torch.randn(n_fit, d_in, generator=g)
    w_fit = r[:, :d_out] @ torch.randn(d_out, d_out, generator=g) + torch.randn(n_fit, d_out,
                                                                                generator=g)
    fits = {kind: _seconds(lambda kind=kind: LinearLink(kind).fit(r, w_fit), torch.device("cpu"),
                           1) for kind in ("lr", "ridge")}
    out["link_fit_s_by_type"] = fits
    out["link_fit_s"] = max(fits.values())
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", help="cpu, cuda, cuda:N (default: runtime.device, auto)")
    parser.add_argument("--generator", default="toy",
                        help="toy (the bundled toy world), scaled (StyleGAN-XL-sized random "
                             "weights) or the path of an analysis config YAML")
    parser.add_argument("--samples", default="64,256",
                        help="accepted samples per stage-1 measurement, comma-separated")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tiny", action="store_true", help="a tiny run that checks the script")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    samples = tuple(int(s) for s in args.samples.split(","))
    result = measure(args.generator, args.device, args.tiny, samples, args.repeat)
    if args.json:
        json.dump(result, sys.stdout, indent=1)
        print()
        return
    for key, value in result.items():
        if isinstance(value, float):
            value = round(value, 3)
        print(f"{key:<24} {value}")


if __name__ == "__main__":
    main()
