"""Procedural renderer of the toy world's creatures, version 2 (DESIGN.md, "The bundled toy world").

Every image shows one creature seen from the side, facing right: a body (ellipse), a head
(circle at the body's upper front), two ears (triangles behind the head), four legs (capsules
under the body), a tail (capsule from the body's upper rear) and an eye (dot on the head), on a
plain, vertically graded background. Each image comes with its part label map and the
continuous ground-truth factors that produced it.

The world is built so that every part-specific factor changes the pixels of its own part and
no other (``FACTOR_PARTS``): every part hangs from a fixed anchor of the creature's frame, in
px, instead of from another part's size (the head does not move when the body grows, the ears
do not grow with the head, the legs end on a fixed foot line), every part has its own colour
(no hue is shared between parts) and a part that grows only covers or uncovers the parts
behind it, so the pixels it changes carry its own label in one of the two renders. Global
scale, pose, position and brightness are nuisances that belong to no part.

Rendering is one batched tensor program over ``N`` images: every part is a signed-distance
field evaluated on the pixel grid of all images at once and turned into coverage with a
1-pixel linear ramp (anti-aliasing), then composited in painter's order.

The parts, species and factors, and how factors follow from latents, are in ``factors``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from linkstyle_core.toyworld.factors import (
    FACTORS,
    PARTS,
    sample_factors,
)

RESOLUTION = 64
"""Side length of rendered images in pixels."""


class RenderOutput(NamedTuple):
    """What ``render`` returns.

    images: [N, 3, 64, 64] float32 in [-1, 1]; labels: [N, 64, 64] int64 indices into ``PARTS``;
    factors: [N, F] float32, the factors the images were rendered from (``F = len(FACTORS)``).
    """

    images: torch.Tensor
    labels: torch.Tensor
    factors: torch.Tensor


def _hsv_to_rgb(h: torch.Tensor, s: torch.Tensor | float, v: torch.Tensor | float) -> torch.Tensor:
    """h, s, v: broadcastable tensors in [0, 1] -> rgb [..., 3] in [0, 1]."""
    ht, st, vt = torch.broadcast_tensors(
        h,
        torch.as_tensor(s, dtype=h.dtype, device=h.device),
        torch.as_tensor(v, dtype=h.dtype, device=h.device),
    )
    # Smooth closed form (no branches): channel k = v - v s clamp(min(m, 4 - m), 0, 1),
    # with m = (n + 6 h) mod 6 for n = 5, 3, 1.
    n = torch.tensor([5.0, 3.0, 1.0], dtype=h.dtype, device=h.device)
    m = torch.remainder(n + 6.0 * ht.unsqueeze(-1), 6.0)
    k = torch.clamp(torch.minimum(m, 4.0 - m), 0.0, 1.0)
    return vt.unsqueeze(-1) - (vt * st).unsqueeze(-1) * k


# Saturation and value of each part's colour; hue comes from the part's own hue factor (legs
# have a fixed colour). The (S, V) pairs are spread apart so that parts stay distinguishable by
# colour for any hue in the factors' ranges, which ``part_palette`` and ``infer_labels`` rely on.
_PART_SV = {
    "body": (0.55, 0.85),
    "head": (0.30, 1.00),
    "ear": (0.85, 0.55),
    "tail": (0.90, 0.75),
    "eye": (0.90, 0.40),
}
_PART_HUE_FACTOR = {
    "body": "body_hue",
    "head": "head_hue",
    "ear": "ear_hue",
    "tail": "tail_hue",
    "eye": "eye_hue",
}
_LEG_HSV = (0.08, 0.35, 0.32)
_BACKGROUND_HSV = (0.58, 0.16, 0.70)
_BACKGROUND_GRADIENT = 0.12  # value difference between the top and bottom rows


def part_palette(factors: torch.Tensor, resolution: int = RESOLUTION) -> torch.Tensor:
    """The colour of every part of every image, as rendered, in [-1, 1].

    factors: [N, F] -> palette [N, len(PARTS), 3, resolution] (the last axis is the image row:
    the background is graded vertically, the creature's parts are flat and repeat the same
    colour on every row). Used to infer a label map from any image by nearest colour.
    """
    n = factors.shape[0]
    device = factors.device
    f = {name: factors[:, i] for i, name in enumerate(FACTORS)}
    cols = []
    for part in PARTS:
        if part == "background":
            rows = (torch.arange(resolution, device=device) + 0.5) / resolution - 0.5
            value = _BACKGROUND_HSV[2] - _BACKGROUND_GRADIENT * rows  # lighter at the top
            rgb = _hsv_to_rgb(
                torch.full((n, resolution), _BACKGROUND_HSV[0], device=device),
                _BACKGROUND_HSV[1],
                value.expand(n, -1),
            )  # [N, R, 3]
            cols.append(rgb.permute(0, 2, 1))
            continue
        if part == "leg":
            rgb = _hsv_to_rgb(
                torch.full((n,), _LEG_HSV[0], device=device), _LEG_HSV[1], _LEG_HSV[2]
            )
        else:
            sat, val = _PART_SV[part]
            rgb = _hsv_to_rgb(torch.remainder(f[_PART_HUE_FACTOR[part]], 1.0), sat, val)  # [N, 3]
        cols.append(rgb.unsqueeze(-1).expand(n, 3, resolution))
    palette = torch.stack(cols, dim=1) * f["brightness"].view(n, 1, 1, 1)
    return palette.clamp(0.0, 1.0) * 2.0 - 1.0


# ---- signed distance fields, in the creature's local frame (units: px at scale 1) ----------


def _sdf_circle(
    u: torch.Tensor, v: torch.Tensor, cu: torch.Tensor, cv: torch.Tensor, r: torch.Tensor
) -> torch.Tensor:
    return torch.sqrt((u - cu).square() + (v - cv).square()) - r


def _sdf_ellipse(
    u: torch.Tensor, v: torch.Tensor, a: torch.Tensor, b: torch.Tensor
) -> torch.Tensor:
    # Inigo Quilez's first-order approximation k0 (k0 - 1) / k1: exact on the boundary and
    # accurate within a pixel of it, which is all the anti-aliasing ramp needs.
    k0 = torch.sqrt((u / a).square() + (v / b).square())
    k1 = torch.sqrt((u / a.square()).square() + (v / b.square()).square())
    return k0 * (k0 - 1.0) / (k1 + 1e-6)


def _sdf_capsule(
    u: torch.Tensor,
    v: torch.Tensor,
    au: torch.Tensor,
    av: torch.Tensor,
    bu: torch.Tensor,
    bv: torch.Tensor,
    r: torch.Tensor | float,
) -> torch.Tensor:
    pu, pv = u - au, v - av
    du, dv = bu - au, bv - av
    h = ((pu * du + pv * dv) / (du.square() + dv.square() + 1e-6)).clamp(0.0, 1.0)
    return torch.sqrt((pu - h * du).square() + (pv - h * dv).square()) - r


def _sdf_triangle(
    u: torch.Tensor,
    v: torch.Tensor,
    bu: torch.Tensor,
    bv: torch.Tensor,
    dir_u: torch.Tensor,
    dir_v: torch.Tensor,
    length: torch.Tensor,
    half_width: torch.Tensor,
) -> torch.Tensor:
    """Isosceles triangle with base centre (bu, bv), unit axis (dir_u, dir_v) towards the tip."""
    pu, pv = u - bu, v - bv
    along = pu * dir_u + pv * dir_v
    across = (pv * dir_u - pu * dir_v).abs()
    slope = half_width / length
    # Intersection of three half-planes; exact inside, a slight underestimate near the corners
    # outside, which only widens the 1-px ramp there.
    side = (across + slope * along - half_width) / torch.sqrt(1.0 + slope.square())
    return torch.maximum(-along, side)


def _bcast(x: torch.Tensor) -> torch.Tensor:
    """[N] -> [N, 1, 1] so per-image parameters broadcast over the pixel grid."""
    return x.view(-1, 1, 1)


# Fixed anchors of the creature's frame (px at scale 1, origin at the body centre, u forwards,
# v down). No part's position depends on another part's factors.
_CENTRE = (34.0, 31.0)  # image position of the body centre at pos = 0 (x, y)
_HEAD_CENTRE = (11.0, -6.5)
_EAR_BASE_RADIUS = 2.5  # ear bases sit this far from the head centre, inside the smallest head
_EAR_ANGLES = (-2.05, -1.2)  # ear directions from the head centre, radians (v points down)
_EYE_OFFSET = (2.4, -1.2)  # eye centre relative to the head centre
_LEG_U = (-7.0, -4.0, 4.0, 7.0)  # leg positions along the body
_LEG_TOP = 0.0  # legs start at the body's axis (hidden by the body)
_FOOT_BASE = 7.5  # the foot line is at v = _FOOT_BASE + leg_length
_TAIL_ANCHOR = (-7.0, -2.5)
_TAIL_RADIUS = 1.7


def render(factors: torch.Tensor, resolution: int = RESOLUTION) -> RenderOutput:
    """Render creatures from their factors.

    factors: [N, F] float32 (columns as in ``FACTORS``, e.g. from ``sample_factors``).
    Returns ``RenderOutput(images [N, 3, R, R] in [-1, 1], labels [N, R, R] int64, factors)``
    on the device of ``factors``. Deterministic: the same factors give the same pixels.
    """
    if factors.ndim != 2 or factors.shape[1] != len(FACTORS):
        raise ValueError(f"factors must be [N, {len(FACTORS)}], got {tuple(factors.shape)}")
    factors = factors.float()
    n, device = factors.shape[0], factors.device
    f = {name: _bcast(factors[:, i]) for i, name in enumerate(FACTORS)}
    scale = f["scale"] * (resolution / RESOLUTION)

    # Pixel centres -> creature frame: translate to the body centre, rotate by the pose,
    # divide by the scale. Distances then come back in px by multiplying with the scale.
    coords = (torch.arange(resolution, device=device, dtype=torch.float32) + 0.5) * (
        RESOLUTION / resolution
    )
    ys, xs = coords.view(1, -1, 1), coords.view(1, 1, -1)
    dx = xs - (_CENTRE[0] + f["pos_x"])
    dy = ys - (_CENTRE[1] + f["pos_y"])
    cos_p, sin_p = torch.cos(f["pose"]), torch.sin(f["pose"])
    # Positive pose lifts the nose: rotate the creature counter-clockwise on screen.
    u = (cos_p * dx - sin_p * dy) / f["scale"]
    v = (sin_p * dx + cos_p * dy) / f["scale"]
    zero = torch.zeros_like(f["scale"])

    sdfs: list[tuple[str, torch.Tensor]] = []  # painter's order, back to front

    # Tail: from a fixed anchor at the body's upper rear, backwards and up by tail_angle.
    t0u, t0v = zero + _TAIL_ANCHOR[0], zero + _TAIL_ANCHOR[1]
    t1u = t0u - f["tail_length"] * torch.cos(f["tail_angle"])
    t1v = t0v - f["tail_length"] * torch.sin(f["tail_angle"])
    sdfs.append(("tail", _sdf_capsule(u, v, t0u, t0v, t1u, t1v, _TAIL_RADIUS)))

    # Legs: vertical capsules from the body's axis down to a fixed foot line.
    foot = _FOOT_BASE + f["leg_length"]
    leg_sdf = None
    for lu in _LEG_U:
        d = _sdf_capsule(u, v, zero + lu, zero + _LEG_TOP, zero + lu, foot, f["leg_width"])
        leg_sdf = d if leg_sdf is None else torch.minimum(leg_sdf, d)
    assert leg_sdf is not None
    sdfs.append(("leg", leg_sdf))

    sdfs.append(("body", _sdf_ellipse(u, v, f["body_length"], f["body_height"])))

    # Ears: triangles from bases inside the head (drawn before it, so the head hides them) to
    # tips at ear_length from the head centre; neither depends on the head's size.
    hu, hv = zero + _HEAD_CENTRE[0], zero + _HEAD_CENTRE[1]
    ear_sdf = None
    for ang in _EAR_ANGLES:
        du, dv = torch.cos(zero + ang), torch.sin(zero + ang)
        bu, bv = hu + _EAR_BASE_RADIUS * du, hv + _EAR_BASE_RADIUS * dv
        d = _sdf_triangle(u, v, bu, bv, du, dv, f["ear_length"] - _EAR_BASE_RADIUS, f["ear_width"])
        ear_sdf = d if ear_sdf is None else torch.minimum(ear_sdf, d)
    assert ear_sdf is not None
    sdfs.append(("ear", ear_sdf))

    sdfs.append(("head", _sdf_circle(u, v, hu, hv, f["head_size"])))
    eu, ev = hu + _EYE_OFFSET[0], hv + _EYE_OFFSET[1]
    sdfs.append(("eye", _sdf_circle(u, v, eu, ev, f["eye_size"])))

    palette = part_palette(factors, resolution)  # [N, P, 3, R] in [-1, 1]
    image = palette[:, 0].unsqueeze(-1).expand(n, 3, resolution, resolution)  # background
    labels = torch.zeros(n, resolution, resolution, dtype=torch.int64, device=device)
    for part, sdf in sdfs:
        k = PARTS.index(part)
        # Coverage: linear ramp over one output pixel centred on the boundary
        # (sdf * scale is the signed distance in output pixels).
        alpha = (0.5 - sdf * scale).clamp(0.0, 1.0)
        color = palette[:, k, :, 0].view(n, 3, 1, 1)
        image = torch.lerp(image, color.expand_as(image), alpha.unsqueeze(1))
        labels = torch.where(alpha >= 0.5, k, labels)
    return RenderOutput(images=image.contiguous(), labels=labels, factors=factors)


def render_species(
    species: torch.Tensor, generator: torch.Generator, resolution: int = RESOLUTION
) -> RenderOutput:
    """species: [N] int64 -> ``render(sample_factors(species, generator))``."""
    return render(sample_factors(species, generator), resolution)


def infer_labels(
    images: torch.Tensor, factors: torch.Tensor, blend_penalty: float = 0.005
) -> torch.Tensor:
    """Label map of any image of known factors, from its colours.

    images: [N, 3, R, R] in [-1, 1] (renderer or generator output); factors: [N, F], the
    factors the image is meant to show. Returns labels [N, R, R] int64.

    Every pixel is explained either as one part's colour or as a blend of two parts' colours
    (what the renderer's anti-aliasing produces at an edge, and what a blurry edge of the
    generator looks like); it gets the label of the part with the larger share, which is the
    renderer's own rule (coverage >= 0.5). Pure colours win ties (``blend_penalty``, in squared
    [-1, 1] units), so a blend is only chosen where it explains the pixel clearly better. On
    renderer images this recovers the true labels on about 99.9% of pixels.
    """
    res = images.shape[-1]
    palette = part_palette(factors.to(images.device), res).unsqueeze(-1)  # [N, P, 3, R(rows), 1]
    x = images.float()  # [N, 3, R, R]
    n_parts = palette.shape[1]
    dist = (x.unsqueeze(1) - palette).square().sum(dim=2)  # [N, P, R, R]
    best_d, best_label = dist.min(dim=1)
    for i in range(n_parts):
        for j in range(i + 1, n_parts):
            ci, seg = palette[:, i], palette[:, j] - palette[:, i]  # [N, 3, R, 1]
            t = ((x - ci) * seg).sum(dim=1) / (seg.square().sum(dim=1) + 1e-8)  # [N, R, R]
            t = t.clamp(0.0, 1.0)  # share of part j in the blend
            d = (x - ci - seg * t.unsqueeze(1)).square().sum(dim=1) + blend_penalty
            better = d < best_d
            best_d = torch.where(better, d, best_d)
            best_label = torch.where(better, torch.where(t >= 0.5, j, i), best_label)
    return best_label
