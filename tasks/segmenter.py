"""Stage 3's part segmenter: trained on the generator's feature maps of a few labelled images
(the toy world's renderer labels, or a user's imported label folder), with its held-out mIoU."""

from __future__ import annotations

import time
from typing import Any

import pandas as pd
import torch
from prefect import task

from linkstyle_core.config import AnalysisConfig
from linkstyle_core.labels import load_folder, toy_labelled
from linkstyle_core.segment import FewShotSegmenter, mean_iou, train_segmenter
from linkstyle_core.tuning import generator_features
from storage import Artifact
from tasks.caching import GPU_TAG, by_content_key
from tasks.context import Models, as_config, models_for, store_for

VERSION = "2"
EVAL_IMAGES = 128  # fresh toy images on which the segmenter's mIoU is measured


def segmenter_params(config: AnalysisConfig) -> dict[str, Any]:
    return {**config.segment.model_dump(exclude={"labels"}), "precision": "fp32"}


def segmenter_inputs(config: AnalysisConfig, models: Models) -> dict[str, str]:
    inputs = {"generator": models.generator_key}
    if config.segment.labels:
        inputs["labels"] = load_folder(config.segment.labels)[3]
    elif config.generator.kind != "toy":
        raise ValueError(
            "segment.labels is required for a generator other than the toy world: run "
            "`linkstyle labels export --out DIR`, label the images, `linkstyle labels import DIR`"
            ", then set segment.labels: DIR"
        )
    return inputs


def _labelled(cfg: AnalysisConfig, models: Models) -> tuple[Any, ...]:
    """(train ws, train labels, eval ws, eval labels, parts)."""
    if cfg.segment.labels:
        ws, labels, parts, _ = load_folder(cfg.segment.labels)
        if cfg.segment.parts and list(cfg.segment.parts) != parts:
            raise ValueError(f"segment.parts {cfg.segment.parts} differ from the label folder's "
                             f"parts.json {parts}; make them agree")
        n_train = min(cfg.segment.labelled_images, len(ws) - max(1, len(ws) // 4))
        dev = models.device
        return (ws[:n_train].to(dev), labels[:n_train].to(dev), ws[n_train:].to(dev),
                labels[n_train:].to(dev), parts)
    from linkstyle_core.toyworld.factors import PARTS

    parts = list(cfg.segment.parts or PARTS)
    if parts != list(PARTS):
        raise ValueError(f"segment.parts must be the toy world's parts {list(PARTS)} for the toy "
                         "generator, or left unset")
    gen, dev, seed = models.generator, models.device, cfg.segment.seed
    ws, labels = toy_labelled(gen, cfg.segment.labelled_images, seed, dev)
    ws_eval, labels_eval = toy_labelled(gen, EVAL_IMAGES, seed + 10_000, dev)
    return ws, labels, ws_eval, labels_eval, parts


def load_segmenter(artifact: Artifact, device: torch.device) -> FewShotSegmenter:
    info = artifact.info
    model = FewShotSegmenter(info["in_channels"], len(info["parts"]), info["resolution"],
                             info["hidden"], info["kernel"])
    state = {name: torch.from_numpy(artifact.load(name)) for name in info["state_names"]}
    model.load_state_dict(state)
    return model.to(device).eval().requires_grad_(False)


@task(name="segmenter", cache_key_fn=by_content_key, persist_result=True,
      task_run_name="segmenter", tags={GPU_TAG})
def fit_segmenter(config: dict[str, Any], key: str) -> dict[str, Any]:
    """Train the few-shot segmenter on labelled images; store weights and held-out mIoU."""
    cfg = as_config(config)
    store = store_for(cfg)
    if store.exists("segmenter", key):
        return {"stage": "segmenter", "key": key, "computed": False}
    models = models_for(cfg)
    ws, labels, ws_eval, labels_eval, parts = _labelled(cfg, models)
    t0 = time.perf_counter()
    feats = generator_features(models.generator, ws, cfg.runtime.batch_size)
    seg = train_segmenter(feats, labels, len(parts), steps=cfg.segment.steps,
                          hidden=cfg.segment.hidden, seed=cfg.segment.seed,
                          kernel=cfg.segment.kernel)
    pred = seg.predict(generator_features(models.generator, ws_eval, cfg.runtime.batch_size))
    miou, per_part = mean_iou(pred, labels_eval, len(parts))
    with store.writer("segmenter", key, params=segmenter_params(cfg),
                      inputs=segmenter_inputs(cfg, models),
                      code_version=VERSION) as out:
        state = seg.state_dict()
        for name, tensor in state.items():
            out.write_array(name, tensor.cpu().numpy())
        out.write_table("iou", pd.DataFrame({"part": parts, "iou": per_part}))
        out.info.update({
            "parts": parts, "in_channels": seg.in_channels, "resolution": seg.resolution,
            "hidden": cfg.segment.hidden, "kernel": cfg.segment.kernel,
            "state_names": list(state), "miou": miou,
            "train_images": len(ws), "eval_images": len(ws_eval),
        })
        out.timings["compute_s"] = round(time.perf_counter() - t0, 3)
    return {"stage": "segmenter", "key": key, "computed": True}
