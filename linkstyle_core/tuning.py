"""Stage 3, unit tuning, scored as it renders (DESIGN.md "3. Tune units" and "4. Score").

For held-out samples, one unit u of r is set to values spanning its observed range; the link
maps each modified r to a latent and the generator renders it. Because the link is linear,
``w(step) = w0 + (v_step - r_u) * A[:, u]`` with ``w0 = A r + b``: whole trajectories are one
batched tensor expression. Random directions in r-space go through the same code (the null
control). Every rendered image is re-encoded by the classifier, segmented into parts and
measured while it is still on the device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from linkstyle_core.measure import optical_flow, part_measures, part_motion
from linkstyle_core.models.protocols import Classifier, Generator
from linkstyle_core.render import broadcast_w, encode, synthesize
from linkstyle_core.runtime import autocast
from linkstyle_core.segment import FewShotSegmenter


def activation_ranges(
    r: torch.Tensor, mode: str = "minmax", percentiles: tuple[float, float] = (1.0, 99.0)
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-unit tuning range from training activations r: [N, D] -> (low [D], high [D])."""
    r = r.float()
    if mode == "minmax":
        return r.min(0).values, r.max(0).values
    if mode == "percentile":
        q = torch.tensor(percentiles, dtype=torch.float32) / 100
        low, high = torch.quantile(r, q, dim=0)
        return low, high
    raise ValueError(f"range must be 'minmax' or 'percentile', got {mode!r}")


def step_values(low: torch.Tensor, high: torch.Tensor, steps: int) -> torch.Tensor:
    """[U] bounds -> [U, steps] evenly spaced values from low to high."""
    t = torch.linspace(0, 1, steps, device=low.device)
    return low[:, None] + (high - low)[:, None] * t[None, :]


def unit_offsets(values: torch.Tensor, r_units: torch.Tensor) -> torch.Tensor:
    """values [U, S] set for each unit, r_units [Ns, U] the samples' own activations ->
    offsets [U, Ns, S] = v - r_u, the distance moved along each unit's axis."""
    return values[:, None, :] - r_units.T[:, :, None]


def null_directions(
    dim: int, spans: torch.Tensor, count: int, steps: int, n_samples: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random unit-norm directions in r-space with step sizes like the units'.

    spans: [U] the units' ranges (high - low). Direction k gets the span of a randomly drawn
    unit and moves each sample symmetrically about its own r, from -span/2 to +span/2.
    Returns (directions [count, dim], offsets [count, n_samples, steps]).
    """
    gen = torch.Generator().manual_seed(seed)
    d = torch.randn(count, dim, generator=gen)
    d = d / d.norm(dim=1, keepdim=True)
    pick = torch.randint(len(spans), (count,), generator=gen)
    span = spans.cpu().float()[pick]
    t = torch.linspace(-0.5, 0.5, steps)
    offsets = (span[:, None] * t[None, :])[:, None, :].expand(count, n_samples, steps)
    return d, offsets.contiguous()


@dataclass
class TuneResult:
    """Per direction k (a unit or a null direction), sample s and step:

    offset [K, Ns, S]: distance moved along the direction in r-space;
    response [K, Ns, S]: the re-encoded activation along the direction (r'_u for a unit);
    logit_change [K, Ns, S]: change of the sample's class logit against its base image;
    top1 [K, Ns, S] int64; measures [K, Ns, S, P, M]; motion [K, Ns, P] (first -> last step);
    images [K, Ns, S, 3, H, W] uint8 when kept, else None.
    """

    offset: torch.Tensor
    response: torch.Tensor
    logit_change: torch.Tensor
    top1: torch.Tensor
    measures: torch.Tensor
    motion: torch.Tensor
    images: torch.Tensor | None


def render_with_features(generator: Generator, ws: torch.Tensor) -> tuple[torch.Tensor, list]:
    """Images and feature maps of ws in one synthesis pass where the generator offers one."""
    both = getattr(generator, "synthesis_with_features", None)
    if callable(both):
        images, features = both(ws)
    else:
        images, features = generator.synthesis(ws), generator.features(ws)
    return images.float().clamp(-1, 1), features


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


@torch.no_grad()
def base_logits(generator: Generator, classifier: Classifier, w0: torch.Tensor,
                precision: str = "fp32") -> torch.Tensor:
    """Logits [Ns, C] of each sample's unmodified base image, rendered once for all units."""
    return encode(classifier, synthesize(generator, w0, precision), precision)[1]


@torch.no_grad()
def tune(
    generator: Generator,
    classifier: Classifier,
    segmenter: FewShotSegmenter,
    w0: torch.Tensor,
    labels: torch.Tensor,
    base: torch.Tensor,
    latent_dirs: torch.Tensor,
    readout: torch.Tensor,
    offsets: torch.Tensor,
    batch_size: int = 256,
    precision: str = "fp32",
    keep_images: bool = True,
    progress: Callable[[int], None] | None = None,
) -> TuneResult:
    """Render, re-encode, segment and measure trajectories along K directions.

    w0: [Ns, w_dim] linked latents of the samples; labels: [Ns] their classes; base: [Ns, C]
    logits of their base images; latent_dirs: [K, w_dim] the direction's image in W
    (``A[:, u]`` for unit u); readout: [K, D] how to read the direction from re-encoded r'
    (one-hot for a unit); offsets: [K, Ns, S]. Batches hold whole trajectories, so motion
    between the first and last step is measured without keeping images around.
    """
    device = w0.device
    k_dirs, n_samples, steps = offsets.shape
    pairs = torch.cartesian_prod(torch.arange(k_dirs), torch.arange(n_samples))  # [K*Ns, 2]
    per_batch = max(1, batch_size // steps)
    num_parts = segmenter.num_parts
    outputs: dict[str, list[torch.Tensor]] = {k: [] for k in
                                              ("response", "logit", "top1", "measures", "motion",
                                               "images")}
    latent_dirs, readout = latent_dirs.to(device), readout.to(device)
    offsets_dev = offsets.to(device)
    for start in range(0, len(pairs), per_batch):
        k, s = pairs[start:start + per_batch].to(device).unbind(1)
        off = offsets_dev[k, s]  # [B, S]
        w = w0[s, None, :] + off[..., None] * latent_dirs[k, None, :]  # [B, S, w_dim]
        ws = broadcast_w(w.flatten(0, 1), generator.num_ws)
        with autocast(device, precision):
            images, feats = render_with_features(generator, ws)
            parts = segmenter.predict(feats)
        r2, logits = encode(classifier, images, precision)
        b = len(k)
        outputs["response"].append((r2.view(b, steps, -1) * readout[k, None, :]).sum(-1).cpu())
        cls = labels[s].to(device)
        class_logit = logits.view(b, steps, -1).gather(2, cls.view(b, 1, 1).expand(b, steps, 1))
        outputs["logit"].append((class_logit.squeeze(2) - base[s, cls][:, None]).cpu())
        outputs["top1"].append(logits.argmax(1).view(b, steps).cpu())
        outputs["measures"].append(part_measures(images, parts, num_parts)
                                   .view(b, steps, num_parts, -1).cpu())
        imgs = images.view(b, steps, *images.shape[1:])
        flow = optical_flow(imgs[:, 0], imgs[:, -1])
        first_parts = parts.view(b, steps, *parts.shape[1:])[:, 0]
        outputs["motion"].append(part_motion(flow, first_parts, num_parts).cpu())
        if keep_images:
            outputs["images"].append(to_uint8(imgs).cpu())
        if progress is not None:
            progress(b * steps)

    def gather(name: str) -> torch.Tensor:
        x = torch.cat(outputs[name])
        return x.view(k_dirs, n_samples, *x.shape[1:])

    return TuneResult(
        offset=offsets.cpu(),
        response=gather("response"),
        logit_change=gather("logit"),
        top1=gather("top1"),
        measures=gather("measures"),
        motion=gather("motion"),
        images=gather("images") if keep_images else None,
    )


def select_samples(labels: torch.Tensor, per_class: int, classes: Sequence[int]) -> torch.Tensor:
    """Indices of the first ``per_class`` samples of each class (in stored order)."""
    picks = []
    for c in classes:
        idx = (labels == c).nonzero().squeeze(1)[:per_class]
        if len(idx) < per_class:
            raise ValueError(f"class {c} has only {len(idx)} held-out samples, "
                             f"tuning.samples_per_class asks for {per_class}; lower it or raise "
                             "data.test_samples_per_class")
        picks.append(idx)
    return torch.cat(picks)
