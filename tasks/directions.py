"""Stage 3's first tasks: each unit's activation range (its tuning span) and its direction
in W, with the reverse map w -> r that predicts the closed-loop gains."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
from prefect import task

from linkstyle_core.config import AnalysisConfig
from linkstyle_core.tuning import (
    activation_ranges,
    analytic_gains,
    centre,
    latent_directions,
    reverse_map,
)
from tasks.caching import by_content_key
from tasks.context import as_config, store_for
from tasks.link import load_link

VERSIONS = {"ranges": "1", "directions": "1"}
REVERSE_ALPHA = 1.0  # ridge of the reverse map w -> r; w_dim << training pairs, so mild


def ranges_params(config: AnalysisConfig) -> dict[str, Any]:
    return {"range": config.tuning.range, "percentiles": config.tuning.percentiles}


def directions_params(config: AnalysisConfig) -> dict[str, Any]:
    t = config.tuning
    return {"direction": t.direction, "direction_alpha": t.direction_alpha,
            "direction_centring": t.direction_centring, "reverse_alpha": REVERSE_ALPHA}


@task(name="ranges", cache_key_fn=by_content_key, persist_result=True, task_run_name="ranges")
def compute_ranges(config: dict[str, Any], key: str, train_key: str) -> dict[str, Any]:
    """Per-unit activation range on the training split (the tuning span)."""
    cfg = as_config(config)
    store = store_for(cfg)
    if store.exists("ranges", key):
        return {"stage": "ranges", "key": key, "computed": False}
    r = torch.from_numpy(store.open("paired", train_key).load("r"))
    low, high = activation_ranges(r, cfg.tuning.range, cfg.tuning.percentiles)
    table = pd.DataFrame({
        "unit": np.arange(r.shape[1]), "low": low.numpy(), "high": high.numpy(),
        "mean": r.mean(0).numpy(), "std": r.std(0).numpy(),
        "active_fraction": (r > 0).float().mean(0).numpy(),
    })
    with store.writer("ranges", key, params=ranges_params(cfg), inputs={"train": train_key},
                      code_version=VERSIONS["ranges"]) as out:
        out.write_array("low", low.numpy())
        out.write_array("high", high.numpy())
        out.write_table("ranges", table)
    return {"stage": "ranges", "key": key, "computed": True}


# -- directions ------------------------------------------------------------------------------
@task(name="directions", cache_key_fn=by_content_key, persist_result=True,
      task_run_name="directions")
def compute_directions(config: dict[str, Any], key: str, link_key: str,
                       train_key: str) -> dict[str, Any]:
    """Each unit's direction in W, the reverse map w -> r and the predicted gains."""
    cfg = as_config(config)
    store = store_for(cfg)
    if store.exists("directions", key):
        return {"stage": "directions", "key": key, "computed": False}
    train = store.open("paired", train_key)
    r, w = torch.from_numpy(train.load("r")), torch.from_numpy(train.load("w"))
    labels = torch.from_numpy(train.load("label"))
    link = load_link(store.open("link", link_key))
    dirs = latent_directions(cfg.tuning.direction, link.coef_, r, w, cfg.tuning.direction_alpha,
                             labels if cfg.tuning.direction_centring == "class" else None)
    reverse = reverse_map(r, w, REVERSE_ALPHA)
    gains = analytic_gains(reverse, dirs.T, torch.eye(r.shape[1]))
    # the typical distance of a latent from its class mean: the scale of a "large" latent step
    centred = centre(w.double(), labels)
    w_spread = float(centred.norm(dim=1).pow(2).mean().sqrt())
    with store.writer("directions", key, params=directions_params(cfg),
                      inputs={"link": link_key, "train": train_key},
                      code_version=VERSIONS["directions"]) as out:
        out.write_array("directions", dirs.numpy())
        out.write_array("reverse", reverse.numpy())
        out.write_table("directions", pd.DataFrame({
            "unit": np.arange(r.shape[1]), "direction_norm": dirs.norm(dim=0).numpy(),
            "gain_analytic": gains.numpy()}))
        out.info["w_spread"] = w_spread
    return {"stage": "directions", "key": key, "computed": True}
