"""The state behind ``linkstyle explore``: a finished run opened once with its models, and the
frames the page asks for (``flows.explore.server`` serves them).

Opened once: the units table and the run's significance line (``RunView``, as
``linkstyle unit`` and the report read them), the link, each unit's direction in W and
calibrated step (``directions`` and ``tune``'s ``step_scale``), its tuned range (``ranges``), the
part segmenter (``segmenter``), the held-out samples (``paired`` test split) and the models,
checked to be the ones the run was made with. A frame is ``linkstyle_core.explore``'s: the
stages' own render, segment and re-encode.

Frames render one at a time (``_render``). A request carries its client's id and a sequence
number; one that a newer request of the same client has overtaken while it waited is dropped
(409), never rendered: while a slider moves, only its newest position costs time.
"""

from __future__ import annotations

import base64
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from flows.web.app import HTTPError
from linkstyle_core.config import AnalysisConfig
from linkstyle_core.explore import (
    Frame,
    difference_png,
    frame,
    fresh_sample,
    image_png,
    outlines_png,
    path_latent,
    unit_latent,
)
from linkstyle_core.labels import part_colours
from linkstyle_core.models.registry import ModelError, check_compatible
from storage import ArtifactStore
from tasks.context import Models
from tasks.link import load_link
from tasks.segmenter import load_segmenter
from tasks.unit_view import RunView

MAX_UNITS = 4  # units moved at once
SHOWN = 224  # pixels the page shows an image at; outlines are drawn near that size


class RunMismatch(ValueError):
    """The models loaded are not the ones the run was made with; the message names the fix."""


@dataclass
class Sample:
    """A sample to explore: its activations r [D], linked latent w0 [w_dim], class and name."""

    key: str
    r: torch.Tensor
    w0: torch.Tensor
    label: int
    name: str


def _data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


class ExploreSession:
    """One run, opened for the page. ``keys``: the run's stage keys; ``run_id``: its id."""

    def __init__(self, store: ArtifactStore, keys: dict[str, str], models: Models,
                 config: AnalysisConfig, run_id: str) -> None:
        self.run_id, self.models, self.config = run_id, models, config
        self.view = RunView(store, keys, images=False)
        tuned = self.view.tuned
        for name, key in models.keys.items():
            made_with = tuned.manifest.inputs.get(name)
            if made_with is not None and made_with != key:
                raise RunMismatch(
                    f"the {name} loaded (key {key}) is not the one run {run_id} was made with "
                    f"({made_with}); pass the config that run used (--config FILE), or rerun "
                    "`linkstyle run` with these models and explore that run")
        self.link = load_link(store.open("link", keys["link"]))
        try:
            check_compatible(models.generator, models.classifier,
                             link_coef_shape=tuple(self.link.coef_.shape))
        except ModelError as exc:
            raise RunMismatch(f"{exc} (run {run_id}); pass the config that run used") from None
        dev = models.device
        directions = torch.from_numpy(store.open("directions", keys["directions"])
                                      .load("directions"))  # [w_dim, D]
        scale = np.full(directions.shape[1], np.nan, np.float32)
        for piece in [tuned] if not tuned.shards else [tuned.shard(s) for s in tuned.shards]:
            scale[piece.load("unit")] = piece.load("step_scale")
        self.tuned_units = np.flatnonzero(np.isfinite(scale))
        self._tuned = set(self.tuned_units.tolist())
        self.steps = (directions * torch.from_numpy(np.nan_to_num(scale))).T.contiguous().to(dev)
        ranges = store.open("ranges", keys["ranges"])
        self.low, self.high = ranges.load("low"), ranges.load("high")
        seg = store.open("segmenter", keys["segmenter"])
        self.segmenter = load_segmenter(seg, dev)
        self.parts = list(seg.info["parts"])
        self.colours = part_colours(len(self.parts))
        test = store.open("paired", keys["test"])
        self.r_test, self.label_test = test.load("r"), test.load("label")
        self.class_names = models.class_names
        self.rows = self.view.units.set_index("unit")
        self._lock = threading.Lock()  # one frame renders at a time
        self._latest: dict[str, int] = {}
        self._bases: OrderedDict[str, Frame] = OrderedDict()  # samples' own frames
        self._fresh: OrderedDict[str, Sample] = OrderedDict()  # samples of fresh seeds
        self._paths: dict[tuple[str, int], dict[str, Any]] = {}
        self.scale = max(1, SHOWN // models.generator.resolution)

    # -- what the page lists ---------------------------------------------------------------------
    def run_info(self) -> dict[str, Any]:
        g = self.models.generator
        return {
            "run_id": self.run_id, "root": self.config.artifact_root,
            "generator": self.config.generator.kind, "classifier": self.config.classifier.kind,
            "device": str(self.models.device), "resolution": g.resolution,
            "classes": self.class_names,
            "per_class": [int((self.label_test == c).sum()) for c in range(len(self.class_names))],
            "parts": self.parts, "colours": self.colours.tolist(),
            "units": int(self.r_test.shape[1]), "tuned": len(self.tuned_units),
            "shown": SHOWN,
        }

    def unit_list(self) -> list[dict[str, Any]]:
        table = self.view.units
        return [{"unit": int(row.unit), "part": str(row.top_part), "verdict": str(row.verdict),
                 "q": _num(row.specificity_q), "concentration": _num(row.concentration),
                 "gain": _num(row.closed_loop_gain), "weak": bool(row.weak_label)}
                for row in table.itertuples()]

    def check_unit(self, unit: int) -> None:
        if unit not in self._tuned or unit not in self.rows.index:
            raise HTTPError(404, f"unit {unit} was not tuned in run {self.run_id}; its tuned "
                            f"units are {self.tuned_units.min()}-{self.tuned_units.max()} "
                            f"({len(self.tuned_units)} units)")

    def unit_detail(self, unit: int) -> dict[str, Any]:
        """One unit's row, tuned range, the slider's range (half the span below and beyond),
        and its closed loop and sensitivity bars with the significance line (SVG)."""
        from linkstyle_core.figures import unit_charts_svg

        self.check_unit(unit)
        view = self.view.unit(unit)
        row = view["row"]
        low, high = float(self.low[unit]), float(self.high[unit])
        span = max(high - low, 1e-6)
        return {
            "unit": unit, "part": str(row["top_part"]), "verdict": str(row["verdict"]),
            "q": _num(row["specificity_q"]), "p": _num(row["specificity_p"]),
            "concentration": _num(row["concentration"]), "gain": _num(row["closed_loop_gain"]),
            "pixel_change": _num(row["pixel_change"]), "weak": bool(row["weak_label"]),
            "low": low, "high": high, "min": low - span / 2, "max": high + span / 2,
            "shares": {p: _num(v) for p, v in zip(view["part_names"], view["shares"],
                                                  strict=True)},
            "charts": unit_charts_svg(view["set_value"], view["response"], view["shares"],
                                      view["part_names"], view["highlighted"],
                                      view["line"]),
            "strip": self.view.has_images,
        }

    def strip_png(self, unit: int) -> bytes:
        """The unit's stored tuning strips (``figures.unit_strips_png``, as in the report)."""
        from linkstyle_core.figures import unit_strips_png

        self.check_unit(unit)
        if not self.view.has_images:
            raise HTTPError(404, f"run {self.run_id} kept no tuning images "
                            "(tuning.store_images: false)")
        view = self.view.unit(unit)
        return unit_strips_png(view["images"], view["parts"])

    # -- samples ---------------------------------------------------------------------------------
    def sample(self, cls: int, index: int | None = None, seed: int | None = None) -> Sample:
        """A held-out sample (class ``cls``, its ``index``-th of the test split) or a fresh one
        (``seed``); 400/404 naming what exists otherwise."""
        if not 0 <= cls < len(self.class_names):
            raise HTTPError(400, f"class must be 0-{len(self.class_names) - 1}, got {cls}")
        name = self.class_names[cls]
        dev = self.models.device
        if seed is not None:
            key = f"seed-{seed}-{cls}"
            with self._lock:  # drawn once: every frame of the sample asks for it
                if key not in self._fresh:
                    r, w0 = fresh_sample(self.models.generator, self.models.classifier,
                                         self.link, cls, seed, self.config.data.truncation,
                                         self.config.runtime.precision, dev)
                    self._fresh[key] = Sample(key, r, w0, cls, f"{name}, fresh seed {seed}")
                    _bound(self._fresh)
                return self._fresh[key]
        rows = np.flatnonzero(self.label_test == cls)
        if index is None or not 0 <= index < len(rows):
            raise HTTPError(404, f"class {cls} ({name}) has {len(rows)} held-out samples in "
                            f"this run: index 0-{len(rows) - 1}")
        r = torch.from_numpy(self.r_test[rows[index]]).to(dev)
        return Sample(f"class-{cls}-{index}", r, self.link.predict(r[None])[0], cls,
                      f"{name} #{index}")

    def base(self, sample: Sample) -> Frame:
        """The sample's own frame (nothing moved), cached for the difference maps."""
        with self._lock:
            if sample.key not in self._bases:
                self._bases[sample.key] = self._frame(sample.w0)
                _bound(self._bases)
            return self._bases[sample.key]

    # -- frames ----------------------------------------------------------------------------------
    def note(self, client: str, seq: int) -> None:
        """A request of ``client`` numbered ``seq`` has arrived (before it waits to render)."""
        self._latest[client] = max(seq, self._latest.get(client, -1))

    def _frame(self, w: torch.Tensor) -> Frame:
        m = self.models
        return frame(m.generator, m.classifier, self.segmenter, w,
                     self.config.runtime.precision)

    def _render(self, client: str, seq: int, w: torch.Tensor) -> Frame:
        with self._lock:
            if seq < self._latest.get(client, -1):
                raise HTTPError(409, f"request {seq} was superseded by a newer position "
                                f"({self._latest[client]}) before it rendered; dropped")
            return self._frame(w)

    def describe(self, sample: Sample, moved: Frame, base: Frame) -> dict[str, Any]:
        """What the page shows of a frame beside its base: pictures, class probabilities,
        the frame's time."""
        order = np.argsort(-moved.probs)[:10]
        return {
            "sample": sample.name, "label": sample.label,
            "image": _data_url(image_png(moved.image)),
            "outlines": _data_url(outlines_png(moved.parts, self.colours, self.scale)),
            "difference": _data_url(difference_png(moved.image, base.image)),
            "pixel_change": round(float(np.abs(moved.image.astype(np.float32)
                                               - base.image).mean() / 255), 5),
            "probs": [{"class": int(c), "name": self.class_names[c],
                       "p": round(float(moved.probs[c]), 4)} for c in order],
            "predicted": int(order[0]), "frame_ms": round(moved.seconds * 1000, 1),
            "frame_cpu_ms": round(moved.cpu_seconds * 1000, 1),
        }

    def unit_frame(self, sample: Sample, units: list[int], values: list[float], client: str,
                   seq: int) -> dict[str, Any]:
        """The sample with ``units`` set to ``values``."""
        for unit in units:
            self.check_unit(unit)
        base = self.base(sample)
        w = unit_latent(sample.w0, sample.r, units, values, self.steps[units])
        moved = self._render(client, seq, w)
        out = self.describe(sample, moved, base)
        out["units"] = [{"unit": u, "set": round(v, 4), "own": round(float(sample.r[u]), 4),
                         "reencoded": round(float(moved.r[u]), 4),
                         "reencoded_base": round(float(base.r[u]), 4)}
                        for u, v in zip(units, values, strict=True)]
        return out

    # -- counterfactuals (stage 5) ---------------------------------------------------------------
    def counterfactual(self, sample: Sample, target: int) -> dict[str, Any]:
        """The shift of r that moves ``sample`` from its class to ``target``
        (``find_counterfactuals`` with the run's counterfactual settings), found once per sample
        and target: whether it flipped the rendered image, and the units that move most."""
        from linkstyle_core.counterfactual import find_counterfactuals, shift_statistics

        if not 0 <= target < len(self.class_names) or target == sample.label:
            raise HTTPError(400, f"target must be a class other than the sample's own "
                            f"({sample.label}): 0-{len(self.class_names) - 1}, got {target}")
        key = (sample.key, target)
        if key not in self._paths:
            cf, dev = self.config.counterfactual, self.models.device
            with self._lock:
                found = find_counterfactuals(
                    self.models.generator, self.models.classifier, self.link, sample.r[None],
                    torch.tensor([sample.label], device=dev), torch.tensor([target], device=dev),
                    max_steps=cf.max_steps, check_every=cf.check_every, lr=cf.lr,
                    weight_similarity=cf.weight_similarity, weight_l1=cf.weight_l1,
                    precision=self.config.runtime.precision)
            shift = found.shift[0].to(dev)
            top = shift_statistics(found.shift, cf.top_units)["top_units"][0].tolist()
            self._paths[key] = {
                "shift": shift, "success": bool(found.success[0]), "steps": int(found.steps[0]),
                "prob_before": round(float(found.prob_before[0]), 4),
                "prob_after": round(float(found.prob_after[0]), 4),
                "top_units": [self._unit_brief(u, float(shift[u])) for u in top]}
        return {k: v for k, v in self._paths[key].items() if k != "shift"}

    def _unit_brief(self, unit: int, shift: float) -> dict[str, Any]:
        row = self.rows.loc[unit] if unit in self.rows.index else None
        return {"unit": unit, "shift": round(shift, 4),
                "part": None if row is None else str(row["top_part"]),
                "verdict": None if row is None else str(row["verdict"])}

    def path_frame(self, sample: Sample, target: int, t: float, client: str,
                   seq: int) -> dict[str, Any]:
        """The sample at position ``t`` of its counterfactual path to ``target`` (0: itself,
        1: the counterfactual found)."""
        found = self.counterfactual(sample, target)
        shift = self._paths[(sample.key, target)]["shift"]
        base = self.base(sample)
        moved = self._render(client, seq, path_latent(self.link, sample.r, shift, t))
        out = {**self.describe(sample, moved, base), "path": found, "t": t}
        out["units"] = [{"unit": u, "set": round(float(sample.r[u]) - t * b["shift"], 4),
                         "own": round(float(sample.r[u]), 4),
                         "reencoded": round(float(moved.r[u]), 4)}
                        for b in found["top_units"] for u in [b["unit"]]]
        return out


def _bound(cache: OrderedDict[str, Any], size: int = 64) -> None:
    """Keep the newest ``size`` entries of a cache."""
    while len(cache) > size:
        cache.popitem(last=False)


def _num(value: Any) -> float | None:
    value = float(value)
    return round(value, 6) if np.isfinite(value) else None
