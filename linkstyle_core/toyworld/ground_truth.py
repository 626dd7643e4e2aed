"""The interventional ground truth of the toy classifier's units (DESIGN.md, "The bundled toy
world"): which part every penultimate unit really follows.

For each factor ``f`` and each of ``n_per_class`` images per species, ``f`` is moved to -1 and
+1 within-species std with every other factor fixed; both versions go through the renderer and
the classifier, and

- ``sensitivity[u, f] = mean_images |r_u(f+) - r_u(f-)| / 2``  (activation units per std);
- ``part_sensitivity[u, p] = sum of sensitivity[u, f] over the factors of part p``
  (``renderer.FACTOR_PARTS``);
- ``concentration[u] = max_p part_sensitivity[u, p] / sum_p part_sensitivity[u, p]``
  (1: one part only; 1/6: spread evenly), ``gt_part[u] = argmax_p``.

Nuisance factors (scale, pose, position, brightness) are measured too, for information; they
belong to no part and do not enter the concentration. A unit that no part factor moves (a dead
unit) gets concentration 0 and part ``"none"``.

The figures are stored in the classifier's weight file (``checkpoint.save_checkpoint``) and
read back as a table by ``load_ground_truth``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from linkstyle_core import stop
from linkstyle_core.models.protocols import Classifier
from linkstyle_core.toyworld.factors import FACTOR_PARTS, FACTORS, SPECIES, factor_interventions
from linkstyle_core.toyworld.generator import model_device
from linkstyle_core.toyworld.renderer import render

if TYPE_CHECKING:
    import pandas as pd

GROUND_TRUTH_PARTS: tuple[str, ...] = tuple(dict.fromkeys(FACTOR_PARTS.values()))
"""The parts a unit can follow (body, head, ear, leg, tail, eye: every part a factor belongs
to), in the column order of ``part_sensitivity``."""

SELECTIVE_CONCENTRATION = 0.6
"""A unit is part-selective when its concentration reaches this value."""

MIXED_CONCENTRATION = 0.5
"""A unit is mixed (not part-selective) when its concentration stays below this value: no
part moves it more than all the other parts together."""


@torch.no_grad()
def _features(classifier: Classifier, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """images [N, 3, H, W] in [-1, 1] -> r [N, D] on the CPU."""
    device = model_device(classifier)
    out = [
        classifier.features(classifier.preprocess(chunk.to(device))).float().cpu()
        for chunk in torch.split(images, batch)
    ]
    return torch.cat(out)


@torch.no_grad()
def measure_ground_truth(
    classifier: Classifier, n_per_class: int = 50, seed: int = 4242
) -> dict[str, Any]:
    """Interventional sensitivity of every penultimate unit to every factor.

    Returns a dict (stored as is in the weight file): ``factors`` (list of F names, as
    ``FACTORS``), ``parts`` (``GROUND_TRUTH_PARTS``), ``sensitivity`` [D, F] float32,
    ``part_sensitivity`` [D, 6] float32, ``concentration`` [D] float32, ``gt_part`` (list of D
    part names or ``"none"``), ``n_images`` (``n_per_class * len(SPECIES)``), ``seed``.
    """
    columns = []
    for _, _, lo, hi in factor_interventions(n_per_class, seed):
        stop.check()
        r_lo = _features(classifier, render(lo).images)
        r_hi = _features(classifier, render(hi).images)
        columns.append((r_hi - r_lo).abs().mean(dim=0) / 2.0)  # [D]
    sensitivity = torch.stack(columns, dim=1)  # [D, F]
    part_sensitivity = torch.stack(
        [
            sensitivity[:, [FACTORS.index(f) for f, p in FACTOR_PARTS.items() if p == part]].sum(1)
            for part in GROUND_TRUTH_PARTS
        ],
        dim=1,
    )  # [D, 6]
    total = part_sensitivity.sum(dim=1)
    best, best_part = part_sensitivity.max(dim=1)
    alive = total > 1e-8
    concentration = torch.where(alive, best / total.clamp_min(1e-12), torch.zeros_like(total))
    gt_part = [
        GROUND_TRUTH_PARTS[int(k)] if bool(a) else "none"
        for k, a in zip(best_part, alive, strict=True)
    ]
    return {
        "factors": list(FACTORS),
        "parts": list(GROUND_TRUTH_PARTS),
        "sensitivity": sensitivity,
        "part_sensitivity": part_sensitivity,
        "concentration": concentration,
        "gt_part": gt_part,
        "n_images": n_per_class * len(SPECIES),
        "seed": int(seed),
    }


def ground_truth_table(ground_truth: dict[str, Any]) -> pd.DataFrame:
    """One row per unit from a ``measure_ground_truth`` dict.

    Columns: ``unit`` (int), ``gt_part`` (str), ``gt_concentration`` (float), ``gt_factor``
    (str, the most sensitive part factor), ``gt_sensitivity`` (float, summed over the part
    factors) and ``sens_<factor>`` for every factor (nuisances included).
    """
    import pandas as pd

    factors = list(ground_truth["factors"])
    sens = torch.as_tensor(ground_truth["sensitivity"]).float()  # [D, F]
    part_cols = [factors.index(f) for f in factors if f in FACTOR_PARTS]
    part_sens = sens[:, part_cols]
    table: dict[str, Any] = {
        "unit": list(range(sens.shape[0])),
        "gt_part": [str(p) for p in ground_truth["gt_part"]],
        "gt_concentration": torch.as_tensor(ground_truth["concentration"]).double().tolist(),
        "gt_factor": [factors[part_cols[int(k)]] for k in part_sens.argmax(dim=1)],
        "gt_sensitivity": part_sens.sum(dim=1).double().tolist(),
    }
    for j, name in enumerate(factors):
        table[f"sens_{name}"] = sens[:, j].double().tolist()
    frame = pd.DataFrame(table)
    return frame.astype({"unit": "int64", "gt_part": "object"})


def load_ground_truth(path: str | None = None) -> pd.DataFrame:
    """The ground-truth table (``ground_truth_table``) of the bundled toy classifier, or of the
    classifier weight file at ``path``. Raises ``KeyError`` if the file holds no ground truth."""
    from linkstyle_core.models.toy import toy_classifier_path
    from linkstyle_core.toyworld.checkpoint import read_ground_truth

    return ground_truth_table(read_ground_truth(path or toy_classifier_path()))


def summarize_ground_truth(ground_truth: dict[str, Any]) -> dict[str, float]:
    """Headline figures: ``part_selective_share`` (share of units with concentration >=
    ``SELECTIVE_CONCENTRATION``), ``units_per_part_<part>`` (units whose gt_part is the part),
    ``units_dead`` and ``concentration_median``."""
    conc = torch.as_tensor(ground_truth["concentration"]).float()
    out = {
        "part_selective_share": float((conc >= SELECTIVE_CONCENTRATION).float().mean()),
        "concentration_median": float(conc.median()),
        "units_dead": float(sum(p == "none" for p in ground_truth["gt_part"])),
    }
    for part in GROUND_TRUTH_PARTS:
        out[f"units_per_part_{part}"] = float(sum(p == part for p in ground_truth["gt_part"]))
    return out
