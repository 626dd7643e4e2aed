"""Toy-world task: compare the pipeline's selective parts with the toy world's ground truth.

The ground truth is interventional and ships with the bundled classifier: every part factor
moved by one within-species SD, renderer -> classifier (``toyworld.ground_truth``). A toy
classifier checkpoint without it (an older weight file) falls back to the correlation of each
unit with the factors on renderer images.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch
from prefect import task

from linkstyle_core.render import encode
from linkstyle_core.toyworld.ground_truth import SELECTIVE_CONCENTRATION
from linkstyle_core.validation import (
    ground_truth_parts,
    validate,
    within_class_correlation,
)
from storage import content_key
from tasks.caching import GPU_TAG, by_content_key
from tasks.context import Models, as_config, models_for, store_for

STAGE = "validation"
VERSION = "3"
IMAGES_PER_CLASS, SEED, MIN_ABS_CORR = 400, 2024, 0.3
PARAMS = {"images_per_class": IMAGES_PER_CLASS, "seed": SEED, "min_abs_corr": MIN_ABS_CORR,
          "selective_concentration": SELECTIVE_CONCENTRATION}


def validation_key(selectivity_key: str, models: Models) -> str:
    return content_key(STAGE, VERSION, PARAMS,
                       {"selectivity": selectivity_key, "classifier": models.classifier_key})


@torch.no_grad()
def _renderer_activations(models: Models, batch: int) -> tuple[torch.Tensor, ...]:
    from linkstyle_core.toyworld.renderer import SPECIES, render, sample_factors

    g = torch.Generator().manual_seed(SEED)
    species = torch.arange(len(SPECIES)).repeat_interleave(IMAGES_PER_CLASS)
    factors = sample_factors(species, g)
    rs = []
    for i in range(0, len(species), batch):
        images = render(factors[i:i + batch]).images.to(models.device)
        rs.append(encode(models.classifier, images)[0].cpu())
    return torch.cat(rs), factors, species


def _truth(models: Models, batch: int, units: list[int]) -> tuple[pd.DataFrame, str,
                                                                    dict[str, str]]:
    """(ground truth per unit, its kind, factor -> part)."""
    from linkstyle_core.toyworld.ground_truth import load_ground_truth
    from linkstyle_core.toyworld.renderer import FACTOR_PARTS, FACTORS

    try:
        truth = load_ground_truth()
    except (KeyError, ValueError):  # a checkpoint without the interventional ground truth
        truth = None
    if truth is not None and len(truth) == models.classifier.feature_dim:
        truth = truth[truth["unit"].isin(units)].copy()
        truth["evaluated"] = truth["gt_sensitivity"] > 0
        return truth, "interventional", FACTOR_PARTS
    r, factors, species = _renderer_activations(models, batch)
    corr = within_class_correlation(r[:, units], factors, species)
    return (ground_truth_parts(corr, FACTORS, FACTOR_PARTS, units, MIN_ABS_CORR),
            "correlational", FACTOR_PARTS)


@task(name="validation", cache_key_fn=by_content_key, persist_result=True,
      task_run_name="validation", tags={GPU_TAG})
def validate_units(config: dict[str, Any], key: str, selectivity_key: str) -> dict[str, Any]:
    cfg = as_config(config)
    if cfg.generator.kind != "toy" or cfg.classifier.kind != "toy":
        raise ValueError("ground-truth validation needs the toy world (generator.kind and "
                         "classifier.kind 'toy'): only there are the true factors known")
    store = store_for(cfg)
    if store.exists(STAGE, key):
        return {"stage": STAGE, "key": key, "computed": False}
    models = models_for(cfg)
    selectivity = store.open("selectivity", selectivity_key)
    units = selectivity.table("units")
    truth, kind, factor_parts = _truth(models, cfg.runtime.batch_size, units["unit"].tolist())
    parts = [p for p in selectivity.info["scored_parts"] if p in set(factor_parts.values())]
    metrics, table = validate(units, truth, parts, SELECTIVE_CONCENTRATION)
    with store.writer(STAGE, key, params=PARAMS, code_version=VERSION,
                      inputs={"selectivity": selectivity_key,
                              "classifier": models.classifier_key}) as out:
        out.write_table("metrics", pd.DataFrame([metrics]))
        out.write_table("units", table)
        out.info.update(metrics)
        out.info["ground_truth"] = kind
    return {"stage": STAGE, "key": key, "computed": True}
