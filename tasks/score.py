"""Stage 4 task: the selectivity table and per-unit summary, from tuned units and the null."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from prefect import task

from linkstyle_core.selectivity import (
    closed_loop_spearman,
    first_last_change,
    selectivity_table,
    unit_summary,
)
from storage import content_key
from tasks.caching import by_content_key
from tasks.context import as_config, store_for

STAGE = "selectivity"
VERSION = "3"


def selectivity_key(tune_key: str, null_key: str) -> str:
    return content_key(STAGE, VERSION, {}, {"tune": tune_key, "null": null_key})


@task(name="selectivity", cache_key_fn=by_content_key, persist_result=True,
      task_run_name="selectivity")
def score_units(config: dict[str, Any], key: str, tune_key: str, null_key: str) -> dict:
    """Per (unit, part, measure) effect sizes against the null; per-unit top part."""
    cfg = as_config(config)
    store = store_for(cfg)
    if store.exists(STAGE, key):
        return {"stage": STAGE, "key": key, "computed": False}
    tuned, null = store.open("tune", tune_key), store.open("null", null_key)
    parts = null.info["parts"]
    units = tuned.load("unit")
    change = first_last_change(tuned.load("measures"), tuned.load("motion"))
    null_change = first_last_change(null.load("measures"), null.load("motion"))
    table = selectivity_table(units, change, null_change, parts)
    summary = unit_summary(table, parts)

    # closed-loop response: does the image-domain unit follow the value it was set to?
    set_value, response = tuned.load("set_value"), tuned.load("response")
    logit, top1 = tuned.load("logit_change"), tuned.load("top1")
    sample_class = tuned.shard(tuned.shards[0]).load("sample_class")
    extra = pd.DataFrame({
        "unit": units,
        "closed_loop_spearman": closed_loop_spearman(set_value, response),
        "response_slope": _slopes(set_value, response),
        "class_logit_change": (logit[:, :, -1] - logit[:, :, 0]).mean(1),
        "flip_rate": (top1[:, :, -1] != sample_class[None, :]).mean(1),
    })
    summary = summary.merge(extra, on="unit", how="left")
    with store.writer(STAGE, key, params={}, inputs={"tune": tune_key, "null": null_key},
                      code_version=VERSION) as out:
        out.write_table("selectivity", table)
        out.write_table("units", summary)
        out.info["parts"] = parts
    return {"stage": STAGE, "key": key, "computed": True}


def _slopes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least-squares slope of re-encoded on set value per unit ([U, Ns, S] -> [U])."""
    x = x.reshape(len(x), -1).astype(np.float64)
    y = y.reshape(len(y), -1).astype(np.float64)
    xc = x - x.mean(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (xc * (y - y.mean(1, keepdims=True))).sum(1) / (xc**2).sum(1)
