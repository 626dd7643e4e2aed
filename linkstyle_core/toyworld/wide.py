"""A toy classifier with thousands of penultimate units, derived from the bundled one.

A ResNet-50's penultimate layer has 2048 units; the bundled toy classifier has 192, every one
part-selective. To run and validate analyses at that scale, ``WideToyClassifier`` derives
``units`` units from the bundled 192 by a fixed, seeded construction (no weights of its own to
ship or train):

    r' = M r,    M [units, 192] >= 0,
    head'(r') = head(M⁺ r')          (M⁺ the pseudo-inverse; M has full column rank, so
                                      head'(M r) = head(r): the same species decisions)

Units alternate between two kinds, so every prefix of the layer holds both in equal shares:

- **selective** (even units): one bundled unit, scaled, plus a fifth of another bundled unit
  of the same ground-truth part. The selective units walk through the bundled units in a
  seeded order, so the first 384 units already cover all 192 (full column rank from there on).
- **mixed** (odd units): three bundled units of three different parts, each weighted by the
  inverse of its interventional sensitivity, so that the three parts move the unit about
  equally and none dominates.

The kind is only what the construction aims at. What a unit really follows is its ground truth,
measured by intervention on this classifier (``ground_truth.measure_ground_truth``) like the
bundled one's: a selective unit's part, and whether a mixed unit's concentration is below 0.5,
are measured, not assumed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from linkstyle_core.toyworld.classifier import ToyClassifier

WIDE_UNITS = 2048
WIDE_SEED = 2048
KINDS = ("selective", "mixed")


@dataclass(frozen=True)
class WideLayout:
    """How the wide units are made: ``mixing`` [units, D] float32 (>= 0), ``kind`` of every
    unit (``KINDS``) and its ``sources`` (the bundled units it mixes)."""

    mixing: torch.Tensor
    kind: tuple[str, ...]
    sources: tuple[tuple[int, ...], ...]


def wide_layout(base_parts: list[str], base_sensitivity: torch.Tensor, units: int = WIDE_UNITS,
                seed: int = WIDE_SEED) -> WideLayout:
    """The construction of the module docstring.

    base_parts: the ground-truth part of each of the D bundled units; base_sensitivity: [D]
    their summed interventional sensitivity (``gt_sensitivity``), which evens out the three
    parts of a mixed unit. Deterministic for a given seed.
    """
    d = len(base_parts)
    if units < 2 * d:
        raise ValueError(f"units must be at least {2 * d} (every bundled unit appears in a "
                         f"selective unit, so the head stays exact), got {units}")
    gen = torch.Generator().manual_seed(seed)
    sens = base_sensitivity.float().clamp_min(1e-6)
    parts = sorted(set(base_parts))
    by_part = {p: [u for u in range(d) if base_parts[u] == p] for p in parts}
    order = torch.randperm(d, generator=gen).tolist()
    mixing = torch.zeros(units, d)
    kind: list[str] = []
    sources: list[tuple[int, ...]] = []
    for j in range(units):
        if j % 2 == 0:
            k = order[(j // 2) % d]
            peers = [u for u in by_part[base_parts[k]] if u != k]
            peer = peers[int(torch.randint(len(peers), (1,), generator=gen))] if peers else k
            scale = float(torch.empty(1).uniform_(0.5, 2.0, generator=gen))
            mixing[j, k] += scale
            mixing[j, peer] += 0.2 * scale * float(sens[k] / sens[peer])
            kind.append("selective")
            sources.append((k, peer))
        else:
            chosen = torch.randperm(len(parts), generator=gen)[:3].tolist()
            picks = []
            for p in chosen:
                members = by_part[parts[p]]
                picks.append(members[int(torch.randint(len(members), (1,), generator=gen))])
            for u in picks:
                mixing[j, u] += float(1.0 / sens[u]) * float(sens[picks].mean())
            kind.append("mixed")
            sources.append(tuple(picks))
    return WideLayout(mixing=mixing, kind=tuple(kind), sources=tuple(sources))


class WideToyClassifier(nn.Module):
    """The bundled toy classifier with ``units`` derived penultimate units (``Classifier``
    protocol): ``features`` gives r' = M r [N, units] (non-negative), ``head`` the bundled
    head on M⁺ r'. ``unit_kind`` holds the construction's kind of every unit."""

    mixing: torch.Tensor  # a buffer, declared for the type checker

    def __init__(self, base: ToyClassifier, layout: WideLayout) -> None:
        super().__init__()
        self.base = base
        self.register_buffer("mixing", layout.mixing.clone())
        # derived from mixing, so not a buffer: the state dict (and so the fingerprint in every
        # cache key) would otherwise depend on the thread count LAPACK's pseudo-inverse ran with
        self._unmixing = torch.linalg.pinv(layout.mixing.double()).float()
        self.unit_kind = layout.kind
        self.num_classes = base.num_classes
        self.feature_dim = int(layout.mixing.shape[0])
        self.class_names = base.class_names
        self.requires_grad_(False)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        return self.base.preprocess(images)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x: preprocessed images -> r': [N, units] float32, non-negative."""
        return self.base.features(x) @ self.mixing.T

    def head(self, r: torch.Tensor) -> torch.Tensor:
        """r': [N, units] -> logits [N, num_classes]."""
        if self._unmixing.device != r.device:      # not a buffer, so .to() does not move it
            self._unmixing = self._unmixing.to(r.device)
        return self.base.head(r @ self._unmixing.T)


def wide_toy_classifier(device: torch.device | str = "cpu",
                        units: int = WIDE_UNITS) -> WideToyClassifier:
    """``classifier.kind: python`` factory: the bundled toy classifier widened to ``units``
    units (default 2048), built from the bundled weights and their shipped ground truth."""
    from linkstyle_core.models.toy import load_toy_classifier
    from linkstyle_core.toyworld.ground_truth import load_ground_truth

    base = load_toy_classifier("cpu")
    gt = load_ground_truth()
    layout = wide_layout(gt["gt_part"].tolist(),
                         torch.tensor(gt["gt_sensitivity"].to_numpy()), units)
    return WideToyClassifier(base, layout).to(device).eval()
