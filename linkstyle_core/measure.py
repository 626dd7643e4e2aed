"""Per-part measurements of rendered images (DESIGN.md "4. Score").

Everything is a batched tensor reduction over label maps, on the images' device: no per-image
or per-part Python loop. A part absent from an image gets NaN measurements.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MEASURES = ("area", "luminance", "red_green", "yellow_blue", "entropy", "cx", "cy", "width",
            "height", "eccentricity", "angle")
"""Columns of ``part_measures``: area fraction; mean luminance in [0, 1]; mean colour in two
opponent channels, red - green and (red + green) / 2 - blue, each in [-1, 1] (a hue change at
constant luminance shows only here); Shannon entropy (bits) of the part's luminance histogram;
ellipse from second-order moments: centre x/y in pixels relative to the centroid of the whole
foreground (every label but 0, the background; the image centre if there is none), so that
moving the whole creature does not count as every part moving; full axis lengths in pixels,
eccentricity in [0, 1), orientation of the major axis in degrees (-90, 90], counter-clockwise
from the +x axis with y pointing down the image."""

_LUMA = (0.299, 0.587, 0.114)


def _rgb01(images: torch.Tensor) -> torch.Tensor:
    """images: [N, 3, H, W] in [-1, 1] -> the same in [0, 1], float32."""
    return (images.float().clamp(-1, 1) + 1) / 2


def luminance(images: torch.Tensor) -> torch.Tensor:
    """images: [N, 3, H, W] in [-1, 1] -> [N, H, W] luminance in [0, 1] (ITU-R BT.601)."""
    return torch.einsum("nchw,c->nhw", _rgb01(images), torch.tensor(_LUMA, device=images.device))


def part_measures(
    images: torch.Tensor, labels: torch.Tensor, num_parts: int, bins: int = 16,
    min_pixels: int = 3,
) -> torch.Tensor:
    """Measure every part of every image.

    images: [N, 3, H, W] in [-1, 1]; labels: [N, H, W] int64 part ids in [0, num_parts).
    Returns [N, num_parts, len(MEASURES)] float32; NaN where a part covers fewer than
    ``min_pixels`` pixels (area is then still reported).
    """
    n, h, w = labels.shape
    device = labels.device
    onehot = F.one_hot(labels.long(), num_parts).permute(0, 3, 1, 2).float()  # [N, P, H, W]
    count = onehot.sum((2, 3))  # [N, P]
    safe = count.clamp_min(1.0)
    rgb = _rgb01(images)
    luma = torch.tensor(_LUMA, device=device)
    lum = torch.einsum("nchw,c->nhw", rgb, luma)

    area = count / (h * w)
    mean_rgb = torch.einsum("nphw,nchw->npc", onehot, rgb) / safe.unsqueeze(-1)  # [N, P, 3]
    mean_lum = mean_rgb @ luma  # luminance is linear in RGB
    red_green = mean_rgb[..., 0] - mean_rgb[..., 1]
    yellow_blue = (mean_rgb[..., 0] + mean_rgb[..., 1]) / 2 - mean_rgb[..., 2]

    # luminance histogram per part via one scatter: index = part * bins + bin
    bin_idx = (lum * bins).long().clamp_(0, bins - 1)
    flat = (labels.long() * bins + bin_idx).view(n, -1)
    hist = torch.zeros(n, num_parts * bins, device=device)
    hist.scatter_add_(1, flat, torch.ones_like(flat, dtype=hist.dtype))
    prob = hist.view(n, num_parts, bins) / safe.unsqueeze(-1)
    entropy = -(prob * torch.log2(prob.clamp_min(1e-12))).sum(-1)

    # centroids and second moments from the parts' row and column profiles: one pass over
    # the masks instead of five; the moments in float64 keep the centring exact enough
    ys = torch.arange(h, device=device, dtype=torch.float64)
    xs = torch.arange(w, device=device, dtype=torch.float64)
    cols = onehot.sum(2).double()  # [N, P, W]
    rows = onehot.sum(3).double()  # [N, P, H]
    safe64 = safe.double()
    cx64, cy64 = cols @ xs / safe64, rows @ ys / safe64
    mu20 = (cols @ xs.square() / safe64 - cx64.square()).clamp_min(0).float()
    mu02 = (rows @ ys.square() / safe64 - cy64.square()).clamp_min(0).float()
    mu11 = (onehot @ xs.float()).double() @ ys / safe64 - cx64 * cy64
    # what is left of an exactly symmetric part's mu11 after the centring is rounding noise,
    # whose sign would flip its angle between -90 and 90 degrees
    mu11 = mu11.where(mu11.abs() > 1e-9 * (mu20 + mu02 + 1), 0.0).float()
    cx, cy = cx64.float(), cy64.float()
    # eigenvalues of the covariance [[mu20, mu11], [mu11, mu02]]
    half_trace = (mu20 + mu02) / 2
    root = torch.sqrt(((mu20 - mu02) / 2) ** 2 + mu11**2)
    lam1 = half_trace + root
    lam2 = (half_trace - root).clamp_min(0.0)
    # a uniformly filled ellipse with semi-axis a has variance a^2/4 along that axis
    width = 4 * torch.sqrt(lam1)
    height = 4 * torch.sqrt(lam2)
    ecc = torch.sqrt((1 - lam2 / lam1.clamp_min(1e-12)).clamp(0, 1))
    # image y points down: negate mu11 so that angles are counter-clockwise as seen
    angle = torch.rad2deg(0.5 * torch.atan2(-2 * mu11, mu20 - mu02))
    angle = torch.where(angle <= -90 + 1e-6, angle + 180, angle)

    # the creature's centroid: the parts' centroids (label 0, the background, left out)
    # weighted by their pixel counts; the image centre where there is no foreground
    fg_count = count[:, 1:].sum(1)
    has_fg = fg_count > 0
    fg_x = torch.where(has_fg, (count[:, 1:] * cx[:, 1:]).sum(1) / fg_count.clamp_min(1),
                       (w - 1) / 2)
    fg_y = torch.where(has_fg, (count[:, 1:] * cy[:, 1:]).sum(1) / fg_count.clamp_min(1),
                       (h - 1) / 2)
    out = torch.stack([area, mean_lum, red_green, yellow_blue, entropy, cx - fg_x[:, None],
                       cy - fg_y[:, None], width, height, ecc, angle], dim=-1)
    absent = (count < min_pixels).unsqueeze(-1) & torch.ones_like(out, dtype=torch.bool)
    absent[..., 0] = False  # the area of an absent part is a valid 0
    return out.masked_fill(absent, math.nan)


def _gradients(img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    kx = torch.tensor([[-0.5, 0.0, 0.5]], device=img.device).view(1, 1, 1, 3)
    ky = kx.view(1, 1, 3, 1)
    ix = F.conv2d(F.pad(img, (1, 1, 0, 0), mode="replicate"), kx)
    iy = F.conv2d(F.pad(img, (0, 0, 1, 1), mode="replicate"), ky)
    return ix, iy


def _warp(img: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    n, _, h, w = img.shape
    ys, xs = torch.meshgrid(torch.arange(h, device=img.device), torch.arange(w, device=img.device),
                            indexing="ij")
    gx = (xs.float() + flow[:, 0]) / max(w - 1, 1) * 2 - 1
    gy = (ys.float() + flow[:, 1]) / max(h - 1, 1) * 2 - 1
    grid = torch.stack([gx, gy], dim=-1)
    return F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=True)


def optical_flow(
    first: torch.Tensor, second: torch.Tensor, levels: int = 4, iterations: int = 20,
    smoothness: float = 0.02, prior: float = 0.0005,
) -> torch.Tensor:
    """Dense optical flow from ``first`` to ``second`` (coarse-to-fine Horn-Schunck with warping).

    first, second: [N, 3, H, W] in [-1, 1] (or [N, H, W] luminance). Returns flow [N, 2, H, W]
    in pixels (x, y): the content at (x, y) in ``first`` is at (x + u, y + v) in ``second``.
    Batched over N; the pyramid lets it follow displacements of several pixels.

    Energy per level: (Ix (u - u0) + Iy (v - v0) + It)^2 + smoothness |grad flow|^2 +
    prior |flow|^2. In textureless regions the data term says nothing; plain Horn-Schunck then
    spreads the motion of nearby edges into them (a flat background would "move" with the
    creature in front of it). The small ``prior`` lets such regions relax to zero instead.
    """
    a = luminance(first) if first.ndim == 4 else first
    b = luminance(second) if second.ndim == 4 else second
    a, b = a.unsqueeze(1), b.unsqueeze(1)
    pyramid = [(a, b)]
    for _ in range(levels - 1):
        if min(pyramid[-1][0].shape[-2:]) < 16:
            break
        pa, pb = pyramid[-1]
        pyramid.append((F.avg_pool2d(pa, 2), F.avg_pool2d(pb, 2)))
    # u and v are smoothed together: one padding and one grouped convolution per iteration
    avg_kernel = torch.tensor([[1, 2, 1], [2, 0, 2], [1, 2, 1]], dtype=torch.float32,
                              device=a.device).view(1, 1, 3, 3).expand(2, 1, 3, 3) / 12
    flow = torch.zeros(a.shape[0], 2, *pyramid[-1][0].shape[-2:], device=a.device)
    for level_a, level_b in reversed(pyramid):
        if flow.shape[-2:] != level_a.shape[-2:]:
            flow = 2 * F.interpolate(flow, size=level_a.shape[-2:], mode="bilinear",
                                     align_corners=True)
        warped = _warp(level_b, flow)
        ix, iy = _gradients((level_a + warped) / 2)
        it = warped - level_a
        grad = torch.cat([ix, iy], dim=1)  # [N, 2, h, w]
        shrink = smoothness / (smoothness + prior)
        step = grad / (smoothness + prior + ix**2 + iy**2)
        offset = it - (grad * flow).sum(1, keepdim=True)  # It - grad . flow0
        uv = flow
        for _ in range(iterations):
            avg = F.conv2d(F.pad(uv, (1, 1, 1, 1), mode="replicate"), avg_kernel, groups=2)
            avg = avg.mul_(shrink)
            # uv = avg - grad (grad . (avg - flow0) + It) / denom
            uv = avg.sub_(step * ((grad * avg).sum(1, keepdim=True) + offset))
        flow = uv
    return flow


def part_motion(flow: torch.Tensor, labels: torch.Tensor, num_parts: int,
                min_pixels: int = 3) -> torch.Tensor:
    """Mean flow magnitude (pixels) over each part's pixels, relative to the mean flow of the
    whole foreground (every label but 0, the background): a part that moves only because the
    whole creature moves does not count as moving. flow: [N, 2, H, W]; labels: [N, H, W] (the
    first image's parts). Returns [N, num_parts], NaN for absent parts."""
    fg = (labels != 0).float().unsqueeze(1)  # [N, 1, H, W]
    drift = (flow * fg).sum((2, 3), keepdim=True) / fg.sum((2, 3), keepdim=True).clamp_min(1)
    rel = flow - drift
    magnitude = (rel[:, 0].square() + rel[:, 1].square()).sqrt()  # [N, H, W]; 10x norm(dim=1)
    onehot = F.one_hot(labels.long(), num_parts).permute(0, 3, 1, 2).float()
    count = onehot.sum((2, 3))
    mean = (onehot * magnitude.unsqueeze(1)).sum((2, 3)) / count.clamp_min(1)
    return mean.masked_fill(count < min_pixels, math.nan)
