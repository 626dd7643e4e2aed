"""Stage 3's null control: random r-space directions tuned exactly as the units are, in
shards (``null_shards``) that hold whole batches, so the sharded null has the numbers of one
unsharded pass to the last bit; a killed run resumes at the next unfinished shard."""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from prefect import task

from linkstyle_core.config import AnalysisConfig, resolve_units
from linkstyle_core.progress import progress
from linkstyle_core.tuning import analytic_gains, null_directions
from storage import ShardedWriter
from tasks.caching import GPU_TAG, IO_RETRIES, by_content_key
from tasks.context import Models, as_config, models_for, resolve_classes, store_for
from tasks.trajectories import (
    UPSTREAM,
    calibrate,
    calibration_images,
    step_params,
    tune_directions,
    tuning_inputs,
    write_result,
)

VERSION = "7"


def null_params(config: AnalysisConfig, models: Models) -> dict[str, Any]:
    t = config.tuning
    classes = resolve_classes(config, models)
    return {"units": resolve_units(t.units, models.classifier.feature_dim),
            "samples_per_class": t.null_samples_per_class,
            "classes": classes, "precision": config.runtime.precision,
            "null_directions": t.null_directions, "seed": t.seed,
            "shard_size": null_shard_size(config, len(classes)), **step_params(config)}


def null_shard_size(config: AnalysisConfig, n_classes: int) -> int:
    """Null directions per shard: ``tuning.null_shard_size`` rounded up so that a shard holds
    whole batches of both passes over it (the calibration renders each direction on the probe
    samples, the tuning on the null samples, both ``batch_size // 2`` trajectories a batch).
    Every batch of a shard is then a batch of the unsharded null, and the shards' numbers are
    its numbers to the last bit."""
    t = config.tuning
    per_batch = max(1, config.runtime.batch_size // 2)
    samples = [t.null_samples_per_class * n_classes]
    if t.step == "calibrated" and t.calibration_samples_per_class:
        samples.append(t.calibration_samples_per_class * n_classes)
    align = math.lcm(*(per_batch // math.gcd(per_batch, n) for n in samples))
    return min(-(-t.null_shard_size // align) * align, t.null_directions)


def null_shards(config: AnalysisConfig, models: Models) -> dict[str, range]:
    """Shard id -> the null directions it holds, in order: 'directions-0000-0127', ..."""
    size = null_params(config, models)["shard_size"]
    count = config.tuning.null_directions
    return {f"directions-{i:04d}-{min(i + size, count) - 1:04d}": range(i, min(i + size, count))
            for i in range(0, count, size)}


def _null_writer(cfg: AnalysisConfig, models: Models, key: str,
                 keys: dict[str, str]) -> tuple[ShardedWriter, dict[str, range]]:
    shards = null_shards(cfg, models)
    writer = store_for(cfg).sharded(
        "null", key, list(shards), params=null_params(cfg, models), code_version=VERSION,
        inputs={k: keys[k] for k in UPSTREAM} | models.keys)
    return writer, shards


@task(name="null-shard", cache_key_fn=by_content_key, persist_result=True,
      cache_result_in_memory=False, task_run_name="null-{shard}", tags={GPU_TAG}, **IO_RETRIES)
def null_shard(config: dict[str, Any], key: str, shard: str, keys: dict[str, str]) -> dict:
    """One shard of the null control: random r-space directions with the units' step sizes,
    calibrated exactly as the units are, on ``tuning.null_samples_per_class`` samples per class
    and two steps (the first and the last, all that the scores compare).

    Every shard draws all the directions (seeded) and keeps its own; what depends on the
    directions alone (their latent directions, predicted gains) is computed for all of them,
    and what is rendered comes in whole batches (``null_shard_size``): the shards' numbers are
    those of one unsharded pass."""
    cfg = as_config(config)
    models = models_for(cfg)
    writer, shards = _null_writer(cfg, models, key, keys)
    if shard in writer.committed():
        return {"shard": shard, "computed": False}
    t0 = time.perf_counter()
    inp = tuning_inputs(cfg, models, keys, per_class=cfg.tuning.null_samples_per_class)
    units = torch.tensor(null_params(cfg, models)["units"])
    spans = (inp["high"] - inp["low"])[units]
    dirs, offsets = null_directions(inp["r"].shape[1], spans, cfg.tuning.null_directions,
                                    2, len(inp["picks"]), cfg.tuning.seed)
    latent_dirs = dirs @ inp["directions"].T
    predicted = analytic_gains(inp["reverse"], latent_dirs, dirs)
    mine = torch.tensor(list(shards[shard]))
    dirs, offsets, latent_dirs = dirs[mine], offsets[mine], latent_dirs[mine]
    null_spans = offsets[:, 0, -1] - offsets[:, 0, 0]
    probe = offsets[:, :1].expand(-1, len(inp["probe_w0"]), -1)  # symmetric about each r
    total = calibration_images(cfg, len(mine), probe.shape[1]) + offsets.numel()
    with progress(total, f"null {shard}") as update, writer.shard(shard) as out:
        calibration = calibrate(cfg, models, inp, latent_dirs, dirs, null_spans, probe,
                                 predicted=predicted[mine], update=update)
        res = tune_directions(cfg, models, inp, calibration["step"], dirs, offsets, update)
        write_result(out, mine.numpy(), "direction", res, res.offset, inp, calibration)
        out.write_array("directions", dirs.numpy())
        out.info["parts"] = inp["parts"]
        out.timings["compute_s"] = round(time.perf_counter() - t0, 3)
        out.info["images_per_s"] = round(total / (time.perf_counter() - t0), 1)
    return {"shard": shard, "computed": True}


@task(name="null-finalize", cache_key_fn=by_content_key, persist_result=True,
      task_run_name="null-finalize")
def null_finalize(config: dict[str, Any], key: str, keys: dict[str, str],
                  shards: list[Any]) -> dict[str, Any]:
    cfg = as_config(config)
    models = models_for(cfg)
    store = store_for(cfg)
    if store.exists("null", key):
        return {"stage": "null", "key": key, "computed": False}
    writer, _ = _null_writer(cfg, models, key, keys)
    parts = store.open("segmenter", keys["segmenter"]).info["parts"]
    writer.finalize(info={"directions": cfg.tuning.null_directions, "parts": parts})
    return {"stage": "null", "key": key, "computed": True}
