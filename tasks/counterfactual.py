"""Stage 5 task: counterfactuals for a set of (origin, target) class pairs, measured."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import numpy as np
import pandas as pd
import torch
from prefect import task

from linkstyle_core.config import AnalysisConfig
from linkstyle_core.counterfactual import find_counterfactuals, pixel_distance, shift_statistics
from linkstyle_core.figures import counterfactual_figure
from linkstyle_core.progress import progress
from linkstyle_core.tuning import select_samples
from storage import content_key
from tasks.caching import GPU_TAG, by_content_key
from tasks.context import Models, as_config, models_for, store_for
from tasks.link import load_link

STAGE = "counterfactual"
VERSION = "3"


def counterfactual_params(config: AnalysisConfig, pairs: list[tuple[int, int]]) -> dict:
    return {"pairs": [list(p) for p in pairs], **config.counterfactual.model_dump(),
            "precision": config.runtime.precision}


def counterfactual_key(config: AnalysisConfig, models: Models, pairs: list[tuple[int, int]],
                       keys: dict[str, str]) -> str:
    return content_key(STAGE, VERSION, counterfactual_params(config, pairs),
                       {**keys, **models.keys})


def _summary(pairs_table: pd.DataFrame, units: pd.DataFrame | None, top_k: int,
             names: list[str]) -> pd.DataFrame:
    """Per class pair: flip rate, median steps, most frequent decision units, their top parts
    in stage 4 and how many of them stage 4 found selective for each part."""
    top_part = {} if units is None else dict(zip(units["unit"], units["top_part"], strict=True))
    selective = {} if units is None else dict(
        zip(units.loc[units["selective"], "unit"], units.loc[units["selective"], "top_part"],
            strict=True))
    parts = sorted(set(top_part.values()))
    rows = []
    for (origin, target), group in pairs_table.groupby(["origin", "target"], sort=True):
        ok = group[group["success"]]
        counts = Counter(u for units_ in ok["top_units"] for u in units_)
        decision = [u for u, _ in counts.most_common(top_k)]
        row = {
            "origin": origin, "target": target, "origin_name": names[origin],
            "target_name": names[target], "n": len(group),
            "flip_rate": float(group["success"].mean()),
            "median_steps": float(ok["steps"].median()) if len(ok) else float("nan"),
            "decision_units": decision,
            "decision_unit_counts": [counts[u] for u in decision],
            "decision_unit_parts": [top_part.get(u, "") for u in decision],
        }
        for part in parts:
            row[f"overlap_{part}"] = sum(selective.get(u) == part for u in decision)
        rows.append(row)
    return pd.DataFrame(rows)


@task(name="counterfactual", cache_key_fn=by_content_key, persist_result=True,
      task_run_name="counterfactual", tags={GPU_TAG})
def counterfactuals(config: dict[str, Any], key: str, pairs: list[list[int]],
                    keys: dict[str, str]) -> dict[str, Any]:
    """Optimise, render and re-classify counterfactuals for every (origin, target) pair."""
    cfg = as_config(config)
    store = store_for(cfg)
    if store.exists(STAGE, key):
        return {"stage": STAGE, "key": key, "computed": False}
    models = models_for(cfg)
    cf = cfg.counterfactual
    link = load_link(store.open("link", keys["link"]))
    test = store.open("paired", keys["test"])
    r_all = torch.from_numpy(test.load("r"))
    labels_all = torch.from_numpy(test.load("label"))
    t0 = time.perf_counter()
    picks, origins, targets = [], [], []
    for origin, target in pairs:
        idx = select_samples(labels_all, cf.samples, [origin])
        picks.append(idx)
        origins += [origin] * len(idx)
        targets += [target] * len(idx)
    pick = torch.cat(picks)
    dev = models.device
    origin_t = torch.tensor(origins, device=dev)
    target_t = torch.tensor(targets, device=dev)
    results = []
    batch = max(1, cfg.runtime.batch_size)
    with progress(len(pick), "counterfactual pairs", unit="pair") as update:
        for i in range(0, len(pick), batch):
            sl = slice(i, i + batch)
            results.append(find_counterfactuals(
                models.generator, models.classifier, link, r_all[pick[sl]].to(dev),
                origin_t[sl], target_t[sl], max_steps=cf.max_steps, check_every=cf.check_every,
                lr=cf.lr, weight_similarity=cf.weight_similarity, weight_l1=cf.weight_l1,
                precision=cfg.runtime.precision))
            update(len(pick[sl]))
    shift = torch.cat([r.shift for r in results])
    images = torch.cat([r.images for r in results])
    stats = shift_statistics(shift, cf.top_units)
    table = pd.DataFrame({
        "pair": np.arange(len(pick)), "sample": pick.numpy(), "origin": origins,
        "target": targets, "origin_name": [models.class_names[c] for c in origins],
        "target_name": [models.class_names[c] for c in targets],
        "success": torch.cat([r.success for r in results]).numpy(),
        "steps": torch.cat([r.steps for r in results]).numpy(),
        "l1": stats["l1"].numpy(), "l2": stats["l2"].numpy(),
        "sparsity": stats["sparsity"].numpy(),
        "top_units": [row.tolist() for row in stats["top_units"]],
        "prob_before": torch.cat([r.prob_before for r in results]).numpy(),
        "prob_after": torch.cat([r.prob_after for r in results]).numpy(),
        "pixel_distance": pixel_distance(images).numpy(),
    })
    units = store.open("selectivity", keys["selectivity"]).table("units") \
        if keys.get("selectivity") else None
    summary = _summary(table, units, cf.top_units, models.class_names)
    with store.writer(STAGE, key, params=counterfactual_params(cfg, [(p[0], p[1]) for p in pairs]),
                      inputs={**keys, **models.keys}, code_version=VERSION) as out:
        out.write_array("shift", shift.numpy())
        out.write_array("images", images.numpy(), chunks=(1, *images.shape[1:]))
        out.write_table("pairs", table)
        out.write_table("summary", summary)
        for row in summary.itertuples():
            group = table[(table["origin"] == row.origin) & (table["target"] == row.target)]
            labels = [f"sample {s}\n{f'flipped, {n} steps' if ok else 'not flipped'}"
                      for s, ok, n in zip(group["sample"], group["success"], group["steps"],
                                          strict=True)]
            out.write_file(f"pair-{row.origin}-{row.target}.png", counterfactual_figure(
                images.numpy()[group["pair"].to_numpy()], labels,
                list(zip(row.decision_units, row.decision_unit_counts, strict=True)),
                f"{row.origin_name} (class {row.origin}) -> {row.target_name} (class "
                f"{row.target}): flip rate {row.flip_rate:.0%} of {row.n} samples"))
        out.timings["compute_s"] = round(time.perf_counter() - t0, 3)
    return {"stage": STAGE, "key": key, "computed": True}
