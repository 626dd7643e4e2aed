"""Toy-world task: compare the pipeline's selective parts with the renderer's ground truth."""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch
from prefect import task

from linkstyle_core.render import encode
from linkstyle_core.validation import (
    TOY_FACTOR_PARTS,
    ground_truth_parts,
    validate,
    within_class_correlation,
)
from storage import content_key
from tasks.caching import by_content_key
from tasks.context import Models, as_config, models_for, store_for

STAGE = "validation"
VERSION = "2"
IMAGES_PER_CLASS, SEED, MIN_ABS_CORR = 400, 2024, 0.3
PARAMS = {"images_per_class": IMAGES_PER_CLASS, "seed": SEED, "min_abs_corr": MIN_ABS_CORR}


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


@task(name="validation", cache_key_fn=by_content_key, persist_result=True,
      task_run_name="validation")
def validate_units(config: dict[str, Any], key: str, selectivity_key: str) -> dict[str, Any]:
    cfg = as_config(config)
    if cfg.generator.kind != "toy" or cfg.classifier.kind != "toy":
        raise ValueError("ground-truth validation needs the toy world (generator.kind and "
                         "classifier.kind 'toy'): only there are the true factors known")
    store = store_for(cfg)
    if store.exists(STAGE, key):
        return {"stage": STAGE, "key": key, "computed": False}
    from linkstyle_core.toyworld.renderer import FACTORS

    models = models_for(cfg)
    r, factors, species = _renderer_activations(models, cfg.runtime.batch_size)
    selectivity = store.open("selectivity", selectivity_key)
    units = selectivity.table("units")
    corr = within_class_correlation(r[:, units["unit"].to_numpy().copy()], factors, species)
    truth = ground_truth_parts(corr, FACTORS, TOY_FACTOR_PARTS, units["unit"].to_list())
    parts = [p for p in selectivity.info["parts"] if p in set(TOY_FACTOR_PARTS.values())]
    metrics, table = validate(units, truth, parts, MIN_ABS_CORR)
    with store.writer(STAGE, key, params=PARAMS, code_version=VERSION,
                      inputs={"selectivity": selectivity_key,
                              "classifier": models.classifier_key}) as out:
        out.write_table("metrics", pd.DataFrame([metrics]))
        out.write_table("units", table)
        out.info.update(metrics)
    return {"stage": STAGE, "key": key, "computed": True}
