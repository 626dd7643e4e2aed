"""Stage 3's tuned units, in shards: each shard calibrates its units' steps, then renders,
re-encodes, segments and measures them in one pass and commits on its own, so a killed run
resumes at the next unfinished shard. ``stage_keys`` gives the content keys of every stage-3
artifact (ranges, directions, segmenter, tune, null)."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from prefect import task

from linkstyle_core.config import AnalysisConfig, resolve_units
from linkstyle_core.progress import progress
from linkstyle_core.tuning import TuneResult, step_values, unit_offsets
from storage import ArtifactWriter, ShardedWriter, content_key
from tasks.caching import GPU_TAG, IO_RETRIES, by_content_key
from tasks.context import Models, as_config, models_for, resolve_classes, store_for
from tasks.directions import VERSIONS as RANGE_VERSIONS
from tasks.directions import directions_params, ranges_params
from tasks.null import VERSION as NULL_VERSION
from tasks.null import null_params
from tasks.segmenter import VERSION as SEGMENTER_VERSION
from tasks.segmenter import segmenter_inputs, segmenter_params
from tasks.trajectories import (
    UPSTREAM,
    calibrate,
    calibration_images,
    step_params,
    tune_directions,
    tuning_inputs,
    write_result,
)

VERSION = "6"


def tune_params(config: AnalysisConfig, models: Models) -> dict[str, Any]:
    t = config.tuning
    return {
        "units": resolve_units(t.units, models.classifier.feature_dim), "steps": t.steps,
        "samples_per_class": t.samples_per_class, "classes": resolve_classes(config, models),
        "shard_size": t.shard_size, "store_images": t.store_images,
        "precision": config.runtime.precision, **step_params(config),
    }


def unit_shards(units: list[int], shard_size: int) -> dict[str, list[int]]:
    """Shard id -> units, in order: 'units-0000-0063', ..."""
    out = {}
    for i in range(0, len(units), shard_size):
        chunk = units[i:i + shard_size]
        out[f"units-{chunk[0]:04d}-{chunk[-1]:04d}"] = chunk
    return out


def stage_keys(config: AnalysisConfig, models: Models, link_key: str,
               paired: dict[str, str]) -> dict[str, str]:
    """The content keys of stage 3's artifacts, from the link's and the paired data's."""
    ranges = content_key("ranges", RANGE_VERSIONS["ranges"], ranges_params(config),
                         {"train": paired["train"]})
    directions = content_key("directions", RANGE_VERSIONS["directions"],
                             directions_params(config),
                             {"link": link_key, "train": paired["train"]})
    segmenter = content_key("segmenter", SEGMENTER_VERSION, segmenter_params(config),
                            segmenter_inputs(config, models))
    upstream = {"link": link_key, "ranges": ranges, "directions": directions,
                "test": paired["test"], "segmenter": segmenter, **models.keys}
    return {
        "ranges": ranges, "directions": directions, "segmenter": segmenter,
        "tune": content_key("tune", VERSION, tune_params(config, models), upstream),
        "null": content_key("null", NULL_VERSION, null_params(config, models), upstream),
    }


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


def _tune_writer(cfg: AnalysisConfig, models: Models, key: str,
                 keys: dict[str, str]) -> tuple[ShardedWriter, dict[str, list[int]]]:
    params = tune_params(cfg, models)
    shards = unit_shards(params["units"], cfg.tuning.shard_size)
    writer = store_for(cfg).sharded(
        "tune", key, list(shards), params=params, code_version=VERSION,
        inputs={k: keys[k] for k in UPSTREAM} | models.keys)
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
    inp = tuning_inputs(cfg, models, keys)
    units = torch.tensor(shards[shard])
    values = step_values(inp["low"][units], inp["high"][units], cfg.tuning.steps)  # [U, S]
    offsets = unit_offsets(values.to(inp["r"].device), inp["r"][:, units]).cpu()
    readout = torch.nn.functional.one_hot(units, inp["r"].shape[1]).float()
    spans = inp["high"][units] - inp["low"][units]
    probe = unit_offsets(values[:, [0, -1]].to(inp["r"].device), inp["probe_r"][:, units]).cpu()
    total = calibration_images(cfg, len(units), probe.shape[1]) + offsets.numel()
    with progress(total, f"tune {shard}") as update, writer.shard(shard) as out:
        calibration = calibrate(cfg, models, inp, inp["directions"][:, units].T, readout,
                                 spans, probe, update=update)

        def run(on_images: Callable[..., None] | None = None) -> TuneResult:
            return tune_directions(cfg, models, inp, calibration["step"], readout, offsets, update,
                        on_images)

        # the images are written while the trajectories render
        res = (run_streamed(out, len(units), len(inp["picks"]), run)
               if cfg.tuning.store_images else run())
        set_value = values[:, None, :].expand_as(res.offset).contiguous()
        write_result(out, units.numpy(), "unit", res, set_value, inp, calibration)
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
