"""What a tuning shard and a null shard share: their inputs from the store, the calibration of
each direction's step, the rendering of the trajectories and the arrays and tables they write
(DESIGN.md, "Tuning that moves the unit": the null directions get exactly the units'
treatment)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import torch

from linkstyle_core.config import AnalysisConfig
from linkstyle_core.measure import MEASURES
from linkstyle_core.models.registry import check_compatible
from linkstyle_core.tuning import (
    TuneResult,
    analytic_gains,
    base_images,
    calibrated_scale,
    measured_gains,
    select_samples,
    tune,
)
from storage import ArtifactWriter
from tasks.context import Models, resolve_classes, store_for
from tasks.link import load_link
from tasks.segmenter import load_segmenter

#: the artifacts every tuning and null shard is built from
UPSTREAM = ("link", "ranges", "directions", "test", "segmenter")


def step_params(config: AnalysisConfig) -> dict[str, Any]:
    t = config.tuning
    if t.step == "range":
        return {"step": "range"}
    return {"step": "calibrated", "calibration_samples_per_class": t.calibration_samples_per_class,
            "max_latent_step": t.max_latent_step}


def tuning_inputs(cfg: AnalysisConfig, models: Models, keys: dict[str, str],
                  per_class: int | None = None) -> dict[str, Any]:
    """Everything a tuning shard or the null needs, loaded from the store. ``per_class``:
    held-out samples per class (default ``tuning.samples_per_class``)."""
    store = store_for(cfg)
    dev = models.device
    link = load_link(store.open("link", keys["link"]))
    check_compatible(models.generator, models.classifier, link_coef_shape=link.coef_.shape)
    test = store.open("paired", keys["test"])
    r_all, labels_all = torch.from_numpy(test.load("r")), torch.from_numpy(test.load("label"))
    classes = resolve_classes(cfg, models)
    picks = select_samples(labels_all, per_class or cfg.tuning.samples_per_class, classes)
    per_probe = cfg.tuning.calibration_samples_per_class
    probe = select_samples(labels_all, per_probe, classes) if per_probe else picks[:0]
    r, labels = r_all[picks].to(dev), labels_all[picks].to(dev)
    w0 = link.predict(r)
    seg_art = store.open("segmenter", keys["segmenter"])
    segmenter = load_segmenter(seg_art, dev)
    base, base_area = base_images(models.generator, models.classifier, segmenter, w0,
                                  cfg.runtime.batch_size, cfg.runtime.precision)
    ranges = store.open("ranges", keys["ranges"])
    directions = store.open("directions", keys["directions"])
    return {
        "link": link, "r": r, "labels": labels, "w0": w0, "picks": picks,
        "probe_r": r_all[probe].to(dev), "probe_w0": link.predict(r_all[probe].to(dev)),
        "base": base, "base_area": base_area, "segmenter": segmenter,
        "parts": seg_art.info["parts"],
        "low": torch.from_numpy(ranges.load("low")), "high": torch.from_numpy(ranges.load("high")),
        "r_std": torch.tensor(ranges.table("ranges")["std"].to_numpy(), dtype=torch.float32),
        "directions": torch.from_numpy(directions.load("directions")),
        "reverse": torch.from_numpy(directions.load("reverse")),
        "w_spread": float(directions.info["w_spread"]),
    }


def calibrate(cfg: AnalysisConfig, models: Models, inp: dict[str, Any], latent_dirs: torch.Tensor,
              readout: torch.Tensor, spans: torch.Tensor, probe_offsets: torch.Tensor,
              predicted: torch.Tensor | None = None,
              update: Callable[[int], None] | None = None) -> dict[str, torch.Tensor]:
    """The latent step per unit of r-space offset along each direction, and how it was set.

    spans [K]: each direction's whole offset range; probe_offsets [K, Np, 2]: the first and
    last offsets of the probe samples' trajectories; predicted [K]: the reverse map's gains if
    already computed (else computed here); update: progress, called with the images rendered.
    Returns step [K, w_dim] (what ``tune`` moves per unit of offset), scale [K] (its length
    relative to the direction), gain_analytic [K] (the reverse map's prediction), gain_measured
    [K] (the predicted step's gain rendered on the probe samples; NaN when not measured) and
    latent_step [K] (the whole trajectory's length in W).
    """
    k = len(latent_dirs)
    if predicted is None:
        predicted = analytic_gains(inp["reverse"], latent_dirs, readout)
    measured = torch.full((k,), float("nan"))
    if cfg.tuning.step == "range":
        scale = torch.ones(k)
    else:
        max_step = cfg.tuning.max_latent_step * inp["w_spread"]
        scale = calibrated_scale(predicted, latent_dirs, spans, max_step)
        if probe_offsets.shape[1]:
            # the linear prediction misses the generator's and classifier's curvature: render
            # the predicted step on a few samples and correct it by the gain measured there
            measured = measured_gains(models.generator, models.classifier, inp["probe_w0"],
                                      latent_dirs * scale[:, None], readout, probe_offsets,
                                      cfg.runtime.batch_size, cfg.runtime.precision,
                                      progress=update)
            # measured is the gain of the step d * scale per unit of offset: d's own gain is
            # measured / scale (= predicted * measured unless the cap bound)
            scale = calibrated_scale((measured / scale).nan_to_num(0.0).where(
                measured.isfinite(), predicted), latent_dirs, spans, max_step)
    step = latent_dirs * scale[:, None]
    return {"step": step, "scale": scale, "gain_analytic": predicted, "gain_measured": measured,
            "latent_step": spans * step.norm(dim=1)}


def tune_directions(cfg: AnalysisConfig, models: Models, inp: dict[str, Any],
                    latent_dirs: torch.Tensor, readout: torch.Tensor, offsets: torch.Tensor,
                    update: Callable[[int], None],
                    on_images: Callable[..., None] | None = None) -> TuneResult:
    """``tune`` reporting to ``update``; images go to ``on_images`` (the stage's image writer)
    or nowhere, never into memory."""
    return tune(models.generator, models.classifier, inp["segmenter"], inp["w0"],
                inp["labels"], inp["base"], latent_dirs, readout, offsets,
                batch_size=cfg.runtime.batch_size, precision=cfg.runtime.precision,
                keep_images=False, progress=update, on_images=on_images)


def calibration_images(cfg: AnalysisConfig, directions: int, probes: int) -> int:
    """How many images the calibration of ``directions`` renders on ``probes`` samples."""
    return 2 * directions * probes if cfg.tuning.step == "calibrated" else 0


def write_result(out: ArtifactWriter, ids: np.ndarray, id_name: str, res: TuneResult,
                 set_value: torch.Tensor, inp: dict[str, Any],
                 calibration: dict[str, torch.Tensor]) -> None:
    _, ns, steps = res.offset.shape  # images and part maps are streamed (ImageWriter)
    out.write_array(id_name, ids)
    out.write_array("sample_index", inp["picks"].numpy())
    out.write_array("sample_class", inp["labels"].cpu().numpy())
    out.write_array("base_area", inp["base_area"].numpy())
    for name, value in (("set_value", set_value), ("response", res.response),
                        ("logit_change", res.logit_change), ("top1", res.top1),
                        ("measures", res.measures), ("motion", res.motion),
                        ("pixel_change", res.pixel_change), ("label_change", res.label_change),
                        ("reencoded_change", res.reencoded_change / inp["r_std"].clamp_min(1e-8)),
                        ("step_scale", calibration["scale"]),
                        ("latent_step", calibration["latent_step"]),
                        ("gain_analytic", calibration["gain_analytic"]),
                        ("gain_measured", calibration["gain_measured"])):
        out.write_array(name, value.numpy())
    grid = np.meshgrid(ids, np.arange(ns), np.arange(steps), indexing="ij")
    out.write_table("response", pd.DataFrame({
        id_name: grid[0].ravel(), "sample": inp["picks"].numpy()[grid[1].ravel()],
        "class": inp["labels"].cpu().numpy()[grid[1].ravel()], "step": grid[2].ravel(),
        "set_value": set_value.numpy().ravel(), "reencoded": res.response.numpy().ravel(),
        "class_logit_change": res.logit_change.numpy().ravel(), "top1": res.top1.numpy().ravel(),
    }))
    parts = inp["parts"]
    p = len(parts)
    g4 = np.meshgrid(ids, np.arange(ns), np.arange(steps), np.arange(p), indexing="ij")
    frame = pd.DataFrame({
        id_name: g4[0].ravel(), "sample": inp["picks"].numpy()[g4[1].ravel()],
        "step": g4[2].ravel(), "part": np.asarray(parts, dtype=object)[g4[3].ravel()],
    })
    values = res.measures.numpy().reshape(-1, len(MEASURES))
    for j, name in enumerate(MEASURES):
        frame[name] = values[:, j]
    out.write_table("measures", frame)
    g3 = np.meshgrid(ids, np.arange(ns), np.arange(p), indexing="ij")
    out.write_table("motion", pd.DataFrame({
        id_name: g3[0].ravel(), "sample": inp["picks"].numpy()[g3[1].ravel()],
        "part": np.asarray(parts, dtype=object)[g3[2].ravel()],
        "motion": res.motion.numpy().ravel(),
    }))
