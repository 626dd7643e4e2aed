"""Per-unit selectivity over parts and measures, and one specificity test per unit.

For each unit, part and measure: the change from the first to the last tuning step, averaged
over samples, as an effect size against random directions in r-space tuned the same way
(the null): (mean change - the null's mean) / the null's spread. Each measure's change is thus
in units of its own variability under tuning, so a tiny part's noisy measures do not outweigh
a large part's clear ones (docs/tuning.md compares this with the spread across samples at the
first step, which let large parts win everything). A part that covers less than a minimum area
in a sample's base image is not scored there. Averaged over measures, the squared effect sizes
give each direction a profile over parts; its top part is where the change concentrates.

Which part a unit reads is measured the other way round (docs/tuning.md, "On classifiers that
are not built to be part-selective"): the null directions are random probes that change the
image, and for each one the re-encoded units' change is known. A ridge regression of a unit's
change on the probes' part changes (each part's own appearance: area, colour, texture, shape)
credits each part with the response it explains: the unit's sensitivity profile, whose top part
is the unit's part. Significance is asked once per unit: is the profile more concentrated on
its top part than the profiles of random read-out directions in r-space, measured from the same
probes? The p-value is the unit's rank among 4000 such read-outs, and the two-stage
Benjamini-Krieger-Yekutieli procedure runs over units. The tuning profile (what each unit's own
tuning images change) and the per-cell effect sizes are kept as descriptive columns.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats
from threadpoolctl import threadpool_limits

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


SENSITIVITY_MEASURES = ("area", "luminance", "red_green", "yellow_blue", "entropy", "width",
                        "height", "eccentricity")
"""The measures of a part's own appearance: what changes when the part itself changes. A
part's position, angle and motion are left out of the sensitivity profile: they also change
when an attached part moves (a longer body carries the legs, tail and head along), and with
them the profile credited the parts around the one a unit reads (docs/tuning.md)."""

SENSITIVITY_RIDGE = 0.3
"""Ridge penalty of the sensitivity regression, as a fraction of the number of probes (the
design's columns are standardized, so its Gram matrix has the probe count on its diagonal)."""

RANDOM_READOUTS = 4000
"""Random read-out directions in r-space whose sensitivity profiles are the specificity test's
null: the p-values cannot go below 1 / (1 + RANDOM_READOUTS)."""


def probe_design(null_means: np.ndarray, mean0: np.ndarray, sd0: np.ndarray,
                 parts: Sequence[int],
                 measures: Sequence[str] = SENSITIVITY_MEASURES) -> tuple[np.ndarray, np.ndarray]:
    """The null directions as probes of what changes in the image: their mean changes of the
    ``parts`` (indices into the part axis) and ``measures`` as effect sizes against the null,
    [K, P_all, M'] -> (design [K, F] with standardized columns, part [F]: the position in
    ``parts`` of each column's part). A part not measured in a probe counts as unchanged; a
    column that no probe varies is dropped."""
    cols = [ALL_MEASURES.index(m) for m in measures]
    effect = ((null_means - mean0) / sd0)[:, list(parts)][..., cols]  # [K, P, M]
    k, n_parts, n_measures = effect.shape
    x = np.nan_to_num(effect.reshape(k, n_parts * n_measures))
    part = np.repeat(np.arange(n_parts), n_measures)
    sd = x.std(0)
    keep = sd > 0
    return (x[:, keep] - x[:, keep].mean(0)) / sd[keep], part[keep]


def sensitivity_profiles(design: np.ndarray, column_part: np.ndarray, n_parts: int,
                         responses: np.ndarray, readouts: np.ndarray | None = None,
                         ridge: float = SENSITIVITY_RIDGE) -> np.ndarray:
    """What each read-out responds to, part by part: [C, n_parts].

    design [K, F] and column_part [F] from ``probe_design``; responses [K, C]: how much each of
    C read-outs (a unit, or a direction in r-space) of the re-encoded tuned images changed along
    each probe; with ``readouts`` [C, R]: the profiles of those R directions in the space of
    the C read-outs instead (their responses are responses @ readouts). A ridge regression
    (penalty ``ridge`` times K) of the responses on the probes' part changes gives every
    (part, measure) a coefficient; a part's entry is the sum of its squared coefficients.
    Random probes change several parts at once, and the regression credits each part with the
    response it explains beyond the others: the data-driven counterpart of moving one part's
    factors at a time (the toy world's ground truth).

    Computed on one BLAS thread: a multi-threaded product sums in another order, and the same
    run on a Dask or Ray worker would then write tables that differ in the last bits.
    """
    k = len(design)
    with threadpool_limits(limits=1):
        if readouts is not None:
            responses = responses @ readouts
        gram = design.T @ design
        gram[np.diag_indices_from(gram)] += ridge * k
        coef = np.linalg.solve(gram, design.T @ (responses - responses.mean(0)))  # [F, C]
    out = np.zeros((responses.shape[1], n_parts))
    np.add.at(out.T, column_part, coef**2)
    return out


def random_readouts(dim: int, count: int = RANDOM_READOUTS, seed: int = 0) -> np.ndarray:
    """``count`` random unit-norm directions in r-space (in units of the training SDs), [dim,
    count]: read-outs that mix every unit, the null of the specificity test."""
    n = np.random.default_rng(seed).standard_normal((dim, count))
    return n / np.linalg.norm(n, axis=0)


def specificity_p(stat: np.ndarray, null_stat: np.ndarray) -> np.ndarray:
    """One-sided permutation p-value of each unit's statistic among the null's:
    (1 + #{null >= stat}) / (1 + K). stat [U], null_stat [K] -> [U] (NaN where stat is NaN).
    The floor 1 / (1 + K) is why the null is many cheap random read-outs, not a few rendered
    directions (docs/tuning.md)."""
    null = np.sort(null_stat[np.isfinite(null_stat)])
    above = len(null) - np.searchsorted(null, stat, side="left")
    return np.where(np.isfinite(stat), (1.0 + above) / (1.0 + len(null)), np.nan)


def significance_line(null_concentration: np.ndarray, p: np.ndarray, q: np.ndarray,
                      alpha: float = 0.05) -> float:
    """The share a profile's top part must exceed to be significant in this run, the same for
    every part: the test drawn on the bars. null_concentration [R]: the random read-outs'; p, q
    [U]: the units' ``specificity_p`` and ``specificity_q``. With p* the largest p with q <
    alpha (else alpha / (1 + alpha) / U, what one unit would need), a unit is significant
    exactly when at most n = (R + 1) p* - 1 read-outs reach its concentration: when it exceeds
    the (n + 1)-th largest read-out's. 1 where no p can pass (p* < 1 / (R + 1))."""
    null = np.sort(null_concentration[np.isfinite(null_concentration)])[::-1]
    significant = np.asarray(q) < alpha
    p_star = (float(np.nanmax(np.asarray(p)[significant])) if significant.any()
              else alpha / (1 + alpha) / max(len(p), 1))
    n = int(np.floor(p_star * (len(null) + 1) + 1e-9)) - 1
    if n < 0:
        return 1.0
    return float(null[n]) if n < len(null) else 0.0


def _logit_shares(scores: np.ndarray) -> np.ndarray:
    """Each part's share of a profile on the logit scale, [K, P] -> [K, P] (NaN rows for an
    all-zero profile). Shares live in (0, 1) and are skewed; the logit makes their spread
    across directions comparable between parts that get 5% and parts that get 50%."""
    total = scores.sum(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(total > 0, scores / np.where(total > 0, total, 1), np.nan)
    share = np.clip(share, 1e-6, 1 - 1e-6)
    return np.log(share / (1 - share))


def share_z(scores: np.ndarray, null_scores: np.ndarray) -> np.ndarray:
    """Every part's share of a profile as a z-score among the null read-outs' shares of that
    part, on the logit scale (``_logit_shares``): how much more the profile favours the part
    than random read-outs favour it. scores [U, P], null_scores [K, P] -> z [U, P] (NaN rows
    for all-zero profiles); descriptive, the specificity test is ``specificity_p``."""
    null = _logit_shares(null_scores)
    null = null[np.isfinite(null).all(1)]
    with np.errstate(invalid="ignore", divide="ignore"):  # a part no read-out varies
        return (_logit_shares(scores) - null.mean(0)) / null.std(0, ddof=1)


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
unit: a candidate, not a finding) and ``none`` (no more concentrated than random read-outs)."""


def verdicts(p: np.ndarray, q: np.ndarray, threshold: float = 0.05) -> np.ndarray:
    """``VERDICTS`` per unit from its specificity p- and q-value."""
    return np.where(q < threshold, VERDICTS[0], np.where(p < threshold, VERDICTS[1],
                                                         VERDICTS[2])).astype(object)


WEAK_LABEL_RATIO = 1.5
"""A unit that is not significant has a weak label (``unit_summary``'s ``weak_label``) when
random read-outs make its top part theirs at least this many times as often as chance (1 /
parts), or when its verdict is ``none``: its profile is no more concentrated than random
read-outs', so its top part is only the largest of near-equal parts (on the ordinary toy
classifier, docs/tuning.md)."""


def null_top_shares(null_scores: np.ndarray) -> np.ndarray:
    """The share of the null directions whose top part is each part: [K, P] -> [P]."""
    finite = np.isfinite(null_scores).any(1)
    top = np.nanargmax(np.where(np.isnan(null_scores[finite]), -1, null_scores[finite]), axis=1)
    return np.bincount(top, minlength=null_scores.shape[1]) / max(int(finite.sum()), 1)


def unit_summary(
    units: Sequence[int] | np.ndarray, scores: np.ndarray, null_scores: np.ndarray,
    parts: Sequence[str], tuning_scores: np.ndarray, q_threshold: float = 0.05,
) -> pd.DataFrame:
    """One row per unit: which part it responds to, and is that specific?

    scores: [U, P] the units' sensitivity profiles (``sensitivity_profiles``) over the
    foreground ``parts`` (background left out: it changes whenever a foreground part moves);
    null_scores: [R, P] the same for random read-outs (``random_readouts``); tuning_scores:
    [U, P] what each unit's own tuning changes (``part_scores`` of its tuning, the pictures).
    Columns: unit, top_part, concentration (the top part's share of the profile),
    specificity_p (``specificity_p`` of the concentration among the random read-outs'),
    specificity_q (``two_stage_q`` over units), significant (q < q_threshold), verdict
    (``verdicts``), null_top_share (the share of the random read-outs whose top part is the
    unit's: ``null_top_shares``), weak_label (not significant, and either null_top_share at
    least ``WEAK_LABEL_RATIO`` / parts or verdict ``none``), selective (concentration in the
    top quarter of all units), tuning_strength (the tuning profile's sum), score_<part>,
    tuning_<part>.
    """
    top_index = np.nanargmax(np.where(np.isnan(scores), -1, scores), axis=1)
    conc = concentration(scores)
    p = specificity_p(conc, concentration(null_scores))
    q = two_stage_q(p, q_threshold)
    out = pd.DataFrame({
        "unit": np.asarray(units),
        "top_part": np.asarray(parts, dtype=object)[top_index],
        "concentration": conc,
        "specificity_p": p,
        "specificity_q": q,
    })
    out["significant"] = out["specificity_q"] < q_threshold
    out["verdict"] = verdicts(p, q, q_threshold)
    out["null_top_share"] = null_top_shares(null_scores)[top_index]
    out["weak_label"] = ~out["significant"] & (
        (out["null_top_share"] >= WEAK_LABEL_RATIO / len(parts)) | (out["verdict"] == "none"))
    out["selective"] = out["concentration"] >= np.nanquantile(conc, 0.75)
    out["tuning_strength"] = tuning_scores.sum(1)
    for j, part in enumerate(parts):
        out[f"score_{part}"] = scores[:, j]
    for j, part in enumerate(parts):
        out[f"tuning_{part}"] = tuning_scores[:, j]
    return out


def unit_parts_table(summary: pd.DataFrame, null_scores: np.ndarray,
                     parts: Sequence[str]) -> pd.DataFrame:
    """The per-part columns of ``unit_summary`` in long format, one row per (unit, part), so
    that the schema does not depend on the part list. Columns: unit, part, score (the
    sensitivity profile's ``score_<part>``), share (score / the profile's sum), z (``share_z``:
    the share against the random read-outs' shares of the same part, descriptive), top (the
    unit's top part), q (the unit's ``specificity_q`` on its top part's row, NaN on the
    others: the test asks whether the top part's share, whatever the part, exceeds a random
    read-out's)."""
    scores = summary[[f"score_{p}" for p in parts]].to_numpy(dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = scores / scores.sum(1, keepdims=True)
    z = share_z(scores, null_scores)
    top = summary["top_part"].to_numpy()[:, None] == np.asarray(parts, dtype=object)[None, :]
    q = np.where(top, summary["specificity_q"].to_numpy()[:, None], np.nan)
    n_units, n_parts = scores.shape
    return pd.DataFrame({
        "unit": np.repeat(summary["unit"].to_numpy(), n_parts),
        "part": np.tile(np.asarray(parts, dtype=object), n_units),
        "score": scores.ravel(), "share": share.ravel(), "z": z.ravel(),
        "top": top.ravel(), "q": q.ravel(),
    })
