"""Ground-truth validation of the selectivity pipeline on the toy world.

Every toy image comes with the factors it was rendered from, so each classifier unit has a
ground-truth part: the part of the factor its activation tracks most strongly (within species,
so that species differences do not count as a part). A unit the pipeline calls "ear-selective"
should be one whose activation really tracks an ear factor.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from scipy import stats

TOY_FACTOR_PARTS: dict[str, str] = {
    "body_size": "body", "body_aspect": "body", "body_hue": "body",
    "head_size": "head", "head_hue": "head",
    "ear_length": "ear", "ear_width": "ear",
    "leg_length": "leg",
    "tail_length": "tail", "tail_angle": "tail",
}
"""Which part each part-specific toy factor shapes; nuisance factors (pose, position,
brightness) belong to no part and are left out."""


def within_class_correlation(r: torch.Tensor, factors: torch.Tensor,
                             labels: torch.Tensor) -> np.ndarray:
    """Pearson correlation of every unit with every factor after removing class means.

    r: [N, D], factors: [N, F], labels: [N] -> [D, F] (NaN for constant units).
    """
    r, f = r.double().clone(), factors.double().clone()
    for c in torch.unique(labels):
        m = labels == c
        r[m] -= r[m].mean(0)
        f[m] -= f[m].mean(0)
    num = r.T @ f
    den = torch.outer(r.norm(dim=0), f.norm(dim=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (num / den).numpy()


def ground_truth_parts(corr: np.ndarray, factor_names: Sequence[str],
                       factor_parts: Mapping[str, str], units: Sequence[int]) -> pd.DataFrame:
    """Per unit: the part-specific factor with the largest |correlation| and its part."""
    cols = [i for i, name in enumerate(factor_names) if name in factor_parts]
    sub = np.nan_to_num(np.abs(corr[:, cols]), nan=0.0)
    best = sub.argmax(1)
    names = [factor_names[cols[b]] for b in best]
    return pd.DataFrame({
        "unit": np.asarray(units),
        "gt_factor": names,
        "gt_part": [factor_parts[n] for n in names],
        "gt_abs_corr": sub[np.arange(len(sub)), best],
    })


def _auc(scores: np.ndarray, positive: np.ndarray) -> float:
    pos, neg = scores[positive], scores[~positive]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    u = stats.mannwhitneyu(pos, neg, alternative="two-sided").statistic
    return float(u / (len(pos) * len(neg)))


def _match(rows: pd.DataFrame, parts: Sequence[str]) -> tuple[float, float]:
    """(share of rows whose top part is the ground-truth part, the share expected by chance
    if the pipeline's top parts were shuffled among these rows)."""
    if rows.empty:
        return float("nan"), float("nan")
    p_gt = rows["gt_part"].value_counts(normalize=True)
    p_top = rows["top_part"].value_counts(normalize=True)
    chance = sum(p_gt.get(p, 0.0) * p_top.get(p, 0.0) for p in parts)
    return float(rows["match"].mean()), float(chance)


def validate(units: pd.DataFrame, truth: pd.DataFrame, parts: Sequence[str],
             min_abs_corr: float = 0.3,
             strong_quantile: float = 0.75) -> tuple[dict[str, float], pd.DataFrame]:
    """Compare the pipeline's top part with the ground-truth part.

    units: the selectivity stage's unit summary (unit, top_part, concentration, significant,
    score_<part>, tuning_strength); truth: ``ground_truth_parts``. Units whose activation
    tracks a part factor with |r| >= min_abs_corr are evaluated; among them, the strongly
    tuned ones are those whose selectivity is most concentrated on one part (concentration at
    or above its ``strong_quantile``).
    Returns (metrics, per-unit table). Metrics: ``match_rate`` / ``chance`` among strongly
    tuned units (chance: the match rate if the pipeline's parts were shuffled among them),
    ``match_rate_all`` / ``chance_all`` among all evaluated units, ``n_units``, ``n_strong``,
    ``n_significant``, ``auc_<part>``: how well the pipeline's share of selectivity for that
    part ranks units whose ground-truth part it is above the others (0.5 = chance), and
    ``mean_auc``.
    """
    table = units.merge(truth, on="unit", how="inner")
    table["match"] = table["top_part"] == table["gt_part"]
    evaluated = table[table["gt_abs_corr"] >= min_abs_corr]
    cut = evaluated["concentration"].quantile(strong_quantile) if len(evaluated) else np.inf
    strong = evaluated[evaluated["concentration"] >= cut]
    table["strong"] = table["unit"].isin(strong["unit"])
    metrics: dict[str, float] = {"n_units": float(len(evaluated)), "n_strong": float(len(strong)),
                                 "n_significant": float(table["significant"].sum())}
    metrics["match_rate"], metrics["chance"] = _match(strong, parts)
    metrics["match_rate_all"], metrics["chance_all"] = _match(evaluated, parts)
    strength = evaluated["tuning_strength"].replace(0, np.nan)
    aucs = []
    for part in parts:
        col = f"score_{part}"
        if col not in evaluated:
            continue
        share = (evaluated[col] / strength).fillna(0.0).to_numpy()
        auc = _auc(share, (evaluated["gt_part"] == part).to_numpy())
        metrics[f"auc_{part}"] = auc
        if auc == auc:
            aucs.append(auc)
    metrics["mean_auc"] = float(np.mean(aucs)) if aucs else float("nan")
    return metrics, table
