"""What every task needs besides its inputs: the config, the store, and the loaded models.

Models are not hashable task inputs; each process loads them once per configuration and
identifies them by a content fingerprint that enters the cache keys.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import fsspec
import torch

from linkstyle_core.config import AnalysisConfig, ConfigError
from linkstyle_core.models.protocols import Classifier, Generator
from linkstyle_core.models.registry import (
    check_compatible,
    class_names,
    fingerprint,
    load_classifier,
    load_generator,
    modules_of,
)
from linkstyle_core.runtime import resolve_device
from storage import ArtifactStore


@dataclass(frozen=True)
class Models:
    generator: Generator
    classifier: Classifier
    device: torch.device
    generator_key: str
    classifier_key: str

    @property
    def keys(self) -> dict[str, str]:
        return {"generator": self.generator_key, "classifier": self.classifier_key}

    @property
    def class_names(self) -> list[str]:
        """The classifier's class names (``registry.class_names``: indices when unnamed)."""
        return class_names(self.classifier)


def as_config(config: AnalysisConfig | dict[str, Any] | None) -> AnalysisConfig:
    if isinstance(config, AnalysisConfig):
        return config
    return AnalysisConfig.from_dict(config or {})


def store_for(config: AnalysisConfig) -> ArtifactStore:
    return ArtifactStore(config.artifact_root)


def _channels_last(model: object) -> None:
    """Put the convolution weights of a model (or an adapter's modules) in channels_last
    layout; convolutions then run in that layout, which is faster on recent GPUs."""
    for module in modules_of(model):
        module.to(memory_format=torch.channels_last)


@lru_cache(maxsize=4)
def _load(generator_json: str, classifier_json: str, device_spec: str,
          channels_last: bool = False, compile_classifier: bool = False) -> Models:
    cfg = AnalysisConfig.from_dict({"generator": json.loads(generator_json),
                                    "classifier": json.loads(classifier_json)})
    device = resolve_device(device_spec)
    generator = load_generator(cfg.generator, device, open_uri=fsspec.open)
    classifier = load_classifier(cfg.classifier, device)
    check_compatible(generator, classifier)
    if channels_last and device.type == "cuda":
        _channels_last(classifier)
    if compile_classifier:  # compiled on its first call; its results differ in the last bits
        classifier.features = torch.compile(classifier.features)  # type: ignore[method-assign]
    return Models(
        generator=generator,
        classifier=classifier,
        device=device,
        generator_key=fingerprint(generator, key_spec(generator_json, generator)),
        classifier_key=fingerprint(classifier, classifier_json
                                   + (" compiled" if compile_classifier else "")),
    )


def key_spec(generator_json: str, generator: Any) -> str:
    """The generator config as it enters the cache keys. For the StyleGAN-XL adapter, ``ops``
    is replaced by the implementation synthesis actually runs on (``ops_in_use``), so ``auto``
    and ``ref`` on a CPU (both the reference ops) share their results while the CUDA plugins
    and the reference ops on a GPU do not, and its ``feature_layout`` is added, so feature maps
    cropped differently never meet a segmenter trained on others. Other generators: the config
    unchanged."""
    used = getattr(generator, "ops_in_use", None)
    spec = json.loads(generator_json)
    if used is None or "ops" not in spec:
        return generator_json
    spec["ops"] = used
    spec["features"] = getattr(generator, "feature_layout", "whole")
    return json.dumps(spec, separators=(",", ":"))


def models_for(config: AnalysisConfig) -> Models:
    """The generator and classifier of ``config``, loaded once per process."""
    return _load(config.generator.model_dump_json(), config.classifier.model_dump_json(),
                 config.runtime.device, config.runtime.channels_last, config.runtime.compile)


def resolve_classes(config: AnalysisConfig, models: Models) -> list[int]:
    """The configured classes, checked against the generator's classes."""
    c_dim = models.generator.c_dim
    if config.data.classes == "all":
        return list(range(c_dim))
    bad = [c for c in config.data.classes if c >= c_dim]
    if bad:
        raise ConfigError(
            f"data.classes: class {bad[0]} is out of range; the generator has {c_dim} classes "
            f"(0-{c_dim - 1}); list indices below {c_dim} or set data.classes: all"
        )
    return list(config.data.classes)
