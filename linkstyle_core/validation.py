"""Ground-truth validation of the selectivity pipeline on the toy world.

Every toy image comes with the factors it was rendered from, so each classifier unit has a
ground-truth part. The bundled classifier ships it, measured by intervention (each part
factor moved, renderer -> classifier; ``toyworld.ground_truth``); for a classifier without it,
``ground_truth_parts`` derives one from correlations within species. A unit the pipeline calls
"ear-selective" should be one whose activation really responds to the ear factors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from scipy import stats


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
                       factor_parts: Mapping[str, str], units: Sequence[int],
                       min_abs_corr: float = 0.3) -> pd.DataFrame:
    """Correlational ground truth per unit: the part-specific factor with the largest
    |correlation|, its part, and the part concentration of the largest |correlation| per part.
    Units tracking no part factor with |r| >= min_abs_corr are not evaluated."""
    cols = [i for i, name in enumerate(factor_names) if name in factor_parts]
    sub = np.nan_to_num(np.abs(corr[:, cols]), nan=0.0)
    best = sub.argmax(1)
    names = [factor_names[cols[b]] for b in best]
    part_names = sorted(set(factor_parts.values()))
    per_part = np.stack([sub[:, [j for j, c in enumerate(cols)
                                 if factor_parts[factor_names[c]] == p]].max(1)
                         for p in part_names], axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        conc = per_part.max(1) / per_part.sum(1)
    strength = sub[np.arange(len(sub)), best]
    return pd.DataFrame({
        "unit": np.asarray(units),
        "gt_factor": names,
        "gt_part": [factor_parts[n] for n in names],
        "gt_abs_corr": strength,
        "gt_concentration": conc,
        "evaluated": strength >= min_abs_corr,
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
             selective_concentration: float = 0.6,
             strong_quantile: float = 0.75) -> tuple[dict[str, float], pd.DataFrame]:
    """Compare the pipeline's top part with the ground-truth part.

    units: the selectivity stage's unit summary (unit, top_part, concentration, significant,
    score_<part>, tuning_strength); truth: one row per unit with unit, gt_part, evaluated
    (whether the truth speaks about the unit at all, e.g. it responds to some part factor)
    and gt_concentration (the ground truth's own part concentration; NaN if unknown).
    Among the evaluated units, the strongly tuned ones are those whose measured selectivity is
    most concentrated (concentration at or above its ``strong_quantile``), the part-selective
    ones those whose ground-truth concentration is at least ``selective_concentration``.
    Returns (metrics, per-unit table). Metrics: ``match_rate_all`` / ``chance_all`` over the
    evaluated units (chance: the match rate if the pipeline's top parts were shuffled among
    them), ``match_rate`` / ``chance`` over the strongly tuned, ``match_rate_selective`` /
    ``chance_selective`` over the part-selective; ``match_<part>`` (recall: the share of the
    part's ground-truth units that the pipeline gives that top part) with ``chance_<part>``
    (the share of all evaluated units it gives that top part); ``auc_<part>``: how well the
    pipeline's share of selectivity for that part ranks the part's ground-truth units above
    the others (0.5 = chance), and ``mean_auc``; counts ``n_units``, ``n_strong``,
    ``n_selective``, ``n_significant`` and ``n_selective_significant``.
    """
    table = units.merge(truth, on="unit", how="inner")
    table["match"] = table["top_part"] == table["gt_part"]
    evaluated = table[table["evaluated"]]
    cut = evaluated["concentration"].quantile(strong_quantile) if len(evaluated) else np.inf
    strong = evaluated[evaluated["concentration"] >= cut]
    selective = evaluated[evaluated["gt_concentration"] >= selective_concentration]
    table["strong"] = table["unit"].isin(strong["unit"])
    table["gt_selective"] = table["unit"].isin(selective["unit"])
    metrics: dict[str, float] = {
        "n_units": float(len(evaluated)), "n_strong": float(len(strong)),
        "n_selective": float(len(selective)),
        "n_significant": float(table["significant"].sum()),
        "n_selective_significant": float(selective["significant"].sum()),
    }
    metrics["match_rate"], metrics["chance"] = _match(strong, parts)
    metrics["match_rate_all"], metrics["chance_all"] = _match(evaluated, parts)
    metrics["match_rate_selective"], metrics["chance_selective"] = _match(selective, parts)
    strength = evaluated["tuning_strength"].replace(0, np.nan)
    aucs = []
    for part in parts:
        own = evaluated["gt_part"] == part
        metrics[f"match_{part}"] = float(evaluated.loc[own, "match"].mean()) if own.any() \
            else float("nan")
        metrics[f"chance_{part}"] = float((evaluated["top_part"] == part).mean())
        col = f"score_{part}"
        if col not in evaluated:
            continue
        share = (evaluated[col] / strength).fillna(0.0).to_numpy()
        auc = _auc(share, own.to_numpy())
        metrics[f"auc_{part}"] = auc
        if auc == auc:
            aucs.append(auc)
    metrics["mean_auc"] = float(np.mean(aucs)) if aucs else float("nan")
    return metrics, table
