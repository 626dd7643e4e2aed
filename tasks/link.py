"""Stage 2 task: fit the link on the training pairs and measure it on held-out pairs."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd
import torch
from prefect import task

from linkstyle_core.config import AnalysisConfig
from linkstyle_core.link import LinearLink
from linkstyle_core.metrics import closed_loop, mse, order_agreement, r2_scores
from linkstyle_core.models.registry import check_compatible
from storage import Artifact, content_key
from tasks.caching import GPU_TAG, by_content_key
from tasks.context import Models, as_config, models_for, store_for

STAGE = "link"
VERSION = "1"


def link_params(config: AnalysisConfig) -> dict[str, Any]:
    return {**config.link.model_dump(), "precision": config.runtime.precision}


def link_key(config: AnalysisConfig, models: Models, paired_keys: dict[str, str]) -> str:
    return content_key(STAGE, VERSION, link_params(config), {**paired_keys, **models.keys})


def load_link(artifact: Artifact) -> LinearLink:
    """The fitted link stored in a ``link`` artifact."""
    params = artifact.manifest.params
    return LinearLink.from_arrays(artifact.load("coef"), artifact.load("intercept"),
                                  type=params["type"], alpha=params["alpha"],
                                  l1_ratio=params["l1_ratio"])


def _pairs(artifact: Artifact) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (torch.from_numpy(artifact.load("r")), torch.from_numpy(artifact.load("w")),
            torch.from_numpy(artifact.load("label")))


@task(name="link", cache_key_fn=by_content_key, persist_result=True, task_run_name="link",
      tags={GPU_TAG})
def fit_link(config: dict[str, Any], key: str, train_key: str, test_key: str) -> dict[str, Any]:
    """Fit w ~ A r + b; write coef/intercept, a metrics table and per-dimension R²."""
    cfg = as_config(config)
    store = store_for(cfg)
    if store.exists(STAGE, key):
        return {"stage": STAGE, "key": key, "computed": False}
    models = models_for(cfg)
    r_train, w_train, y_train = _pairs(store.open("paired", train_key))
    r_test, w_test, y_test = _pairs(store.open("paired", test_key))
    check_compatible(models.generator, models.classifier, paired_r_dim=r_train.shape[1],
                     paired_w_dim=w_train.shape[1])
    t0 = time.perf_counter()
    link = LinearLink(cfg.link.type, cfg.link.alpha, cfg.link.l1_ratio, models.device)
    link.fit(r_train, w_train)
    fit_s = time.perf_counter() - t0

    rows, per_dim = [], []
    for split, r, w, y in (("train", r_train, w_train, y_train), ("test", r_test, w_test, y_test)):
        w_hat = link.predict(r)
        r2, r2_dims = r2_scores(w, w_hat)
        row = {"split": split, "n": len(y), "r2": r2, "mse": mse(w, w_hat),
               **order_agreement(r, w, y, seed=cfg.data.seed)}
        if split == "test":
            row.update(closed_loop(models.generator, models.classifier, link, r, y,
                                   cfg.runtime.batch_size, cfg.runtime.precision, models.device))
        rows.append(row)
        per_dim.append(pd.DataFrame({"split": split, "dim": np.arange(len(r2_dims)),
                                     "r2": r2_dims}))
    metrics = pd.DataFrame(rows)
    with store.writer(STAGE, key, params=link_params(cfg),
                      inputs={"train": train_key, "test": test_key, **models.keys},
                      code_version=VERSION) as out:
        out.write_array("coef", link.coef_.numpy())
        out.write_array("intercept", link.intercept_.numpy())
        out.write_table("metrics", metrics)
        out.write_table("r2_per_dim", pd.concat(per_dim, ignore_index=True))
        out.timings["fit_s"] = round(fit_s, 4)
        out.timings["compute_s"] = round(time.perf_counter() - t0, 3)
    return {"stage": STAGE, "key": key, "computed": True}
