"""Image statistics that track the toy world's factors, measured back from rendered or
generated images and their part label maps (``evaluate``'s test that no factor collapses in
the generator), and a rank correlation to compare them with the true factors."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from linkstyle_core.toyworld.factors import FACTORS, PARTS


def _rgb_to_hue(rgb: torch.Tensor) -> torch.Tensor:
    """rgb [..., 3] in [0, 1] -> hue [...] in [0, 1) (HSV)."""
    r, g, b = rgb.unbind(-1)
    mx, _ = rgb.max(dim=-1)
    mn, _ = rgb.min(dim=-1)
    delta = (mx - mn).clamp_min(1e-6)
    h = torch.where(
        mx == r,
        ((g - b) / delta) % 6.0,
        torch.where(mx == g, (b - r) / delta + 2.0, (r - g) / delta + 4.0),
    )
    return h / 6.0


def _moments(mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """mask [N, H, W] float -> area, centroid (cx, cy) and central second moments, each [N].

    Empty masks give NaN centroids and moments (the statistic is undefined there).
    """
    n, h, w = mask.shape
    ys = torch.arange(h, dtype=mask.dtype, device=mask.device).view(1, h, 1) + 0.5
    xs = torch.arange(w, dtype=mask.dtype, device=mask.device).view(1, 1, w) + 0.5
    area = mask.sum(dim=(1, 2))
    safe = torch.where(area > 0, area, torch.full_like(area, float("nan")))
    cx = (mask * xs).sum(dim=(1, 2)) / safe
    cy = (mask * ys).sum(dim=(1, 2)) / safe
    dx, dy = xs - cx.view(n, 1, 1), ys - cy.view(n, 1, 1)
    cxx = (mask * dx * dx).sum(dim=(1, 2)) / safe
    cyy = (mask * dy * dy).sum(dim=(1, 2)) / safe
    cxy = (mask * dx * dy).sum(dim=(1, 2)) / safe
    return {"area": area, "cx": cx, "cy": cy, "cxx": cxx, "cyy": cyy, "cxy": cxy}


def _eig(m: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Largest and smallest eigenvalue of the 2x2 moment matrix, and the major axis angle."""
    mean = 0.5 * (m["cxx"] + m["cyy"])
    rad = torch.sqrt((0.5 * (m["cxx"] - m["cyy"])).square() + m["cxy"].square())
    angle = 0.5 * torch.atan2(2.0 * m["cxy"], m["cxx"] - m["cyy"])
    return mean + rad, (mean - rad).clamp_min(0.0), angle


def _circular_mean_hue(hue: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """hue, mask [N, H, W] -> masked circular mean hue [N] in (-0.5, 0.5] (NaN if empty)."""
    ang = 2.0 * math.pi * hue
    s = (mask * torch.sin(ang)).sum(dim=(1, 2))
    c = (mask * torch.cos(ang)).sum(dim=(1, 2))
    out = torch.atan2(s, c) / (2.0 * math.pi)
    return torch.where(mask.sum(dim=(1, 2)) > 0, out, torch.full_like(out, float("nan")))


def _hue_near(hue: torch.Tensor, centre: float) -> torch.Tensor:
    """Hues [N] (mod 1) unwrapped into the window ``centre +- 0.5`` (centre: the factor's mean)."""
    return torch.remainder(hue - centre + 0.5, 1.0) - 0.5 + centre


def factor_statistics(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """One image statistic per factor, computed from pixels and a part label map.

    images: [N, 3, H, W] in [-1, 1]; labels: [N, H, W] int64 (true or inferred).
    Returns stats: [N, F] float32, column i tracking ``FACTORS[i]`` (NaN where undefined, e.g.
    a part that is not visible). The statistics (px units, y pointing down):

    - body_length, body_height: sqrt of the major and minor second moments of the body;
    - head_size: sqrt(head + eye area); eye_size: sqrt(eye area);
    - ear_length: distance from the head's centroid to the farthest ear pixel (stray pixels
      removed); ear_width: ear area over the visible ear length (tip distance minus the
      head's radius);
    - leg_length: sqrt of the vertical second moment of the legs; leg_width: leg area over it;
    - tail_length: tail area; tail_angle: angle between the tail's and the body's major axes;
    - *_hue: circular mean hue of the part's pixels (head: head without eye);
    - scale: sqrt of the creature's area; brightness: mean HSV value of background pixels;
    - pose: direction from the body's centroid to the head's (nose up positive); pos_x, pos_y:
      body centroid.
    """
    from linkstyle_core.toyworld.factors import species_means

    centre = species_means().mean(dim=0)  # [F], where each hue statistic is unwrapped
    rgb01 = ((images.float() + 1.0) * 0.5).clamp(0.0, 1.0).permute(0, 2, 3, 1)  # [N, H, W, 3]
    hue = _rgb_to_hue(rgb01)
    value = rgb01.max(dim=-1).values

    def mask(*parts: str) -> torch.Tensor:
        m = torch.zeros_like(labels, dtype=torch.float32)
        for p in parts:
            m = m + (labels == PARTS.index(p)).float()
        return m

    def hue_of(part: str, factor: str) -> torch.Tensor:
        return _hue_near(_circular_mean_hue(hue, mask(part)), float(centre[FACTORS.index(factor)]))

    body, ear = mask("body"), mask("ear")
    # Second moments are sensitive to stray pixels (an edge blend read as ear colour far from
    # the head); keep ear pixels with at least two ear neighbours in their 3x3 neighbourhood.
    ear = ear * (F.avg_pool2d(ear.unsqueeze(1), 3, stride=1, padding=1).squeeze(1) * 9.0 >= 3.0)
    mb = _moments(body)
    major, minor, angle = _eig(mb)

    xs = torch.arange(labels.shape[-1], device=labels.device).view(1, 1, -1) + 0.5

    # Ear tips: the farthest ear pixel from the head's centroid.
    mh = _moments(mask("head", "eye"))
    ys = torch.arange(labels.shape[-2], device=labels.device).view(1, -1, 1) + 0.5
    ear_dist = torch.sqrt(
        (xs - mh["cx"].view(-1, 1, 1)).square() + (ys - mh["cy"].view(-1, 1, 1)).square()
    )
    ear_tip = (ear_dist * ear).amax(dim=(1, 2))
    head_radius = torch.sqrt(mh["area"] / math.pi)
    ear_tip = torch.where(ear.sum(dim=(1, 2)) > 0, ear_tip, torch.full_like(ear_tip, float("nan")))

    mt = _moments(mask("tail"))
    _, _, tail_axis = _eig(mt)
    # The tail's axis relative to the body's axis (removes the pose), as an axis angle
    # (mod pi) in a window centred on the factor's typical value 0.5 rad.
    tail_angle = torch.remainder(tail_axis - angle - 0.5 + math.pi / 2, math.pi) + 0.5 - math.pi / 2
    ml = _moments(mask("leg"))
    leg_extent = ml["cyy"].sqrt()
    bg = mask("background")
    brightness = (bg * value).sum(dim=(1, 2)) / bg.sum(dim=(1, 2)).clamp_min(1.0)
    h, w = labels.shape[-2:]
    stats = {
        "body_length": major.sqrt(),
        "body_height": minor.sqrt(),
        "body_hue": hue_of("body", "body_hue"),
        "head_size": mask("head", "eye").sum(dim=(1, 2)).sqrt(),
        "head_hue": hue_of("head", "head_hue"),
        "ear_length": ear_tip,
        "ear_width": ear.sum(dim=(1, 2)) / (ear_tip - head_radius).clamp_min(1.0),
        "ear_hue": hue_of("ear", "ear_hue"),
        "leg_length": leg_extent,
        "leg_width": ml["area"] / leg_extent,
        "tail_length": mt["area"],
        "tail_angle": tail_angle,
        "tail_hue": hue_of("tail", "tail_hue"),
        "eye_size": mask("eye").sum(dim=(1, 2)).sqrt(),
        "eye_hue": hue_of("eye", "eye_hue"),
        "scale": (1.0 - bg).sum(dim=(1, 2)).sqrt(),
        "brightness": brightness,
        # direction from the body's centroid to the head's (fixed in the creature's frame);
        # image y points down, so a nose-up tilt has a negative image angle
        "pose": -torch.atan2(mh["cy"] - mb["cy"], mh["cx"] - mb["cx"]),
        "pos_x": mb["cx"] - w / 2,
        "pos_y": mb["cy"] - h / 2,
    }
    return torch.stack([stats[name] for name in FACTORS], dim=1)


def _rank(x: torch.Tensor) -> torch.Tensor:
    return torch.argsort(torch.argsort(x)).double()


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    """Spearman rank correlation of two [N] tensors over the rows where both are finite."""
    ok = torch.isfinite(x) & torch.isfinite(y)
    if int(ok.sum()) < 3:
        return float("nan")
    rx, ry = _rank(x[ok]), _rank(y[ok])
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return float((rx * ry).sum() / torch.sqrt((rx * rx).sum() * (ry * ry).sum()).clamp_min(1e-12))
