"""Stage 3, unit tuning, scored as it renders (DESIGN.md "3. Tune units" and "4. Score").

For held-out samples, one unit u of r is set to values spanning its observed range; the link
maps each modified r to a latent and the generator renders it. Because the link is linear,
``w(step) = w0 + (v_step - r_u) * A[:, u]`` with ``w0 = A r + b``: whole trajectories are one
batched tensor expression. Random directions in r-space go through the same code (the null
control). Every rendered image is re-encoded by the classifier, segmented into parts and
measured while it is still on the device.

A trajectory's direction in W and its step length are separate choices (DESIGN.md "Tuning that
moves the unit"). ``latent_directions`` gives the direction: the link's own column (the paper),
a ridge column with its own alpha, or the cross-covariance of w and r. The step is either the
paper's (``offset * d``, offset = v - r_u over the unit's range) or *calibrated*:
``offset * d / g`` where ``g`` is the closed-loop gain of d, how far the re-encoded unit moves
per unit of latent step along d, predicted by a linear reverse map w -> r (``reverse_map``,
``analytic_gains``) and optionally corrected by rendering a few probe samples
(``measured_gains``). With g, the re-encoded unit follows the value it was set to.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from linkstyle_core import stop
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


def latent_directions(mode: str, link_coef: torch.Tensor, r: torch.Tensor, w: torch.Tensor,
                      alpha: float, labels: torch.Tensor | None = None) -> torch.Tensor:
    """Each unit's direction in W: [w_dim, D] float32 (column u is unit u's direction).

    mode 'link': the fitted link's ``A`` itself (the paper); 'ridge': the columns of a ridge
    fit of w on r with its own ``alpha`` (training pairs r [N, D], w [N, w_dim]); 'crosscov':
    the cross-covariance cov(w, r) [w_dim, D], the limit of ridge for large alpha up to scale.
    Plain least-squares columns are dominated by the collinearity of the units (docs/tuning.md).
    With ``labels`` [N], r and w are centred on their class means instead of the overall mean,
    so a direction follows what the unit tracks within a class and not the other factors its
    class differs in.
    """
    if mode == "link":
        return link_coef.float()
    rc, wc = centre(r.double(), labels), centre(w.double(), labels)
    cross = wc.T @ rc  # [w_dim, D]
    if mode == "crosscov":
        return (cross / max(len(r) - 1, 1)).float()
    if mode == "ridge":
        gram = rc.T @ rc
        gram.diagonal().add_(alpha)
        return torch.linalg.solve(gram, cross.T).T.float()
    raise ValueError(f"tuning.direction must be 'link', 'ridge' or 'crosscov', got {mode!r}")


def centre(x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """x [N, C] minus its mean, or minus its class's mean where ``labels`` [N] are given."""
    if labels is None:
        return x - x.mean(0)
    out = x.clone()
    for c in torch.unique(labels):
        out[labels == c] -= out[labels == c].mean(0)
    return out


def reverse_map(r: torch.Tensor, w: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """Ridge map from W back to r, fitted on training pairs: C [D, w_dim] with
    r - mean(r) ~ C (w - mean(w)). It predicts how a latent step moves the re-encoded units."""
    rc, wc = centre(r.double()), centre(w.double())
    gram = wc.T @ wc
    gram.diagonal().add_(alpha)
    return torch.linalg.solve(gram, wc.T @ rc).T.float()


def analytic_gains(reverse: torch.Tensor, latent_dirs: torch.Tensor,
                   readout: torch.Tensor) -> torch.Tensor:
    """Predicted closed-loop gain of each direction: g_k = readout_k . (C d_k).

    reverse: C [D, w_dim]; latent_dirs: [K, w_dim]; readout: [K, D] -> [K]. A latent step of
    length t along d_k moves the re-encoded value read out by readout_k by about g_k * t.
    """
    return ((latent_dirs.float() @ reverse.T.float()) * readout.float()).sum(1)


@torch.no_grad()
def measured_gains(generator: Generator, classifier: Classifier, w0: torch.Tensor,
                   latent_steps: torch.Tensor, readout: torch.Tensor, offsets: torch.Tensor,
                   batch_size: int = 256, precision: str = "fp32",
                   progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """Closed-loop gain of each direction measured by rendering: [K].

    Each probe sample (w0 [Np, w_dim]) is rendered at both ends of its trajectory,
    ``w0 + offsets[k, s, j] * latent_steps[k]`` for j = first, last (offsets [K, Np, 2]), and
    re-encoded. The gain is the mean change of the read-out value (readout [K, D]) over the
    mean change of the offset: 1 when the re-encoded value follows the value set. Measuring at
    the trajectory's own ends matters for ReLU units, whose response is one-sided.
    ``progress(n)``, if given, is called with the images rendered by each batch.
    """
    device = w0.device
    k_dirs, n_probe = offsets.shape[:2]
    steps, read = latent_steps.to(device), readout.to(device)
    off = offsets.to(device).float()
    pairs = torch.cartesian_prod(torch.arange(k_dirs), torch.arange(n_probe)).to(device)
    per_batch = max(1, batch_size // 2)
    change = torch.zeros(k_dirs, device=device)
    for start in range(0, len(pairs), per_batch):
        stop.check()
        k, s = pairs[start:start + per_batch].unbind(1)
        w = w0[s, None, :] + off[k, s, :, None] * steps[k, None, :]  # [B, 2, w_dim]
        r2 = encode(classifier, synthesize(generator, w.flatten(0, 1), precision), precision)[0]
        r2 = r2.view(len(k), 2, -1)
        change.index_add_(0, k, ((r2[:, 1] - r2[:, 0]) * read[k]).sum(1))
        if progress is not None:
            progress(2 * len(k))
    moved = (off[..., 1] - off[..., 0]).sum(1)
    return (change / moved.where(moved.abs() > 1e-12, torch.nan)).cpu()


def calibrated_scale(gains: torch.Tensor, latent_dirs: torch.Tensor, spans: torch.Tensor,
                     max_latent_step: float, min_gain: float = 1e-6) -> torch.Tensor:
    """Per-direction factor turning an r-space offset into a latent step: [K].

    1 / gain, so that the re-encoded value moves by the offset set (closed-loop gain 1).
    Directions whose gain is not positive cannot be calibrated, and very weak ones would need
    a step far outside the generator's latent distribution: both are capped so that the whole
    span (``spans`` [K], in r units) moves the latent by at most ``max_latent_step`` (W units).
    """
    norms = latent_dirs.float().norm(dim=1)
    scale = 1.0 / gains.float().clamp_min(min_gain)
    cap = max_latent_step / (spans.float().abs() * norms).clamp_min(1e-12)
    return torch.minimum(scale, cap)


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
    pixel_change [K, Ns]: mean |last - first| image difference in [0, 1] units;
    label_change [K, Ns]: share of pixels whose part label differs between first and last step;
    reencoded_change [K, D]: mean over samples of r'(last) - r'(first), every unit;
    images [K, Ns, S, 3, H, W] uint8 and parts [K, Ns, S, H, W] uint8 when kept, else None.
    """

    offset: torch.Tensor
    response: torch.Tensor
    logit_change: torch.Tensor
    top1: torch.Tensor
    measures: torch.Tensor
    motion: torch.Tensor
    pixel_change: torch.Tensor
    label_change: torch.Tensor
    reencoded_change: torch.Tensor
    images: torch.Tensor | None
    parts: torch.Tensor | None


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
def generator_features(generator: Generator, ws: torch.Tensor,
                       batch_size: int = 64) -> list[torch.Tensor]:
    """ws [N, num_ws, w_dim] -> the generator's feature maps (list of [N, C_i, H_i, W_i]), the
    segmenter's input, rendered batch by batch."""
    chunks = [render_with_features(generator, ws[i:i + batch_size])[1]
              for i in range(0, len(ws), batch_size)]
    return [torch.cat(level) for level in zip(*chunks, strict=True)]


@torch.no_grad()
def render_segment_encode(generator: Generator, classifier: Classifier,
                          segmenter: FewShotSegmenter, w: torch.Tensor, precision: str = "fp32"
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """What every tuned image goes through, here and in ``linkstyle explore``: w [N, w_dim] ->
    (images [N, 3, H, W] float32 in [-1, 1], parts [N, H, W] int64 from the segmenter on the
    generator's own feature maps, re-encoded r [N, D] float32, logits [N, C] float32)."""
    ws = broadcast_w(w, generator.num_ws)
    with autocast(w.device, precision):
        images, features = render_with_features(generator, ws)
        parts = segmenter.predict(features)
    r, logits = encode(classifier, images, precision)
    return images, parts, r, logits


def base_images(generator: Generator, classifier: Classifier, segmenter: FewShotSegmenter,
                w0: torch.Tensor, batch_size: int = 256,
                precision: str = "fp32") -> tuple[torch.Tensor, torch.Tensor]:
    """Each sample's unmodified base image, rendered once for all units: (logits [Ns, C] on
    w0's device, area share of every part [Ns, P] float32 on the CPU).

    Small parts are left out of the scores by their base area, which no tuning direction
    affects: masking by the tuned images' own areas would keep only the samples in which a
    part happened to grow, and bias its mean change.
    """
    logits, areas = [], []
    for start in range(0, len(w0), batch_size):
        stop.check()
        _, labels, _, batch_logits = render_segment_encode(
            generator, classifier, segmenter, w0[start:start + batch_size], precision)
        logits.append(batch_logits)
        onehot = torch.nn.functional.one_hot(labels, segmenter.num_parts).float()
        areas.append(onehot.mean((1, 2)).cpu())
    return torch.cat(logits), torch.cat(areas)


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
    on_images: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], None]
    | None = None,
) -> TuneResult:
    """Render, re-encode, segment and measure trajectories along K directions.

    w0: [Ns, w_dim] linked latents of the samples; labels: [Ns] their classes; base: [Ns, C]
    logits of their base images; latent_dirs: [K, w_dim] the latent step per unit of offset
    (``A[:, u]`` for unit u in the paper's procedure, ``d_u / g_u`` when calibrated);
    readout: [K, D] how to read the direction from re-encoded r' (one-hot for a unit);
    offsets: [K, Ns, S]. Batches hold whole trajectories, so changes between the first and
    last step are measured without keeping images around. ``on_images(k, s, images, parts)``,
    if given, receives every batch's directions [B], samples [B], images [B, S, 3, H, W] uint8
    and part maps [B, S, H, W] uint8 on the CPU (to stream them to storage) instead of
    keeping them.
    """
    device = w0.device
    k_dirs, n_samples, steps = offsets.shape
    pairs = torch.cartesian_prod(torch.arange(k_dirs), torch.arange(n_samples))  # [K*Ns, 2]
    per_batch = max(1, batch_size // steps)
    num_parts = segmenter.num_parts
    outputs: dict[str, list[torch.Tensor]] = {
        k: [] for k in ("response", "logit", "top1", "measures", "motion", "pixel",
                        "label", "reencoded", "images", "parts")}
    latent_dirs, readout = latent_dirs.to(device), readout.to(device)
    offsets_dev = offsets.to(device)

    def keep(name: str, x: torch.Tensor) -> None:
        # on a GPU the copy to the host is asynchronous: the loop never waits for the device,
        # so the next batch is queued while this one is still being measured
        outputs[name].append(x.to("cpu", non_blocking=True) if x.is_cuda else x)

    streamed: list[Any] = []  # a batch's images on their way to the host, and its event

    def hand_over() -> None:
        # the previous batch's images go to on_images once their copy has landed, one batch
        # late: on a GPU the device then already works on the next batch
        if streamed:
            *batch, landed = streamed.pop()
            if landed is not None:
                landed.synchronize()
            assert on_images is not None
            on_images(*batch)

    for start in range(0, len(pairs), per_batch):
        stop.check()
        k, s = pairs[start:start + per_batch].to(device).unbind(1)
        off = offsets_dev[k, s]  # [B, S]
        w = w0[s, None, :] + off[..., None] * latent_dirs[k, None, :]  # [B, S, w_dim]
        images, parts, r2, logits = render_segment_encode(generator, classifier, segmenter,
                                                          w.flatten(0, 1), precision)
        b = len(k)
        r2 = r2.view(b, steps, -1)
        keep("response", (r2 * readout[k, None, :]).sum(-1))
        keep("reencoded", r2[:, -1] - r2[:, 0])
        cls = labels[s].to(device)
        class_logit = logits.view(b, steps, -1).gather(2, cls.view(b, 1, 1).expand(b, steps, 1))
        keep("logit", class_logit.squeeze(2) - base[s, cls][:, None])
        keep("top1", logits.argmax(1).view(b, steps))
        keep("measures", part_measures(images, parts, num_parts).view(b, steps, num_parts, -1))
        imgs = images.view(b, steps, *images.shape[1:])
        traj_parts = parts.view(b, steps, *parts.shape[1:])
        flow = optical_flow(imgs[:, 0], imgs[:, -1])
        keep("motion", part_motion(flow, traj_parts[:, 0], num_parts))
        keep("pixel", (imgs[:, -1] - imgs[:, 0]).abs().mean((1, 2, 3)) / 2)
        keep("label", (traj_parts[:, -1] != traj_parts[:, 0]).float().mean((1, 2)))
        if on_images is not None:
            hand_over()
            host = [x.to("cpu", non_blocking=True) for x in
                    (k, s, to_uint8(imgs), traj_parts.to(torch.uint8))]
            landed = torch.cuda.Event() if device.type == "cuda" else None
            if landed is not None:
                landed.record()
            streamed.append((*host, landed))
        elif keep_images:
            keep("images", to_uint8(imgs))
            keep("parts", traj_parts.to(torch.uint8))
        if progress is not None:
            progress(b * steps)

    if device.type == "cuda":
        torch.cuda.synchronize(device)  # every asynchronous copy has landed
    hand_over()

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
        pixel_change=gather("pixel"),
        label_change=gather("label"),
        reencoded_change=gather("reencoded").mean(1),
        images=gather("images") if outputs["images"] else None,
        parts=gather("parts") if outputs["parts"] else None,
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
