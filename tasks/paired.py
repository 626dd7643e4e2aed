"""Stage 1 tasks: paired (w, r) samples, one shard per class, then the whole-split manifest."""

from __future__ import annotations

import time
from typing import Any

import pandas as pd
from prefect import task

from linkstyle_core.config import AnalysisConfig
from linkstyle_core.paired import sample_class
from linkstyle_core.progress import progress
from storage import ShardedWriter, content_key
from tasks.caching import GPU_TAG, IO_RETRIES, by_content_key
from tasks.context import Models, as_config, models_for, store_for

STAGE = "paired"
VERSION = "1"
SPLITS = ("train", "test")


def shard_id(cls: int) -> str:
    return f"class-{cls:04d}"


def paired_params(config: AnalysisConfig, classes: list[int], split: str) -> dict[str, Any]:
    data = config.data
    n = data.samples_per_class if split == "train" else data.test_samples_per_class
    return {
        "split": split, "classes": classes, "samples_per_class": n,
        "truncation": data.truncation, "seed": data.seed,
        "max_attempts_factor": data.max_attempts_factor, "min_acceptance": data.min_acceptance,
        "precision": config.runtime.precision,
    }


def paired_key(config: AnalysisConfig, models: Models, classes: list[int], split: str) -> str:
    return content_key(STAGE, VERSION, paired_params(config, classes, split), models.keys)


def paired_writer(config: AnalysisConfig, models: Models, classes: list[int], split: str,
                  key: str) -> ShardedWriter:
    return store_for(config).sharded(
        STAGE, key, [shard_id(c) for c in classes], params=paired_params(config, classes, split),
        inputs=models.keys, code_version=VERSION,
    )


@task(name="paired-shard", cache_key_fn=by_content_key, persist_result=True,
      cache_result_in_memory=False, task_run_name="paired-{split}-{shard}", tags={GPU_TAG},
      **IO_RETRIES)
def paired_shard(config: dict[str, Any], split: str, key: str, shard: str, cls: int,
                 classes: list[int]) -> dict[str, Any]:
    """Sample, render, classify and keep one class's pairs; commit them as one shard."""
    cfg = as_config(config)
    models = models_for(cfg)
    writer = paired_writer(cfg, models, classes, split, key)
    if shard in writer.committed():
        return {"shard": shard, "computed": False}
    params = paired_params(cfg, classes, split)
    t0 = time.perf_counter()
    with progress(params["samples_per_class"], f"paired {split} class {cls}") as update:
        samples = sample_class(
            models.generator, models.classifier, cls, params["samples_per_class"],
            split=split, run_seed=cfg.data.seed, truncation=cfg.data.truncation,
            batch_size=cfg.runtime.batch_size, device=models.device,
            precision=cfg.runtime.precision, max_attempts_factor=cfg.data.max_attempts_factor,
            min_acceptance=cfg.data.min_acceptance, progress=update,
        )
    compute_s = time.perf_counter() - t0
    with writer.shard(shard) as out:
        out.write_array("w", samples.w.numpy())
        out.write_array("r", samples.r.numpy())
        out.write_array("label", samples.label.numpy())
        out.write_array("index", samples.index.numpy())
        out.write_array("confidence", samples.confidence.numpy())
        out.write_table("acceptance", pd.DataFrame({
            "split": [split], "class": [cls], "requested": [len(samples.label)],
            "attempts": [samples.attempts], "acceptance_rate": [samples.acceptance_rate],
            "mean_confidence": [float(samples.confidence.mean())],
        }))
        out.timings["compute_s"] = round(compute_s, 3)
        out.info["images_per_s"] = round(samples.attempts / max(compute_s, 1e-9), 1)
    return {"shard": shard, "computed": True}


@task(name="paired-finalize", cache_key_fn=by_content_key, persist_result=True,
      task_run_name="paired-{split}-finalize")
def paired_finalize(config: dict[str, Any], split: str, key: str, classes: list[int],
                    shards: list[dict[str, Any]]) -> dict[str, Any]:
    """Commit the whole split once every class shard is in."""
    cfg = as_config(config)
    models = models_for(cfg)
    writer = paired_writer(cfg, models, classes, split, key)
    if store_for(cfg).exists(STAGE, key):
        return {"stage": STAGE, "key": key, "computed": False}
    writer.finalize(info={"classes": classes})
    return {"stage": STAGE, "key": key, "computed": True}
