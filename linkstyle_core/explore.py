"""Frames of ``linkstyle explore``: one sample's image as units move under a slider, or along a
counterfactual path, made by the stages' own code one frame at a time.

A sample is its own activations ``r`` [D] and its linked latent ``w0 = link(r)`` [w_dim], as in
stage 3: a held-out sample of the run, or one drawn afresh from the generator and classified
(``fresh_sample``). Moving units ``u_k`` to values ``v_k`` moves the latent as a tuning
trajectory does (DESIGN.md "3. Tune units"): ``w = w0 + sum_k (v_k - r[u_k]) * step_k``, where
``step_k`` is unit ``u_k``'s calibrated latent step per unit of r (its direction in W times its
``step_scale``; ``unit_latent``). A counterfactual path (stage 5) walks ``r(t) = r - t * s``
with ``s`` the shift ``counterfactual.find_counterfactuals`` found, and renders ``link(r(t))``
(``path_latent``). Every frame is rendered, segmented and re-encoded by
``tuning.render_segment_encode``, the function the tuning itself runs (``frame``).
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass

import numpy as np
import torch

from linkstyle_core.link import LinearLink
from linkstyle_core.models.protocols import Classifier, Generator
from linkstyle_core.paired import one_hot, sample_latents
from linkstyle_core.render import encode, synthesize
from linkstyle_core.segment import FewShotSegmenter
from linkstyle_core.tuning import render_segment_encode, to_uint8

DIFF_RANGE = 128.0  # grey levels at the top of the difference map's colour scale


@dataclass
class Frame:
    """One rendered frame: image [3, H, W] uint8, parts [H, W] uint8 (the segmenter's labels),
    r [D] float32 (the image re-encoded by the classifier), probs [C] float32 (its class
    probabilities); seconds: render, segment and re-encode, wall clock; cpu_seconds: the CPU
    time the process spent meanwhile (all its threads; on a busy machine the wall clock grows
    with the load, this does not)."""

    image: np.ndarray
    parts: np.ndarray
    r: np.ndarray
    probs: np.ndarray
    seconds: float
    cpu_seconds: float = 0.0


@torch.no_grad()
def fresh_sample(generator: Generator, classifier: Classifier, link: LinearLink, cls: int,
                 seed: int, truncation: float, precision: str = "fp32",
                 device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """A new sample of class ``cls`` from ``seed``, as stage 1 draws them (``paired``): the
    generator's image classified -> (r [D], w0 = link(r) [w_dim]). Whether the classifier calls
    it ``cls`` is not checked; its frame shows the probabilities."""
    z = sample_latents(generator.z_dim, seed, "test", cls, np.array([0])).to(device)
    c = one_hot(torch.tensor([cls], device=device), generator.c_dim)
    w = generator.mapping(z, c, truncation)[:, 0].float()
    r = encode(classifier, synthesize(generator, w, precision), precision)[0]
    return r[0], link.predict(r)[0]


def unit_latent(w0: torch.Tensor, r: torch.Tensor, units: list[int], values: list[float],
                steps: torch.Tensor) -> torch.Tensor:
    """The latent of a sample (w0 [w_dim], r [D]) with units ``units`` set to ``values``:
    ``w0 + sum_k (values[k] - r[units[k]]) * steps[k]`` (steps [K, w_dim], each unit's latent
    step per unit of r) -> [w_dim]."""
    offsets = torch.tensor(values, dtype=torch.float32, device=w0.device) - r[units]
    return w0 + offsets @ steps.to(w0.device)


def path_latent(link: LinearLink, r: torch.Tensor, shift: torch.Tensor,
                t: float) -> torch.Tensor:
    """The latent at position ``t`` of a counterfactual path: link(r - t * shift) [w_dim]
    (t = 0 the sample, t = 1 the counterfactual found)."""
    return link.predict((r - t * shift)[None])[0]


def frame(generator: Generator, classifier: Classifier, segmenter: FewShotSegmenter,
          w: torch.Tensor, precision: str = "fp32") -> Frame:
    """Render, segment and re-encode one latent w [w_dim] (``tuning.render_segment_encode``)."""
    t0, c0 = time.perf_counter(), time.process_time()
    images, parts, r, logits = render_segment_encode(generator, classifier, segmenter, w[None],
                                                     precision)
    out = Frame(to_uint8(images[0]).cpu().numpy(), parts[0].to(torch.uint8).cpu().numpy(),
                r[0].cpu().numpy(), logits[0].softmax(0).cpu().numpy(), 0.0)
    out.seconds, out.cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    return out


# -- pictures --------------------------------------------------------------------------------
def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def image_png(image: np.ndarray) -> bytes:
    """image [3, H, W] uint8 -> PNG."""
    return _png(np.ascontiguousarray(image.transpose(1, 2, 0)))


def difference_png(image: np.ndarray, base: np.ndarray, top: float = DIFF_RANGE) -> bytes:
    """|image - base| [3, H, W] uint8 pair, mean over RGB, in the magma colours of the tuning
    strips, 0 to ``top`` grey levels -> PNG."""
    from linkstyle_core.figures import magma_table

    diff = np.abs(image.astype(np.float32) - base.astype(np.float32)).mean(0)
    return _png(magma_table()[(diff / top * 255).clip(0, 255).astype(np.uint8)])


def outlines_png(parts: np.ndarray, colours: np.ndarray, scale: int = 1) -> bytes:
    """The part outlines of a label map parts [H, W] as a transparent RGBA PNG ``scale`` times
    the image's size (lines one pixel wide at that size), each line in the colour of the part it
    bounds (colours [P, 3] uint8; of two parts, the higher label, so background never colours
    a line)."""
    labels = parts.astype(np.int64).repeat(scale, 0).repeat(scale, 1)
    edge = np.zeros(labels.shape, np.int64)
    right = labels[:, :-1] != labels[:, 1:]
    edge[:, :-1][right] = np.maximum(labels[:, :-1], labels[:, 1:])[right]
    below = labels[:-1, :] != labels[1:, :]
    edge[:-1, :][below] = np.maximum(edge[:-1, :], np.maximum(labels[:-1, :], labels[1:, :]))[
        below]
    rgba = np.zeros((*labels.shape, 4), np.uint8)
    on = edge > 0
    rgba[on, :3] = colours[edge[on] % len(colours)]
    rgba[on, 3] = 255
    return _png(rgba)
