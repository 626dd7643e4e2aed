"""Toy-world task: compare the pipeline's selective parts with the classifier's ground truth.

The ground truth is interventional (``toyworld.ground_truth``): every part factor moved by one
within-species SD, renderer -> classifier, and which part moves each unit. A toy classifier
weight file (the bundled one, or ``classifier.weights`` written by ``linkstyle toy
train-classifier``) stores it. Any other classifier of the toy species (a weight file without
it, ``classifier.kind: python``) gets it measured here, once, and cached as a
``ground_truth`` artifact keyed by the classifier's weights.
"""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd
from prefect import get_run_logger, task
from prefect.exceptions import MissingContextError

from linkstyle_core.config import AnalysisConfig
from linkstyle_core.toyworld.ground_truth import (
    MIXED_CONCENTRATION,
    SELECTIVE_CONCENTRATION,
    ground_truth_table,
    measure_ground_truth,
)
from linkstyle_core.validation import part_table, validate
from storage import ArtifactStore, content_key
from tasks.caching import GPU_TAG, by_content_key
from tasks.context import Models, as_config, models_for, store_for

STAGE = "validation"
VERSION = "5"
PARAMS = {"selective_concentration": SELECTIVE_CONCENTRATION,
          "mixed_concentration": MIXED_CONCENTRATION}
GROUND_TRUTH_STAGE = "ground_truth"
GROUND_TRUTH_VERSION = "1"
GROUND_TRUTH_PARAMS = {"n_per_class": 50, "seed": 4242}  # as stored with the bundled weights


def validation_key(selectivity_key: str, models: Models) -> str:
    return content_key(STAGE, VERSION, PARAMS,
                       {"selectivity": selectivity_key, "classifier": models.classifier_key})


def ground_truth_key(models: Models) -> str:
    return content_key(GROUND_TRUTH_STAGE, GROUND_TRUTH_VERSION, GROUND_TRUTH_PARAMS,
                       {"classifier": models.classifier_key})


def stored_ground_truth(config: AnalysisConfig) -> dict[str, Any] | None:
    """The ground truth stored in the toy classifier's weight file, or None (another kind of
    classifier, or a weight file without one)."""
    from linkstyle_core.models.toy import toy_classifier_file
    from linkstyle_core.toyworld.checkpoint import read_ground_truth

    if config.classifier.kind != "toy":
        return None
    try:
        return read_ground_truth(toy_classifier_file(config.classifier.weights))
    except KeyError:
        return None


def ground_truth(config: AnalysisConfig, models: Models,
                 store: ArtifactStore) -> tuple[pd.DataFrame, str]:
    """(the ground-truth table of every unit, where it came from: ``weights`` or the key of
    the ``ground_truth`` artifact it was measured into)."""
    stored = stored_ground_truth(config)
    if stored is not None and len(stored["gt_part"]) == models.classifier.feature_dim:
        return ground_truth_table(stored), "weights"
    key = ground_truth_key(models)
    if not store.exists(GROUND_TRUTH_STAGE, key):
        try:
            logger: Any = get_run_logger()
        except MissingContextError:         # called outside a flow, e.g. by a benchmark
            logger = logging.getLogger("linkstyle.validate")
        logger.info("measuring the classifier's ground truth by intervention "
                    "(%d units; cached for later runs)", models.classifier.feature_dim)
        measured = measure_ground_truth(models.classifier, **GROUND_TRUTH_PARAMS)
        with store.writer(GROUND_TRUTH_STAGE, key, params=GROUND_TRUTH_PARAMS,
                          code_version=GROUND_TRUTH_VERSION, inputs={}) as out:
            out.write_table("units", ground_truth_table(measured))
            out.info["classifier"] = models.classifier_key
    return store.open(GROUND_TRUTH_STAGE, key).table("units"), key


@task(name="validation", cache_key_fn=by_content_key, persist_result=True,
      task_run_name="validation", tags={GPU_TAG})
def validate_units(config: dict[str, Any], key: str, selectivity_key: str) -> dict[str, Any]:
    cfg = as_config(config)
    store = store_for(cfg)
    if store.exists(STAGE, key):
        return {"stage": STAGE, "key": key, "computed": False}
    models = models_for(cfg)
    selectivity = store.open("selectivity", selectivity_key)
    units = selectivity.table("units")
    truth, source = ground_truth(cfg, models, store)
    truth = truth[truth["unit"].isin(units["unit"])].copy()
    truth["evaluated"] = truth["gt_sensitivity"] > 0
    parts = list(selectivity.info["scored_parts"])
    metrics, table = validate(units, truth, parts, SELECTIVE_CONCENTRATION, MIXED_CONCENTRATION)
    with store.writer(STAGE, key, params=PARAMS, code_version=VERSION,
                      inputs={"selectivity": selectivity_key,
                              "classifier": models.classifier_key}) as out:
        out.write_table("metrics", pd.DataFrame([metrics]))
        out.write_table("units", table)
        out.write_table("parts", part_table(table, parts))
        out.info.update(metrics)
        out.info["ground_truth"] = "interventional"
        out.info["ground_truth_source"] = source
    return {"stage": STAGE, "key": key, "computed": True}
