"""Ground-truth validation of the selectivity pipeline on the toy world.

Every toy image comes with the factors it was rendered from, so each classifier unit has a
ground-truth part, measured by intervention (each part factor moved, renderer -> classifier;
``toyworld.ground_truth``). A unit the pipeline calls "ear-selective" should be one whose
activation really responds to the ear factors, and a unit it calls significant should be
part-selective at all.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats


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


def _share(numerator: pd.Series, denominator: pd.Series) -> float:
    """The share of the rows selected by ``denominator`` on which ``numerator`` holds (both
    boolean), NaN when it selects none."""
    n = int(denominator.sum())
    return float(numerator[denominator].sum() / n) if n else float("nan")


def significance_metrics(table: pd.DataFrame, suffix: str = "") -> dict[str, float]:
    """What the significant units are, on rows of ``validate``'s per-unit table (a part's rows
    for per-part figures). ``wrong_share_significant``: among significant units, the share
    whose top part is not the ground-truth part; ``not_selective_share_significant``: the
    share that is mixed by ground truth (concentration below ``mixed_concentration``);
    ``power_selective``: among the part-selective units (ground truth), the share called
    significant with the right part; counts ``n_significant``,
    ``n_significant_not_selective`` and ``n_selective``."""
    sig, sel = table["significant"].astype(bool), table["gt_selective"].astype(bool)
    return {
        f"n_significant{suffix}": float(sig.sum()),
        f"n_significant_not_selective{suffix}": float((sig & table["gt_mixed"]).sum()),
        f"n_selective{suffix}": float(sel.sum()),
        f"wrong_share_significant{suffix}": _share(~table["match"], sig),
        f"not_selective_share_significant{suffix}": _share(table["gt_mixed"], sig),
        f"power_selective{suffix}": _share(sig & table["match"], sel),
    }


def part_table(table: pd.DataFrame, parts: Sequence[str]) -> pd.DataFrame:
    """The verdict part by part with the counts behind every share, from ``validate``'s
    per-unit table (its evaluated rows). One row per part, then ``all``:

    - ``part_selective``: units whose ground-truth part is the part and that are part-selective
      (ground-truth concentration at least the selective line); ``found``: those called
      significant with that part as their top part; ``power`` = found / part_selective;
    - ``significant``: units called significant with the part as their top part; ``wrong``:
      those whose ground-truth part is another; ``mixed``: those that are mixed by ground
      truth; ``wrong_share`` and ``mixed_share``: their shares of ``significant``.

    Shares are NaN where their count is 0."""
    rows = table[table["evaluated"]]
    sig, sel = rows["significant"].astype(bool), rows["gt_selective"].astype(bool)
    right, mixed = rows["match"].astype(bool), rows["gt_mixed"].astype(bool)
    out = []
    for part in [*parts, "all"]:
        everyone = pd.Series(True, index=rows.index)
        own = everyone if part == "all" else rows["gt_part"] == part
        called = sig & (everyone if part == "all" else rows["top_part"] == part)
        counts = {"part_selective": int((own & sel).sum()),
                  "found": int((own & sel & sig & right).sum()),
                  "significant": int(called.sum()), "wrong": int((called & ~right).sum()),
                  "mixed": int((called & mixed).sum())}
        out.append({"part": part, **counts,
                    "power": _ratio(counts["found"], counts["part_selective"]),
                    "wrong_share": _ratio(counts["wrong"], counts["significant"]),
                    "mixed_share": _ratio(counts["mixed"], counts["significant"])})
    return pd.DataFrame(out)


def part_table_cells(parts: pd.DataFrame) -> pd.DataFrame:
    """``part_table`` as text cells, every share beside its counts ("20 of 24 (83%)"): what
    ``linkstyle validate`` prints and the report shows."""
    def cell(count: int, total: int) -> str:
        return f"{count} of {total}" + (f" ({count / total:.0%})" if total else "")

    return pd.DataFrame({
        "part": parts["part"],
        "power": [cell(f, n) for f, n in zip(parts["found"], parts["part_selective"],
                                             strict=True)],
        "significant": parts["significant"],
        "wrong part": [cell(w, n) for w, n in zip(parts["wrong"], parts["significant"],
                                                  strict=True)],
        "mixed": [cell(x, n) for x, n in zip(parts["mixed"], parts["significant"],
                                             strict=True)]})


def _ratio(count: int, total: int) -> float:
    return count / total if total else float("nan")


def validate(units: pd.DataFrame, truth: pd.DataFrame, parts: Sequence[str],
             selective_concentration: float = 0.6, mixed_concentration: float = 0.5,
             strong_quantile: float = 0.75) -> tuple[dict[str, float], pd.DataFrame]:
    """Compare the pipeline's top part and verdict with the ground truth.

    units: the selectivity stage's unit summary (unit, top_part, concentration, significant,
    score_<part>); truth: one row per unit with unit, gt_part, evaluated
    (whether the truth speaks about the unit at all, e.g. it responds to some part factor)
    and gt_concentration (the ground truth's own part concentration).
    Among the evaluated units, the strongly tuned ones are those whose measured selectivity is
    most concentrated (concentration at or above its ``strong_quantile``), the part-selective
    ones those whose ground-truth concentration is at least ``selective_concentration``, the
    mixed ones those below ``mixed_concentration``.
    Returns (metrics, per-unit table). Metrics: ``match_rate_all`` / ``chance_all`` over the
    evaluated units (chance: the match rate if the pipeline's top parts were shuffled among
    them), ``match_rate`` / ``chance`` over the strongly tuned, ``match_rate_selective`` /
    ``chance_selective`` over the part-selective; ``match_<part>`` (recall: the share of the
    part's ground-truth units that the pipeline gives that top part) with ``chance_<part>``
    (the share of all evaluated units it gives that top part); ``auc_<part>``: how well the
    pipeline's share of selectivity for that part ranks the part's ground-truth units above
    the others (0.5 = chance), and ``mean_auc``; ``significance_metrics`` over all evaluated
    units and, with the suffix ``_<part>``, over the units whose ground-truth part is the part
    (power, mixed units) or whose top part is (wrong parts: ``wrong_share_significant_<part>``
    is the share of the units called significant for the part that belong to another);
    ``top_share_<part>`` / ``gt_share_<part>``: how often the part is the top part and the
    ground-truth part; counts ``n_units``, ``n_strong``, ``n_mixed``,
    ``n_selective_significant``.
    """
    table = units.merge(truth, on="unit", how="inner")
    table["match"] = table["top_part"] == table["gt_part"]
    table["gt_selective"] = table["evaluated"] & (table["gt_concentration"]
                                                  >= selective_concentration)
    table["gt_mixed"] = table["evaluated"] & (table["gt_concentration"] < mixed_concentration)
    evaluated = table[table["evaluated"]]
    cut = evaluated["concentration"].quantile(strong_quantile) if len(evaluated) else np.inf
    strong = evaluated[evaluated["concentration"] >= cut]
    selective = evaluated[evaluated["gt_selective"]]
    table["strong"] = table["unit"].isin(strong["unit"])
    metrics: dict[str, float] = {
        "n_units": float(len(evaluated)), "n_strong": float(len(strong)),
        "n_mixed": float(evaluated["gt_mixed"].sum()),
        "n_selective_significant": float(selective["significant"].sum()),
        **significance_metrics(evaluated),
    }
    metrics["match_rate"], metrics["chance"] = _match(strong, parts)
    metrics["match_rate_all"], metrics["chance_all"] = _match(evaluated, parts)
    metrics["match_rate_selective"], metrics["chance_selective"] = _match(selective, parts)
    score_cols = [f"score_{part}" for part in parts if f"score_{part}" in evaluated]
    strength = evaluated[score_cols].sum(1).replace(0, np.nan)
    aucs = []
    for part in parts:
        own = evaluated["gt_part"] == part
        called = evaluated["top_part"] == part
        metrics[f"match_{part}"] = float(evaluated.loc[own, "match"].mean()) if own.any() \
            else float("nan")
        metrics[f"chance_{part}"] = float(called.mean())
        metrics[f"top_share_{part}"] = float(called.mean())
        metrics[f"gt_share_{part}"] = float(own.mean())
        per_part = significance_metrics(evaluated[own], f"_{part}")
        per_part[f"wrong_share_significant_{part}"] = significance_metrics(
            evaluated[called])["wrong_share_significant"]
        metrics.update(per_part)
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
