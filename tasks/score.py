"""Stage 4 task: the selectivity table and per-unit summary, from tuned units and the null."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from prefect import get_run_logger, task

from linkstyle_core.config import AnalysisConfig
from linkstyle_core.selectivity import (
    closed_loop_spearman,
    concentration,
    direction_means,
    first_last_change,
    mask_small_parts,
    null_reference,
    part_scores,
    probe_design,
    random_readouts,
    selectivity_table,
    sensitivity_profiles,
    unit_parts_table,
    unit_summary,
)
from storage import Artifact, content_key
from tasks.caching import by_content_key
from tasks.context import as_config, store_for

STAGE = "selectivity"
VERSION = "11"
MIN_MEDIAN_GAIN = 0.5  # below this the re-encoded units do not follow their tuning
MIN_MEDIAN_PIXEL_CHANGE = 1 / 255  # below one grey level the images do not visibly change


def selectivity_params(config: AnalysisConfig) -> dict[str, Any]:
    return {"min_part_area": config.tuning.min_part_area}


def selectivity_key(config: AnalysisConfig, tune_key: str, null_key: str) -> str:
    return content_key(STAGE, VERSION, selectivity_params(config),
                       {"tune": tune_key, "null": null_key})


def stored_changes(art: Artifact, min_area: float) -> np.ndarray:
    """First -> last change [K, Ns, P, M'], parts below ``min_area`` in a base image masked."""
    change = first_last_change(art.load("measures"), art.load("motion"))
    return mask_small_parts(change, art.load_common("base_area"), min_area)


def tuning_warnings(units: pd.DataFrame) -> list[str]:
    """Loud messages when the tuning does not move its units (DESIGN.md)."""
    out = []
    gain = float(units["closed_loop_gain"].median())
    pixel = float(units["pixel_change"].median())
    if not gain >= MIN_MEDIAN_GAIN:
        out.append(f"the median closed-loop gain is {gain:.3f} (< {MIN_MEDIAN_GAIN}): re-encoded "
                   "units barely follow the values they were set to, so the part scores are "
                   "mostly noise; use tuning.step: calibrated")
    if not pixel >= MIN_MEDIAN_PIXEL_CHANGE:
        out.append(f"the median pixel change is {pixel:.5f} (< 1/255): the tuning images do not "
                   "visibly change; use tuning.step: calibrated or a larger tuning range")
    return out


@task(name="selectivity", cache_key_fn=by_content_key, persist_result=True,
      task_run_name="selectivity")
def score_units(config: dict[str, Any], key: str, tune_key: str, null_key: str) -> dict:
    """Sensitivity and tuning profiles, the per-unit specificity test, closed-loop figures."""
    cfg = as_config(config)
    store = store_for(cfg)
    if store.exists(STAGE, key):
        return {"stage": STAGE, "key": key, "computed": False}
    tuned, null = store.open("tune", tune_key), store.open("null", null_key)
    all_parts = null.info["parts"]
    fg = [j for j, p in enumerate(all_parts) if p != "background"]
    parts = [all_parts[j] for j in fg]
    units = tuned.load("unit")
    min_area = cfg.tuning.min_part_area
    change = stored_changes(tuned, min_area)
    null_change = stored_changes(null, min_area)
    table = selectivity_table(units, change, null_change, all_parts)

    null_means = direction_means(null_change)
    mean0, sd0 = null_reference(null_means)
    # what each unit's tuning changes: the pictures' profile, descriptive
    tuning_scores = part_scores((direction_means(change) - mean0) / sd0)[:, fg]
    # what each unit responds to: regressed on the null probes' part changes
    design, column_part = probe_design(null_means, mean0, sd0, fg)
    responses = null.load("reencoded_change")  # [K, D], in training SDs
    scores = sensitivity_profiles(design, column_part, len(fg), responses[:, units])
    readouts = random_readouts(responses.shape[1], seed=cfg.tuning.seed)
    null_scores = sensitivity_profiles(design, column_part, len(fg), responses, readouts)
    summary = unit_summary(units, scores, null_scores, parts, tuning_scores)

    set_value, response = tuned.load("set_value"), tuned.load("response")
    logit, top1 = tuned.load("logit_change"), tuned.load("top1")
    sample_class = tuned.load_common("sample_class")
    moved = np.abs(tuned.load("reencoded_change"))  # [U, D], in training SDs
    own = moved[np.arange(len(units)), units]
    summary = summary.merge(pd.DataFrame({
        "unit": units,
        "closed_loop_gain": _slopes(set_value, response),
        "closed_loop_spearman": closed_loop_spearman(set_value, response),
        "closed_loop_rank": 1 + (moved > own[:, None]).sum(1),
        "pixel_change": tuned.load("pixel_change").mean(1),
        "label_change": tuned.load("label_change").mean(1),
        "step_scale": tuned.load("step_scale"),
        "latent_step": tuned.load("latent_step"),
        "gain_measured": tuned.load("gain_measured"),
        "class_logit_change": (logit[:, :, -1] - logit[:, :, 0]).mean(1),
        "flip_rate": (top1[:, :, -1] != sample_class[None, :]).mean(1),
    }), on="unit", how="left")
    warnings = tuning_warnings(summary)
    for message in warnings:
        get_run_logger().warning("tuning does not move the units: %s", message)
    with store.writer(STAGE, key, params=selectivity_params(cfg),
                      inputs={"tune": tune_key, "null": null_key}, code_version=VERSION) as out:
        out.write_table("selectivity", table)
        out.write_table("units", summary)
        out.write_table("unit_parts", unit_parts_table(summary, null_scores, parts))
        out.write_table("null_profiles", pd.DataFrame(
            {"readout": np.arange(len(null_scores)), "concentration": concentration(null_scores),
             **{f"score_{p}": null_scores[:, j] for j, p in enumerate(parts)}}))
        out.info.update({
            "parts": all_parts, "scored_parts": parts, "warnings": warnings,
            "median_closed_loop_gain": float(summary["closed_loop_gain"].median()),
            "median_pixel_change": float(summary["pixel_change"].median()),
            "median_label_change": float(summary["label_change"].median()),
            "significant_units": int(summary["significant"].sum()),
            "null_directions": len(design), "random_readouts": len(null_scores),
        })
    return {"stage": STAGE, "key": key, "computed": True}


def _slopes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least-squares slope of re-encoded on set value per direction ([K, Ns, S] -> [K])."""
    x = x.reshape(len(x), -1).astype(np.float64)
    y = y.reshape(len(y), -1).astype(np.float64)
    xc = x - x.mean(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (xc * (y - y.mean(1, keepdims=True))).sum(1) / (xc**2).sum(1)
