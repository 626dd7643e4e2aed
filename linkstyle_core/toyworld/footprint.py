"""Where each factor's change lands in the image: the renderer's own ground truth.

For every factor ``f`` and every image, the factor is moved to -1 and +1 within-species std
(everything else fixed) and both versions are rendered. A pixel *changed* if any channel moved
by more than ``threshold`` ([-1, 1] units); it *lies on part p* if either render labels it,
or one of its 8 neighbours, ``p``: a part that grows covers pixels that were another part's
(they are its own pixels in the render where it is larger), and the renderer's one-pixel
anti-aliasing ramp blends a part's colour into the pixels just outside its label map. A pixel
can lie on two parts at once (a shared edge), so the shares of one factor need not add to 1.
The own-part share of a part-specific factor is the share of its changed pixels that lie on
``FACTOR_PARTS[f]``; the toy world requires at least 0.8 for every factor (docs/toyworld.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from linkstyle_core.toyworld.factors import FACTOR_PARTS, PARTS, factor_interventions
from linkstyle_core.toyworld.renderer import render


def _near_parts(labels: torch.Tensor) -> torch.Tensor:
    """labels [N, H, W] -> [N, P, H, W] bool: part p's label lies in the pixel's 3x3 block."""
    one_hot = F.one_hot(labels, len(PARTS)).permute(0, 3, 1, 2).float()
    return F.max_pool2d(one_hot, 3, stride=1, padding=1) > 0


@torch.no_grad()
def factor_footprints(
    n_per_class: int = 50, seed: int = 777, threshold: float = 0.05
) -> dict[str, dict[str, float]]:
    """Per factor: how many pixels its +-1 std move changes and which parts they lie on.

    Returns ``{factor: {"changed_px": mean changed pixels per image, "own_part_share": share
    of changed pixels on the factor's part (NaN for nuisances), "colour_change": mean over
    changed pixels of the largest channel change, "share_<part>": share of changed pixels on
    each part, "own_part_share_strict": the own-part share by the two label maps alone, without
    the one-pixel margin}}``. ``n_per_class * len(SPECIES)`` images per factor.
    """
    out: dict[str, dict[str, float]] = {}
    for _, name, lo, hi in factor_interventions(n_per_class, seed):
        a, b = render(lo), render(hi)
        delta = (b.images - a.images).abs().amax(dim=1)  # [N, H, W]
        changed = delta > threshold
        n_changed = changed.sum().clamp_min(1)
        row: dict[str, float] = {
            "changed_px": float(changed.sum(dim=(1, 2)).float().mean()),
            "colour_change": float(delta[changed].mean()) if changed.any() else 0.0,
        }
        near = _near_parts(a.labels) | _near_parts(b.labels)  # [N, P, H, W]
        for k, part in enumerate(PARTS):
            on_part = changed & near[:, k]
            row[f"share_{part}"] = float(on_part.sum() / n_changed)
        own = FACTOR_PARTS.get(name)
        row["own_part_share"] = row[f"share_{own}"] if own is not None else float("nan")
        if own is not None:  # the same without the one-pixel anti-aliasing margin
            k = PARTS.index(own)
            strict = changed & ((a.labels == k) | (b.labels == k))
            row["own_part_share_strict"] = float(strict.sum() / n_changed)
        out[name] = row
    return out
