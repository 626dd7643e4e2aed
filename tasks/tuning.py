"""Stage 3-4 tasks: activation ranges, tuning directions, the part segmenter, tuned units
and the null, both sharded.

Each tuning shard calibrates its units' steps, then renders, re-encodes, segments and measures
them in one pass and commits on its own, so a killed run resumes at the next unfinished shard.
The null's random directions are sharded the same way (``null_shards``); its shards hold whole
batches, so the null's numbers are those of one unsharded pass to the last bit.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import torch
from prefect import task

from linkstyle_core.config import AnalysisConfig, resolve_units
from linkstyle_core.labels import load_folder, toy_labelled
from linkstyle_core.measure import MEASURES
from linkstyle_core.models.registry import check_compatible
from linkstyle_core.progress import progress
from linkstyle_core.segment import FewShotSegmenter, mean_iou, train_segmenter
from linkstyle_core.tuning import (
    TuneResult,
    activation_ranges,
    analytic_gains,
    base_images,
    calibrated_scale,
    centre,
    generator_features,
    latent_directions,
    measured_gains,
    null_directions,
    reverse_map,
    select_samples,
    step_values,
    tune,
    unit_offsets,
)
from storage import Artifact, ArtifactWriter, ShardedWriter, content_key
from tasks.caching import GPU_TAG, IO_RETRIES, by_content_key
from tasks.context import Models, as_config, models_for, resolve_classes, store_for
from tasks.link import load_link

VERSIONS = {"ranges": "1", "directions": "1", "segmenter": "2", "tune": "6", "null": "7"}
EVAL_IMAGES = 128  # fresh toy images on which the segmenter's mIoU is measured
REVERSE_ALPHA = 1.0  # ridge of the reverse map w -> r; w_dim << training pairs, so mild


# -- keys ------------------------------------------------------------------------------------
def ranges_params(config: AnalysisConfig) -> dict[str, Any]:
    return {"range": config.tuning.range, "percentiles": config.tuning.percentiles}


def directions_params(config: AnalysisConfig) -> dict[str, Any]:
    t = config.tuning
    return {"direction": t.direction, "direction_alpha": t.direction_alpha,
            "direction_centring": t.direction_centring, "reverse_alpha": REVERSE_ALPHA}


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


def tune_params(config: AnalysisConfig, models: Models) -> dict[str, Any]:
    t = config.tuning
    return {
        "units": resolve_units(t.units, models.classifier.feature_dim), "steps": t.steps,
        "samples_per_class": t.samples_per_class, "classes": resolve_classes(config, models),
        "shard_size": t.shard_size, "store_images": t.store_images,
        "precision": config.runtime.precision, **_step_params(config),
    }


def _step_params(config: AnalysisConfig) -> dict[str, Any]:
    t = config.tuning
    if t.step == "range":
        return {"step": "range"}
    return {"step": "calibrated", "calibration_samples_per_class": t.calibration_samples_per_class,
            "max_latent_step": t.max_latent_step}


def null_params(config: AnalysisConfig, models: Models) -> dict[str, Any]:
    t = config.tuning
    classes = resolve_classes(config, models)
    return {"units": resolve_units(t.units, models.classifier.feature_dim),
            "samples_per_class": t.null_samples_per_class,
            "classes": classes, "precision": config.runtime.precision,
            "null_directions": t.null_directions, "seed": t.seed,
            "shard_size": null_shard_size(config, len(classes)), **_step_params(config)}


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


def unit_shards(units: list[int], shard_size: int) -> dict[str, list[int]]:
    """Shard id -> units, in order: 'units-0000-0063', ..."""
    out = {}
    for i in range(0, len(units), shard_size):
        chunk = units[i:i + shard_size]
        out[f"units-{chunk[0]:04d}-{chunk[-1]:04d}"] = chunk
    return out


def stage_keys(config: AnalysisConfig, models: Models, link_key: str,
               paired: dict[str, str]) -> dict[str, str]:
    ranges = content_key("ranges", VERSIONS["ranges"], ranges_params(config),
                         {"train": paired["train"]})
    directions = content_key("directions", VERSIONS["directions"], directions_params(config),
                             {"link": link_key, "train": paired["train"]})
    segmenter = content_key("segmenter", VERSIONS["segmenter"], segmenter_params(config),
                            segmenter_inputs(config, models))
    upstream = {"link": link_key, "ranges": ranges, "directions": directions,
                "test": paired["test"], "segmenter": segmenter, **models.keys}
    return {
        "ranges": ranges, "directions": directions, "segmenter": segmenter,
        "tune": content_key("tune", VERSIONS["tune"], tune_params(config, models), upstream),
        "null": content_key("null", VERSIONS["null"], null_params(config, models), upstream),
    }


# -- ranges ----------------------------------------------------------------------------------
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


# -- segmenter -------------------------------------------------------------------------------
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
    from linkstyle_core.toyworld.renderer import PARTS

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
                      code_version=VERSIONS["segmenter"]) as out:
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


# -- tuning ----------------------------------------------------------------------------------
def _tuning_inputs(cfg: AnalysisConfig, models: Models, keys: dict[str, str],
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


def _calibrate(cfg: AnalysisConfig, models: Models, inp: dict[str, Any], latent_dirs: torch.Tensor,
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


def _run(cfg: AnalysisConfig, models: Models, inp: dict[str, Any], latent_dirs: torch.Tensor,
         readout: torch.Tensor, offsets: torch.Tensor, update: Callable[[int], None],
         on_images: Callable[..., None] | None = None) -> TuneResult:
    """``tune`` reporting to ``update``; images go to ``on_images`` (the stage's image writer)
    or nowhere, never into memory."""
    return tune(models.generator, models.classifier, inp["segmenter"], inp["w0"],
                inp["labels"], inp["base"], latent_dirs, readout, offsets,
                batch_size=cfg.runtime.batch_size, precision=cfg.runtime.precision,
                keep_images=False, progress=update, on_images=on_images)


def _calibration_images(cfg: AnalysisConfig, directions: int, probes: int) -> int:
    """How many images the calibration of ``directions`` renders on ``probes`` samples."""
    return 2 * directions * probes if cfg.tuning.step == "calibrated" else 0


class ImageWriter:
    """Streams a shard's tuned images and part maps into its arrays ``images`` [K, Ns, S, 3, H,
    W] and ``parts`` [K, Ns, S, H, W] (uint8, one chunk per direction) from a background
    thread, so that compressing and writing them overlaps with rendering the next batches.

    Call it as ``tune``'s ``on_images``; a direction's chunk is written once all its samples
    have arrived. ``close()`` waits for the last writes and raises what the thread raised.
    """

    def __init__(self, out: ArtifactWriter, directions: int, samples: int) -> None:
        self.out, self.directions, self.samples = out, directions, samples
        self.arrays: tuple[Any, Any] | None = None
        self.pending: dict[int, list[Any]] = {}  # direction -> [images, parts, samples in]
        self.queue: queue.Queue[tuple[int, np.ndarray, np.ndarray] | None] = queue.Queue(8)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._drain, name="tune-image-writer",
                                       daemon=True)
        self.thread.start()

    def __call__(self, k: torch.Tensor, s: torch.Tensor, images: torch.Tensor,
                 parts: torch.Tensor) -> None:
        if self.error is not None:
            raise RuntimeError(f"writing tuned images failed: {self.error}") from self.error
        if self.arrays is None:
            shape = (self.directions, self.samples, *images.shape[1:])
            chunks = (1, *shape[1:])
            part_shape = (self.directions, self.samples, *parts.shape[1:])
            self.arrays = (
                self.out.create_array("images", shape, np.uint8, chunks=chunks),
                self.out.create_array("parts", part_shape, np.uint8, chunks=(1, *part_shape[1:])),
            )
        images_np, parts_np = images.numpy(), parts.numpy()
        for row, (direction, sample) in enumerate(zip(k.tolist(), s.tolist(), strict=True)):
            entry = self.pending.setdefault(direction, [
                np.empty((self.samples, *images_np.shape[1:]), np.uint8),
                np.empty((self.samples, *parts_np.shape[1:]), np.uint8), 0])
            entry[0][sample], entry[1][sample] = images_np[row], parts_np[row]
            entry[2] += 1
            if entry[2] == self.samples:
                del self.pending[direction]
                self.queue.put((direction, entry[0], entry[1]))

    def _drain(self) -> None:
        while (item := self.queue.get()) is not None:
            if self.error is not None or self.arrays is None:
                continue
            direction, images, parts = item
            try:
                self.arrays[0][direction] = images
                self.arrays[1][direction] = parts
            except BaseException as exc:  # handed to the tuning thread
                self.error = exc

    def close(self, check: bool = True) -> None:
        self.queue.put(None)
        self.thread.join()
        if check and self.error is not None:
            raise self.error
        if check and self.pending:
            raise RuntimeError(f"tuned images of directions {sorted(self.pending)} are "
                               f"incomplete")


def run_streamed(out: ArtifactWriter, directions: int, samples: int,
                 run: Callable[[Callable[..., None]], TuneResult]) -> TuneResult:
    """``run(on_images)`` with the images and part maps streamed into ``out`` as it goes."""
    writer = ImageWriter(out, directions, samples)
    try:
        result = run(writer)
    except BaseException:
        writer.close(check=False)
        raise
    writer.close()
    return result


def _write_result(out: ArtifactWriter, ids: np.ndarray, id_name: str, res: TuneResult,
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


_UPSTREAM = ("link", "ranges", "directions", "test", "segmenter")


def _tune_writer(cfg: AnalysisConfig, models: Models, key: str,
                 keys: dict[str, str]) -> tuple[ShardedWriter, dict[str, list[int]]]:
    params = tune_params(cfg, models)
    shards = unit_shards(params["units"], cfg.tuning.shard_size)
    writer = store_for(cfg).sharded(
        "tune", key, list(shards), params=params, code_version=VERSIONS["tune"],
        inputs={k: keys[k] for k in _UPSTREAM} | models.keys)
    return writer, shards


@task(name="tune-shard", cache_key_fn=by_content_key, persist_result=True,
      cache_result_in_memory=False, task_run_name="tune-{shard}", tags={GPU_TAG},
      **IO_RETRIES)
def tune_shard(config: dict[str, Any], key: str, shard: str, keys: dict[str, str]) -> dict:
    """Tune one shard of units: calibrated steps, trajectories, closed-loop response, parts and
    measurements."""
    cfg = as_config(config)
    models = models_for(cfg)
    writer, shards = _tune_writer(cfg, models, key, keys)
    if shard in writer.committed():
        return {"shard": shard, "computed": False}
    t0 = time.perf_counter()
    inp = _tuning_inputs(cfg, models, keys)
    units = torch.tensor(shards[shard])
    values = step_values(inp["low"][units], inp["high"][units], cfg.tuning.steps)  # [U, S]
    offsets = unit_offsets(values.to(inp["r"].device), inp["r"][:, units]).cpu()
    readout = torch.nn.functional.one_hot(units, inp["r"].shape[1]).float()
    spans = inp["high"][units] - inp["low"][units]
    probe = unit_offsets(values[:, [0, -1]].to(inp["r"].device), inp["probe_r"][:, units]).cpu()
    total = _calibration_images(cfg, len(units), probe.shape[1]) + offsets.numel()
    with progress(total, f"tune {shard}") as update, writer.shard(shard) as out:
        calibration = _calibrate(cfg, models, inp, inp["directions"][:, units].T, readout,
                                 spans, probe, update=update)

        def run(on_images: Callable[..., None] | None = None) -> TuneResult:
            return _run(cfg, models, inp, calibration["step"], readout, offsets, update,
                        on_images)

        # the images are written while the trajectories render
        res = (run_streamed(out, len(units), len(inp["picks"]), run)
               if cfg.tuning.store_images else run())
        set_value = values[:, None, :].expand_as(res.offset).contiguous()
        _write_result(out, units.numpy(), "unit", res, set_value, inp, calibration)
        out.info["parts"] = inp["parts"]
        out.timings["compute_s"] = round(time.perf_counter() - t0, 3)
        out.info["images_per_s"] = round(res.offset.numel() / (time.perf_counter() - t0), 1)
    return {"shard": shard, "computed": True}


@task(name="tune-finalize", cache_key_fn=by_content_key, persist_result=True,
      task_run_name="tune-finalize")
def tune_finalize(config: dict[str, Any], key: str, keys: dict[str, str],
                  shards: list[Any]) -> dict[str, Any]:
    cfg = as_config(config)
    models = models_for(cfg)
    store = store_for(cfg)
    if store.exists("tune", key):
        return {"stage": "tune", "key": key, "computed": False}
    writer, plan = _tune_writer(cfg, models, key, keys)
    writer.finalize(info={"units": sum(len(units) for units in plan.values())})
    return {"stage": "tune", "key": key, "computed": True}


def _null_writer(cfg: AnalysisConfig, models: Models, key: str,
                 keys: dict[str, str]) -> tuple[ShardedWriter, dict[str, range]]:
    shards = null_shards(cfg, models)
    writer = store_for(cfg).sharded(
        "null", key, list(shards), params=null_params(cfg, models), code_version=VERSIONS["null"],
        inputs={k: keys[k] for k in _UPSTREAM} | models.keys)
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
    inp = _tuning_inputs(cfg, models, keys, per_class=cfg.tuning.null_samples_per_class)
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
    total = _calibration_images(cfg, len(mine), probe.shape[1]) + offsets.numel()
    with progress(total, f"null {shard}") as update, writer.shard(shard) as out:
        calibration = _calibrate(cfg, models, inp, latent_dirs, dirs, null_spans, probe,
                                 predicted=predicted[mine], update=update)
        res = _run(cfg, models, inp, calibration["step"], dirs, offsets, update)
        _write_result(out, mine.numpy(), "direction", res, res.offset, inp, calibration)
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
