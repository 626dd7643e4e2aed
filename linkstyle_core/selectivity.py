"""Per-unit selectivity over parts and measures, against a null of random directions.

For each unit, part and measure: the change from the first to the last tuning step across
samples, compared with the same change along random directions in r-space with the same step
sizes (the null control). Effect sizes are in units of the null's spread, so "selective"
means "changes this more than an arbitrary direction does".
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from linkstyle_core.measure import MEASURES

ALL_MEASURES = (*MEASURES, "motion")


def first_last_change(measures: np.ndarray, motion: np.ndarray) -> np.ndarray:
    """measures [K, Ns, S, P, M], motion [K, Ns, P] -> change [K, Ns, P, M + 1].

    The change of every measure from the first to the last step; orientation changes are
    wrapped into (-90, 90] degrees; motion (already a first->last quantity) is appended.
    """
    delta = measures[:, :, -1] - measures[:, :, 0]
    angle = MEASURES.index("angle")
    delta[..., angle] = (delta[..., angle] + 90.0) % 180.0 - 90.0
    return np.concatenate([delta, motion[..., None]], axis=-1)


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """q-values of the Benjamini-Hochberg procedure over all finite p-values (NaN kept)."""
    p = np.asarray(p, dtype=np.float64)
    q = np.full_like(p, np.nan)
    finite = np.isfinite(p)
    pv = p[finite]
    if pv.size == 0:
        return q
    order = np.argsort(pv)
    ranked = pv[order] * pv.size / np.arange(1, pv.size + 1)
    ranked = np.minimum.accumulate(ranked[::-1])[::-1].clip(max=1.0)
    out = np.empty_like(pv)
    out[order] = ranked
    q[finite] = out
    return q


def selectivity_table(
    units: Sequence[int] | np.ndarray, change: np.ndarray, null_change: np.ndarray,
    parts: Sequence[str],
) -> pd.DataFrame:
    """One row per (unit, part, measure).

    change: [U, Ns, P, M'] first->last changes of the units; null_change: [K, Ns, P, M'] of
    the K null directions, on the same samples.

    The unit of comparison is a direction's mean change over the samples: every sample moves
    the same way along one direction, so its samples are not independent evidence, and the
    null is the spread of that mean across random directions. Columns: unit, part, measure,
    n (samples where the part exists at both ends), mean_change, std_change (over samples),
    null_mean and null_std (mean and standard deviation of the K null directions' mean
    changes), effect_size = (mean_change - null_mean) / null_std, p_value (two-sided,
    Student's t prediction interval with K - 1 degrees of freedom: how unusual this mean would
    be for one more random direction), q_value (Benjamini-Hochberg over every row).
    """
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices: absent parts
        n = np.isfinite(change).sum(1).astype(np.float64)  # [U, P, M']
        mean = np.nanmean(change, axis=1)
        std = np.nanstd(change, axis=1, ddof=1)
        null_means = np.nanmean(null_change, axis=1)  # [K, P, M']
        k = np.isfinite(null_means).sum(0).astype(np.float64)
        mean0 = np.nanmean(null_means, axis=0)
        sd0 = np.nanstd(null_means, axis=0, ddof=1)
        effect = (mean - mean0) / np.where(sd0 > 0, sd0, np.nan)
        t = effect / np.sqrt(1 + 1 / k)
        p = 2 * stats.t.sf(np.abs(t), np.maximum(k - 1, 1))
    p = np.where((k >= 3) & (n >= 1), p, np.nan)
    q = benjamini_hochberg(p.ravel()).reshape(p.shape)
    u_idx, p_idx, m_idx = np.meshgrid(np.arange(len(units)), np.arange(len(parts)),
                                      np.arange(len(ALL_MEASURES)), indexing="ij")
    return pd.DataFrame({
        "unit": np.asarray(units)[u_idx.ravel()],
        "part": np.asarray(parts, dtype=object)[p_idx.ravel()],
        "measure": np.asarray(ALL_MEASURES, dtype=object)[m_idx.ravel()],
        "n": n.ravel().astype(np.int64),
        "mean_change": mean.ravel(),
        "std_change": std.ravel(),
        "null_mean": np.broadcast_to(mean0, mean.shape).ravel(),
        "null_std": np.broadcast_to(sd0, mean.shape).ravel(),
        "effect_size": effect.ravel(),
        "p_value": p.ravel(),
        "q_value": q.ravel(),
    })


def closed_loop_spearman(set_values: np.ndarray, response: np.ndarray) -> np.ndarray:
    """Per unit, Spearman correlation between set and re-encoded values.

    set_values, response: [U, Ns, S] -> [U] (NaN where either side is constant).
    """
    a = stats.rankdata(set_values.reshape(len(set_values), -1), axis=1)
    b = stats.rankdata(response.reshape(len(response), -1), axis=1)
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (a * b).sum(1) / np.sqrt((a**2).sum(1) * (b**2).sum(1))


def unit_summary(
    table: pd.DataFrame, parts: Sequence[str], ignore_parts: Sequence[str] = ("background",),
    q_threshold: float = 0.05,
) -> pd.DataFrame:
    """One row per unit: which part its tuning changes most, and how concentrated that is.

    part_score = sum over measures of |effect_size| for that part. top_part: the part with the
    largest score among ``parts`` minus ``ignore_parts`` (the background changes whenever a
    foreground part moves); concentration: its share of the summed scores of those parts;
    tuning_strength: that sum; top_part_q: the smallest q-value in the top part;
    significant: top_part_q < q_threshold; selective: concentration in the top quarter of all
    units (the units reported as selective for their top part).
    """
    fg = [p for p in parts if p not in set(ignore_parts)]
    sub = table[table["part"].isin(fg)].copy()
    sub["abs_effect"] = sub["effect_size"].abs().fillna(0.0)
    scores = sub.pivot_table(index="unit", columns="part", values="abs_effect", aggfunc="sum")
    scores = scores.reindex(columns=fg).fillna(0.0)
    total = scores.sum(axis=1)
    top = scores.idxmax(axis=1)
    min_q = sub.groupby(["unit", "part"])["q_value"].min()
    top_q = [min_q.get((u, p), np.nan) for u, p in zip(scores.index, top, strict=True)]
    out = pd.DataFrame({
        "unit": scores.index.to_numpy(),
        "top_part": top.to_numpy(),
        "concentration": (scores.max(axis=1) / total.replace(0, np.nan)).to_numpy(),
        "tuning_strength": total.to_numpy(),
        "top_part_q": np.asarray(top_q, dtype=np.float64),
    })
    out["significant"] = out["top_part_q"] < q_threshold
    out["selective"] = out["concentration"] >= out["concentration"].quantile(0.75)
    for p in fg:
        out[f"score_{p}"] = scores[p].to_numpy()
    return out.reset_index(drop=True)
