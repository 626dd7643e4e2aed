"""Choose and check the generator and classifier named by the configuration.

Adapters are a dict registry keyed by ``kind`` (DESIGN.md, "Adapters"); ``python`` loads any
``package.module:factory`` whose result satisfies the protocol.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import os
import sys
from collections.abc import Callable
from typing import Any

import torch

from linkstyle_core.config import ClassifierConfig, GeneratorConfig
from linkstyle_core.models.protocols import Classifier, Generator

_GENERATOR_ATTRS = ("z_dim", "c_dim", "w_dim", "num_ws", "resolution", "mapping", "synthesis",
                    "features")
_CLASSIFIER_ATTRS = ("num_classes", "feature_dim", "preprocess", "features", "head")


class ModelError(ValueError):
    """A model that cannot be loaded or does not fit the protocol; the message says the fix."""


def _import_target(target: str, section: str) -> Callable[..., Any]:
    module_name, _, attr = target.partition(":")
    if os.getcwd() not in sys.path:  # like `python -m`: modules beside the user's config work
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelError(
            f"{section}.target {target!r}: cannot import module {module_name!r} ({exc}); "
            "make sure it is installed or on PYTHONPATH"
        ) from exc
    factory = getattr(module, attr, None)
    if factory is None:
        names = [n for n in dir(module) if not n.startswith("_")]
        close = difflib.get_close_matches(attr, names, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ModelError(f"{section}.target {target!r}: {module_name} has no {attr!r}{hint}")
    return factory


def check_protocol(obj: Any, kind: str) -> None:
    """Raise ``ModelError`` listing every attribute ``obj`` lacks to be a Generator/Classifier."""
    attrs = _GENERATOR_ATTRS if kind == "generator" else _CLASSIFIER_ATTRS
    missing = [a for a in attrs if not hasattr(obj, a)]
    not_callable = [a for a in ("mapping", "synthesis", "features", "preprocess", "head")
                    if a in attrs and hasattr(obj, a) and not callable(getattr(obj, a))]
    if missing or not_callable:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing)}")
        if not_callable:
            parts.append(f"not callable: {', '.join(not_callable)}")
        raise ModelError(
            f"the {kind} ({type(obj).__name__}) does not satisfy the {kind.capitalize()} "
            f"protocol: {'; '.join(parts)} (see linkstyle_core/models/protocols.py)"
        )


def _toy_generator(cfg: GeneratorConfig, device: torch.device) -> Generator:
    from linkstyle_core.models.toy import load_toy_generator

    return load_toy_generator(device)


def _toy_classifier(cfg: ClassifierConfig, device: torch.device) -> Classifier:
    from linkstyle_core.models.toy import load_toy_classifier

    return load_toy_classifier(device)


def _python_model(cfg: GeneratorConfig | ClassifierConfig, device: torch.device, section: str):
    assert cfg.target is not None
    return _import_target(cfg.target, section)(device=device)


GENERATORS: dict[str, Callable[[GeneratorConfig, torch.device], Generator]] = {
    "toy": _toy_generator,
    "python": lambda cfg, device: _python_model(cfg, device, "generator"),
}
CLASSIFIERS: dict[str, Callable[[ClassifierConfig, torch.device], Classifier]] = {
    "toy": _toy_classifier,
    "python": lambda cfg, device: _python_model(cfg, device, "classifier"),
}


def _lookup(registry: dict[str, Any], kind: str, section: str) -> Any:
    if kind not in registry:
        close = difflib.get_close_matches(kind, list(registry), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ModelError(
            f"{section}.kind {kind!r} is not available in this version{hint}; "
            f"available: {', '.join(sorted(registry))}"
        )
    return registry[kind]


def load_generator(cfg: GeneratorConfig, device: torch.device) -> Generator:
    generator = _lookup(GENERATORS, cfg.kind, "generator")(cfg, device)
    check_protocol(generator, "generator")
    return generator


def load_classifier(cfg: ClassifierConfig, device: torch.device) -> Classifier:
    classifier = _lookup(CLASSIFIERS, cfg.kind, "classifier")(cfg, device)
    check_protocol(classifier, "classifier")
    return classifier


def fingerprint(model: Any, spec: str) -> str:
    """A content hash of a model: its parameters and buffers if it exposes a state dict.

    Cache keys of every stage depend on it, so retrained weights invalidate stored results
    while reloading the same weights does not. ``spec`` (the config) is mixed in so that two
    models with equal weights but different adapters stay apart.
    """
    digest = hashlib.sha256(spec.encode())
    if isinstance(model, torch.nn.Module):
        modules = [model]
    else:  # an adapter object holding one or more modules
        modules = [v for v in getattr(model, "__dict__", {}).values()
                   if isinstance(v, torch.nn.Module)]
    for module in modules:
        for name, tensor in sorted(module.state_dict().items()):
            flat = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
            digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
            digest.update(flat.numpy().tobytes())
    return digest.hexdigest()[:20]
