"""The analysis configuration: typed, validated once, loaded from YAML at the edge.

One pydantic model per stage, composed into ``AnalysisConfig``. The defaults describe the
bundled toy world, so ``AnalysisConfig()`` is a complete, runnable analysis. Any invalid value
raises ``ConfigError`` whose message names the field, the allowed values and what was given.

Parsing is strict: a YAML key given twice, a file that is not UTF-8, a bool where a number
belongs (``true`` as a count), a string where a number belongs, ``.inf`` or ``.nan`` are all
refused, and every count has an upper bound no real analysis reaches (named in its field's
description), so a typo such as ``samples_per_class: 1e30`` fails at once instead of hours in.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from linkstyle_core.config.errors import MAX_COUNT, MAX_SAMPLES, MAX_SEED, ConfigError
from linkstyle_core.config.units import parse_units, resolve_units
from linkstyle_core.config.yaml_file import read_yaml

__all__ = ["MAX_COUNT", "MAX_SAMPLES", "MAX_SEED", "MIN_NULL_DIRECTIONS", "AnalysisConfig",
           "ClassifierConfig", "ConfigError", "CounterfactualConfig", "DataConfig",
           "GeneratorConfig", "LinkConfig", "RuntimeConfig", "SegmentConfig", "TuningConfig",
           "parse_units", "resolve_units"]


class _Section(BaseModel):
    # strict: no bool or string where a number belongs, no float where an int belongs (an int
    # is still a valid float); allow_inf_nan: every float is finite
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, strict=True,
                              allow_inf_nan=False)


class GeneratorConfig(_Section):
    """Which generator to analyse (DESIGN.md, "Adapters")."""

    kind: Literal["toy", "stylegan-xl", "python"] = "toy"
    network: str | None = Field(None, description="stylegan-xl: network pickle path or fsspec URI")
    source: str | None = Field(None, description="stylegan-xl: path of your StyleGAN-XL checkout")
    target: str | None = Field(None, description="python: 'package.module:factory'")
    ops: Literal["auto", "cuda", "ref"] = Field(
        "auto", description="stylegan-xl custom ops: auto (CUDA plugins, else reference), cuda, ref"
    )

    @model_validator(mode="after")
    def _needs(self) -> GeneratorConfig:
        if self.kind == "stylegan-xl" and (not self.network or not self.source):
            raise ValueError(
                "generator.kind 'stylegan-xl' needs generator.network (the network pickle) and "
                "generator.source (the path of your StyleGAN-XL code checkout)"
            )
        if self.kind == "python":
            _check_target(self.target, "generator")
        return self


class ClassifierConfig(_Section):
    """Which classifier to analyse."""

    kind: Literal["toy", "torchvision", "timm", "python"] = "toy"
    name: str | None = Field(None, description="torchvision/timm model name, e.g. resnet50")
    weights: str | None = Field(
        None, description="torchvision weights enum name (e.g. IMAGENET1K_V2) or a local file; "
        "toy: a weight file of `linkstyle toy train-classifier --out FILE`, or 'mixed' for the "
        "bundled classifier whose units are mostly not part-selective (default: bundled)"
    )
    target: str | None = Field(None, description="python: 'package.module:factory'")

    @model_validator(mode="after")
    def _needs(self) -> ClassifierConfig:
        if self.kind in ("torchvision", "timm") and not self.name:
            raise ValueError(f"classifier.kind {self.kind!r} needs classifier.name (e.g. resnet50)")
        if self.kind == "python":
            _check_target(self.target, "classifier")
        return self


def _check_target(target: str | None, section: str) -> None:
    if not target or not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", target):
        raise ValueError(
            f"{section}.kind 'python' needs {section}.target as 'package.module:factory', "
            f"got {target!r}"
        )


class DataConfig(_Section):
    """Stage 1, paired data: which classes, how many correctly classified samples, seeds."""

    classes: Literal["all"] | list[int] = Field(
        "all", description="class indices of the generator/classifier, or 'all'"
    )
    samples_per_class: int = Field(200, ge=1, le=MAX_SAMPLES,
                                   description="training pairs kept per class (at most 100000)")
    test_samples_per_class: int = Field(
        50, ge=1, le=MAX_SAMPLES, description="held-out pairs kept per class (at most 100000)")
    truncation: float = Field(0.7, gt=0.0, le=1.0, description="truncation psi towards w_avg[c]")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="run seed, 0 to 2**32-1; latent seeds "
                      "come from (seed, class, index)")
    max_attempts_factor: float = Field(
        8.0, ge=1.0, le=1000.0,
        description="give up on a class after this many times the requested draws (at most 1000)"
    )
    min_acceptance: float = Field(
        0.05, ge=0.0, le=1.0, description="a class accepted less often than this is an error"
    )

    @field_validator("classes")
    @classmethod
    def _classes(cls, v: Any) -> Any:
        if isinstance(v, list):
            if not v:
                raise ValueError("classes must name at least one class, or be 'all'")
            if any(c < 0 for c in v):
                raise ValueError("class indices must be >= 0")
            if len(set(v)) != len(v):
                raise ValueError("class indices must not repeat")
        return v


class LinkConfig(_Section):
    """Stage 2, the linear link w ~ A r + b."""

    type: Literal["lr", "ridge", "elasticnet"] = "ridge"
    alpha: float = Field(
        1000.0, ge=0.0,
        description="regularisation strength (ridge, elasticnet); see docs/link.md for why the "
        "toy default is strong",
    )
    l1_ratio: float = Field(0.5, ge=0.0, le=1.0, description="elasticnet mixing, 1 = lasso")


#: the fewest null directions (the probes every unit's sensitivity profile is regressed on)
MIN_NULL_DIRECTIONS = 20


class TuningConfig(_Section):
    """Stages 3-4: which units to tune, over how many steps, on how many held-out samples."""

    units: Literal["all"] | int | str | list[int | str] = Field(
        "all", description="'all', an index, a list, or ranges like '0-127,200'"
    )
    steps: int = Field(3, ge=2, le=1000, description="values spanning each unit's range (2-1000)")
    samples_per_class: int = Field(4, ge=1, le=MAX_SAMPLES,
                                   description="held-out samples tuned per class (at most 100000)")
    range: Literal["minmax", "percentile"] = "minmax"
    # not strict: a YAML/JSON list is the natural way to write a pair
    percentiles: tuple[float, float] = Field((1.0, 99.0), strict=False,
                                             description="with range: percentile")
    direction: Literal["link", "ridge", "crosscov"] = Field(
        "ridge", description="each unit's direction in W: the link's column A[:, u] (the paper), "
        "a ridge column with direction_alpha, or the cross-covariance of w and r "
        "(docs/tuning.md)",
    )
    direction_alpha: float = Field(
        1e4, gt=0.0, description="with direction: ridge, its alpha (independent of link.alpha)"
    )
    direction_centring: Literal["global", "class"] = Field(
        "class", description="with direction: ridge or crosscov, centre r and w on their class "
        "means (class: what a unit tracks within a class, not what its class differs in) or on "
        "the overall mean (global)",
    )
    step: Literal["range", "calibrated"] = Field(
        "calibrated", description="range: latent step = offset x direction, over the unit's "
        "range (the paper); calibrated: scaled so that the re-encoded unit follows the value set",
    )
    calibration_samples_per_class: int = Field(
        1, ge=0, description="with step: calibrated, held-out samples per class on which each "
        "direction's gain is measured by rendering (0: the linear prediction alone)",
    )
    max_latent_step: float = Field(
        3.0, gt=0.0, le=1000.0, description="with step: calibrated, the largest latent move over "
        "a whole trajectory, in units of the within-class spread of w (at most 1000)",
    )
    shard_size: int = Field(64, ge=1, le=MAX_COUNT,
                            description="units per shard (each commits on its own; at most 10**6)")
    null_directions: int = Field(
        1024, le=MAX_SAMPLES, description="random r-space directions tuned as probes: every "
        "unit's sensitivity profile is regressed on their part changes (docs/tuning.md; "
        f"{MIN_NULL_DIRECTIONS} to 100000)",
    )
    null_shard_size: int = Field(
        128, ge=1, le=MAX_COUNT, description="null directions per shard (each commits on its "
        "own, so a killed run loses at most one; rounded up to whole batches, so the numbers "
        "do not depend on it; at most 10**6)",
    )
    null_samples_per_class: int = Field(
        2, ge=1, description="held-out samples per class on which the null directions are tuned "
        "(at most samples_per_class)",
    )
    min_part_area: float = Field(
        0.001, ge=0.0, lt=1.0, description="a part smaller than this share of a sample's base "
        "image is not scored on that sample",
    )
    store_images: bool = Field(True, description="keep the tuned images (uint8) in the store")
    seed: int = Field(0, ge=0, le=MAX_SEED,
                      description="seed of the null directions and of the random read-outs "
                      "(0 to 2**32-1)")

    @field_validator("units")
    @classmethod
    def _units(cls, v: Any) -> Any:
        parse_units(v)
        return v

    @field_validator("null_directions")
    @classmethod
    def _null_directions(cls, v: int) -> int:
        if v < MIN_NULL_DIRECTIONS:
            raise ValueError(
                f"must be at least {MIN_NULL_DIRECTIONS}, got {v}: the null directions are "
                "the probes every unit's sensitivity profile is regressed on, and with fewer "
                f"than {MIN_NULL_DIRECTIONS} the profiles are noise; raise it (the default "
                "is 1024)")
        return v

    @model_validator(mode="after")
    def _samples(self) -> TuningConfig:
        if self.null_samples_per_class > self.samples_per_class:
            raise ValueError(
                f"null_samples_per_class ({self.null_samples_per_class}) must not exceed "
                f"samples_per_class ({self.samples_per_class}): the null directions are tuned "
                "on a subset of the units' samples"
            )
        if self.calibration_samples_per_class > self.samples_per_class:
            raise ValueError(
                f"calibration_samples_per_class ({self.calibration_samples_per_class}) must not "
                f"exceed samples_per_class ({self.samples_per_class})"
            )
        return self

    @field_validator("percentiles")
    @classmethod
    def _percentiles(cls, v: tuple[float, float]) -> tuple[float, float]:
        lo, hi = v
        if not 0.0 <= lo < hi <= 100.0:
            raise ValueError("percentiles must satisfy 0 <= low < high <= 100")
        return v


class SegmentConfig(_Section):
    """Stage 4: the few-shot part segmenter."""

    parts: list[str] | None = Field(
        None, description="part names, label 0 first (default: the toy world's parts)"
    )
    labels: str | None = Field(
        None, description="folder prepared by `linkstyle labels export/import` (real generators)"
    )
    labelled_images: int = Field(32, ge=2, le=MAX_SAMPLES,
                                 description="labelled images used for training (at most 100000)")
    steps: int = Field(300, ge=1, le=MAX_COUNT, description="training steps (at most 10**6)")
    hidden: int = Field(32, ge=4, le=4096, description="channels of the segmenter (4-4096)")
    kernel: int = Field(1, ge=1, le=7, description="head kernel size (1 = per-pixel MLP)")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="seed of the segmenter (0 to 2**32-1)")

    @field_validator("parts")
    @classmethod
    def _parts(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and (len(v) < 2 or len(set(v)) != len(v)):
            raise ValueError("parts must list at least 2 distinct names, background first")
        return v


class CounterfactualConfig(_Section):
    """Stage 5: counterfactuals from an origin to a target class."""

    samples: int = Field(8, ge=1, le=MAX_SAMPLES,
                         description="held-out samples of the origin class per pair (at most "
                         "100000)")
    max_steps: int = Field(300, ge=1, le=MAX_COUNT,
                           description="optimisation steps per batch of pairs (at most 10**6)")
    check_every: int = Field(10, ge=1, le=MAX_COUNT,
                             description="render and re-classify every k steps")
    lr: float = Field(0.05, gt=0.0, le=100.0,
                      description="Adam learning rate on the shift of r (finite, at most 100)")
    weight_similarity: float = Field(
        10.0, ge=0.0, description="weight of 1 - cos(link(r), link(r - s))"
    )
    weight_l1: float = Field(0.0, ge=0.0, description="weight of the mean |s| (sparsity)")
    top_units: int = Field(10, ge=1, le=MAX_SAMPLES,
                           description="units reported per pair and class pair")


class RuntimeConfig(_Section):
    """Where and how tensors are computed."""

    device: str = Field("auto", description="auto, cpu, cuda, cuda:N or mps")
    precision: Literal["fp32", "fp16", "bf16"] = Field(
        "fp32", description="autocast precision of generator and classifier calls"
    )
    batch_size: int = Field(256, ge=1, le=65536,
                            description="images per generator/classifier call (at most 65536)")
    channels_last: bool = Field(
        True, description="classifier convolutions in channels_last layout (CUDA only)"
    )
    compile: bool = Field(
        False, description="torch.compile the classifier: measured 2.3x faster on a CPU after "
        "~20 s of compiling per process, so off by default (short runs); results differ in "
        "the last bits, so they are cached apart"
    )

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v):
            raise ValueError("device must be auto, cpu, cuda, cuda:N or mps")
        return v


class AnalysisConfig(_Section):
    """The whole analysis. ``AnalysisConfig()`` is the toy-world default."""

    generator: GeneratorConfig = GeneratorConfig()
    classifier: ClassifierConfig = ClassifierConfig()
    data: DataConfig = DataConfig()
    link: LinkConfig = LinkConfig()
    tuning: TuningConfig = TuningConfig()
    segment: SegmentConfig = SegmentConfig()
    counterfactual: CounterfactualConfig = CounterfactualConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    artifact_root: str = Field(
        "artifacts", min_length=1, description="local folder or fsspec URI (s3://, gs://, memory://)"
    )

    @classmethod
    def from_yaml(cls, path: str | Path) -> AnalysisConfig:
        """Load and validate a YAML file; missing sections keep their defaults."""
        path = Path(path)
        raw = read_yaml(path) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections at the top")
        return cls.from_dict(raw, source=str(path))

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config") -> AnalysisConfig:
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            raise ConfigError(_explain(exc, source)) from None

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _allowed_fields(loc: tuple[Any, ...]) -> list[str]:
    model: Any = AnalysisConfig
    for part in loc[:-1]:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None or not isinstance(field.annotation, type):
            return []
        model = field.annotation
    return list(model.model_fields) if hasattr(model, "model_fields") else []


def _explain(exc: ValidationError, source: str) -> str:
    lines = [f"{source}: {exc.error_count()} invalid value(s)"]
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
        where = ".".join(str(p) for p in loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            allowed = _allowed_fields(loc)
            close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            lines.append(f"  {where}: unknown field{hint} (allowed: {', '.join(allowed)})")
            continue
        msg = err["msg"].removeprefix("Value error, ")
        got = err.get("input")
        shown = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  {where}: {msg}{shown}")
    return "\n".join(lines)
