"""Per-unit selectivity over parts and measures, and one specificity test per unit.

For each unit, part and measure: the change from the first to the last tuning step, averaged
over samples, as an effect size against random directions in r-space tuned the same way
(the null): (mean change - the null's mean) / the null's spread. Each measure's change is thus
in units of its own variability under tuning, so a tiny part's noisy measures do not outweigh
a large part's clear ones (docs/tuning.md compares this with the spread across samples at the
first step, which let large parts win everything). A part that covers less than a minimum area
in a sample's base image is not scored there. Averaged over measures, the squared effect sizes
give each direction a profile over parts; its top part is where the change concentrates.

Significance is asked once per unit (DESIGN.md "Tuning that moves the unit"): does the unit
give its top part a larger share of its profile than random directions in r-space, tuned and
measured the same way, give that part? Random directions have parts they favour (small parts
have few measurable cells and noisier shares), so the top part's share is a z-score among the
nulls' shares of the same part; each null direction gets the same statistic against the other
nulls, the p-value is the unit's rank among them, and the two-stage Benjamini-Krieger-Yekutieli
procedure (Benjamini-Hochberg with the number of units without an effect estimated) runs over
units. The per-cell effect sizes against the null are kept as descriptive columns.
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


def two_stage_q(p: np.ndarray, alpha: float = 0.05) -> np.ndarray:
    """q-values of the two-stage step-up procedure of Benjamini, Krieger and Yekutieli (2006).

    Stage one runs Benjamini-Hochberg at alpha / (1 + alpha) and counts its rejections r; the
    number of true nulls is then estimated as m0 = m - r, and stage two is Benjamini-Hochberg
    with m0 in place of m. It keeps the false discovery rate at alpha (proved for independent
    p-values), and gains power when most tests are real effects, where plain BH behaves as if
    all m could be null. Returned: BH's q-values times (1 + alpha) m0 / m, capped at 1, so that
    ``q < alpha`` is the procedure's decision at ``alpha`` (the scaling depends on alpha: use
    the same alpha for the decision). With no stage-one rejection these are BH's q-values
    times 1 + alpha (none below alpha either way)."""
    bh = benjamini_hochberg(p)
    finite = np.isfinite(bh)
    m = int(finite.sum())
    if m == 0:
        return bh
    rejected = int((bh[finite] <= alpha / (1.0 + alpha)).sum())
    m0 = max(m - rejected, 1)
    return np.minimum(bh * (1.0 + alpha) * m0 / m, 1.0)


def mask_small_parts(change: np.ndarray, base_area: np.ndarray, min_area: float) -> np.ndarray:
    """NaN out the changes of parts that cover less than ``min_area`` (share of the image) in
    a sample's base image. change [K, Ns, P, M'], base_area [Ns, P] -> a masked copy."""
    out = change.copy()
    out[:, base_area < min_area] = np.nan
    return out


def direction_means(change: np.ndarray, min_fraction: float = 0.5) -> np.ndarray:
    """Mean change over samples: [K, Ns, P, M'] -> [K, P, M'] (NaN where a part was measured
    on fewer than ``min_fraction`` of the samples: it has no reliable mean change)."""
    n = np.isfinite(change).sum(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(change, axis=1)
    mean[n < max(1, min_fraction * change.shape[1])] = np.nan
    return mean


def null_reference(null_means: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The null directions' mean and spread of every (part, measure)'s mean change:
    [K, P, M'] -> (mean [P, M'], standard deviation [P, M'], NaN where it is 0)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean0 = np.nanmean(null_means, axis=0)
        sd0 = np.nanstd(null_means, axis=0, ddof=1)
    return mean0, np.where(sd0 > 0, sd0, np.nan)


def part_scores(effect: np.ndarray) -> np.ndarray:
    """Profile over parts: the mean over the measured measures of the squared effect size,
    [K, P, M'] -> [K, P] (0 for a part with no measured cell).

    A mean, not a sum: a part that is tiny at one end of its trajectories (an eye that grows
    from two pixels) keeps only its area measurable, and a sum would count its unmeasurable
    cells as "no change". Squares, not absolute values: under the null every cell has unit
    variance, so the many small changes of uninvolved parts weigh little against a real one.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN parts
        return np.nan_to_num(np.nanmean(effect**2, axis=-1), nan=0.0)


def concentration(scores: np.ndarray) -> np.ndarray:
    """The top part's share of a profile: [K, P] -> [K] (NaN for an all-zero profile)."""
    total = scores.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, scores.max(-1) / np.where(total > 0, total, 1), np.nan)


TAIL_FRACTION = 0.25
"""The share of the null directions whose statistics fit the exponential tail of
``specificity_p``."""


def specificity_p(stat: np.ndarray, null_stat: np.ndarray,
                  tail_fraction: float = TAIL_FRACTION) -> np.ndarray:
    """One-sided p-value of each unit's statistic against the null directions' statistics.

    Below the nulls' upper ``tail_fraction`` quantile t: the permutation p-value
    (1 + #{null >= stat}) / (1 + K). Above t: the tail is an exponential fitted to the nulls'
    exceedances over t (its scale is their mean), p = (n_tail / (1 + K)) exp(-(stat - t) /
    scale). The permutation p-value cannot go below 1 / (1 + K), so with K = 256 nulls no
    unit could pass Benjamini-Hochberg over 192 units unless at least 15 sat at that floor,
    and at 2048 units 160: the verdict was all or nothing. The exponential tail lets a unit
    far beyond every null get a p-value that says so (docs/tuning.md measures it: the nulls'
    own leave-one-out p-values stay uniform). An exponential is the conservative choice among
    the generalized Pareto tails when the statistics' tail is bounded or light, as it is here.
    stat [U], null_stat [K] -> [U] (NaN where stat is NaN)."""
    null = np.sort(null_stat[np.isfinite(null_stat)])
    k = len(null)
    above = k - np.searchsorted(null, stat, side="left")
    p = (1.0 + above) / (1.0 + k)
    n_tail = int(round(tail_fraction * k))
    if n_tail >= 10 and n_tail < k:
        t = null[k - n_tail - 1]
        scale = float((null[k - n_tail:] - t).mean())
        if scale > 0:
            with np.errstate(over="ignore", invalid="ignore"):
                tail = n_tail / (1.0 + k) * np.exp(-(stat - t) / scale)
            p = np.where(stat > t, tail, p)
    return np.where(np.isfinite(stat), p, np.nan)


def _logit_shares(scores: np.ndarray) -> np.ndarray:
    """Each part's share of a profile on the logit scale, [K, P] -> [K, P] (NaN rows for an
    all-zero profile). Shares live in (0, 1) and are skewed; the logit makes their spread
    across directions comparable between parts that get 5% and parts that get 50%."""
    total = scores.sum(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(total > 0, scores / np.where(total > 0, total, 1), np.nan)
    share = np.clip(share, 1e-6, 1 - 1e-6)
    return np.log(share / (1 - share))


def share_z(scores: np.ndarray, null_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every part's share of a profile as a z-score among the null directions' shares of that
    part, on the logit scale (``_logit_shares``): how much more the profile favours the part
    than random directions favour it. scores [U, P], null_scores [K, P] -> (z [U, P], null
    z [K', P]), where each (finite) null direction is scored against the other K' - 1 (their
    mean and standard deviation), so that the nulls' z come from the procedure the units go
    through. NaN rows for all-zero profiles."""
    unit, null = _logit_shares(scores), _logit_shares(null_scores)
    null = null[np.isfinite(null).all(1)]
    k = len(null)
    mean, sd = null.mean(0), null.std(0, ddof=1)
    loo_mean = (null.sum(0) - null) / (k - 1)
    loo_var = ((null**2).sum(0) - null**2 - (k - 1) * loo_mean**2) / (k - 2)
    with np.errstate(invalid="ignore", divide="ignore"):  # a part no null direction varies
        return (unit - mean) / sd, (null - loo_mean) / np.sqrt(loo_var)


def top_part_specificity(scores: np.ndarray, null_scores: np.ndarray,
                         top: np.ndarray | None = None) -> np.ndarray:
    """p-value of each profile's top-part share against the null directions'.

    scores [U, P], null_scores [K, P] -> p [U]. A profile's statistic is its top part's
    ``share_z``; a null direction's is the same for its own top part, and ``specificity_p``
    ranks the units among the nulls. ``top`` [U]: the units' top parts when they were chosen
    on more samples than ``scores`` holds (default: the largest share in ``scores``); a part
    chosen on other samples is not the one with the largest z by construction, so the test
    stays valid. NaN for an all-zero profile.
    """
    z, null_z = share_z(scores, null_scores)
    finite = np.isfinite(z).all(1)
    if top is None:
        top = np.argmax(np.where(finite[:, None], scores, 0.0), axis=1)
    unit_stat = np.where(finite, z[np.arange(len(z)), top], np.nan)
    null_scores = null_scores[np.isfinite(_logit_shares(null_scores)).all(1)]
    null_stat = null_z[np.arange(len(null_z)), np.argmax(null_scores, axis=1)]
    return specificity_p(unit_stat, null_stat)


def selectivity_table(
    units: Sequence[int] | np.ndarray, change: np.ndarray, null_change: np.ndarray,
    parts: Sequence[str],
) -> pd.DataFrame:
    """One row per (unit, part, measure), descriptive.

    change: [U, Ns, P, M'] first -> last changes of the units; null_change: [K, Nn, P, M'] of
    the K null directions. Columns: unit, part, measure, n (samples where the part was
    measured at both ends), mean_change, std_change (over samples), null_mean and null_std
    (mean and standard deviation of the null directions' mean changes), effect_size =
    (mean_change - null_mean) / null_std.
    """
    mean = direction_means(change)
    mean0, sd0 = null_reference(direction_means(null_change))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices: absent parts
        std = np.nanstd(change, axis=1, ddof=1)
    n = np.isfinite(change).sum(1)
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
        "effect_size": ((mean - mean0) / sd0).ravel(),
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


VERDICTS = ("significant", "leaning", "none")
"""What a unit's row says of its top part: ``significant`` (specificity q below the
threshold: the part is specific to the unit, counted among all units), ``leaning`` (the unit's
own p-value is below the threshold but it does not survive the correction for testing every
unit: a candidate, not a finding) and ``none`` (no part more than random directions give it)."""


def verdicts(p: np.ndarray, q: np.ndarray, threshold: float = 0.05) -> np.ndarray:
    """``VERDICTS`` per unit from its specificity p- and q-value."""
    return np.where(q < threshold, VERDICTS[0], np.where(p < threshold, VERDICTS[1],
                                                         VERDICTS[2])).astype(object)


WEAK_LABEL_RATIO = 1.5
"""A part that random directions make their top part at least this many times as often as
chance (1 / parts) is a weak label for a unit that is not significant: its being the unit's top
part says little (``unit_summary``'s ``weak_label``)."""


def null_top_shares(null_scores: np.ndarray) -> np.ndarray:
    """The share of the null directions whose top part is each part: [K, P] -> [P]."""
    finite = np.isfinite(null_scores).any(1)
    top = np.nanargmax(np.where(np.isnan(null_scores[finite]), -1, null_scores[finite]), axis=1)
    return np.bincount(top, minlength=null_scores.shape[1]) / max(int(finite.sum()), 1)


def unit_summary(
    units: Sequence[int] | np.ndarray, scores: np.ndarray, test_scores: np.ndarray,
    null_scores: np.ndarray, parts: Sequence[str], q_threshold: float = 0.05,
) -> pd.DataFrame:
    """One row per unit: which part its tuning changes most, and is that specific?

    scores: [U, P] part profiles (``part_scores``) over the foreground ``parts`` (background
    left out: it changes whenever a foreground part moves); test_scores: [U, P] the same
    profiles on the null's samples; null_scores: [K, P] the null directions' profiles.
    Columns: unit, top_part, concentration (the top part's share of the profile),
    tuning_strength (the profile's sum), specificity_p (``top_part_specificity``),
    specificity_q (``two_stage_q`` over units), significant (q < q_threshold), verdict
    (``verdicts``), null_top_share (the share of the null directions whose top part is the
    unit's: ``null_top_shares``), weak_label (not significant, and null_top_share at least
    ``WEAK_LABEL_RATIO`` / parts), selective (concentration in the top quarter of all units),
    score_<part>.
    """
    top_index = np.nanargmax(np.where(np.isnan(scores), -1, scores), axis=1)
    top = np.asarray(parts, dtype=object)[top_index]
    p = top_part_specificity(test_scores, null_scores, top_index)
    q = two_stage_q(p, q_threshold)
    conc = concentration(scores)
    out = pd.DataFrame({
        "unit": np.asarray(units),
        "top_part": top,
        "concentration": conc,
        "tuning_strength": scores.sum(1),
        "specificity_p": p,
        "specificity_q": q,
    })
    out["significant"] = out["specificity_q"] < q_threshold
    out["verdict"] = verdicts(p, q, q_threshold)
    out["null_top_share"] = null_top_shares(null_scores)[top_index]
    out["weak_label"] = ~out["significant"] & (
        out["null_top_share"] >= WEAK_LABEL_RATIO / len(parts))
    out["selective"] = out["concentration"] >= np.nanquantile(conc, 0.75)
    for j, part in enumerate(parts):
        out[f"score_{part}"] = scores[:, j]
    return out


def unit_parts_table(summary: pd.DataFrame, test_scores: np.ndarray, null_scores: np.ndarray,
                     parts: Sequence[str]) -> pd.DataFrame:
    """The per-part columns of ``unit_summary`` in long format, one row per (unit, part), so
    that the schema does not depend on the part list. Columns: unit, part, score (the
    profile's ``score_<part>``), share (score / the profile's sum), z (``share_z`` on the
    null's samples: the specificity test's statistic when the part is the top part), top (the
    unit's top part), q (the unit's ``specificity_q`` on its top part's row, NaN on the
    others: significance is tested for the top part only)."""
    scores = summary[[f"score_{p}" for p in parts]].to_numpy(dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = scores / scores.sum(1, keepdims=True)
    z, _ = share_z(test_scores, null_scores)
    top = summary["top_part"].to_numpy()[:, None] == np.asarray(parts, dtype=object)[None, :]
    q = np.where(top, summary["specificity_q"].to_numpy()[:, None], np.nan)
    n_units, n_parts = scores.shape
    return pd.DataFrame({
        "unit": np.repeat(summary["unit"].to_numpy(), n_parts),
        "part": np.tile(np.asarray(parts, dtype=object), n_units),
        "score": scores.ravel(), "share": share.ravel(), "z": z.ravel(),
        "top": top.ravel(), "q": q.ravel(),
    })
