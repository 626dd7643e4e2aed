"""Choose and check the generator and classifier named by the configuration.

Adapters are a dict registry keyed by ``kind`` (DESIGN.md, "Adapters"): ``toy`` (bundled),
``stylegan-xl`` (``models.stylegan_xl``, with ``stylegan_checkout`` and ``stylegan_ops``),
``torchvision``/``timm`` (``models.pretrained``, split by ``models.classifiers``), and
``python``, which loads any ``package.module:factory`` whose result satisfies the protocol.
Adapter modules are imported when their kind is used, so timm stays optional.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import inspect
import numbers
import os
import sys
from collections.abc import Callable
from typing import Any

import torch

from linkstyle_core.config import ClassifierConfig, GeneratorConfig
from linkstyle_core.models.errors import ModelError
from linkstyle_core.models.protocols import Classifier, Generator

_GENERATOR_ATTRS = ("z_dim", "c_dim", "w_dim", "num_ws", "resolution", "mapping", "synthesis",
                    "features")
_CLASSIFIER_ATTRS = ("num_classes", "feature_dim", "preprocess", "features", "head")
_DIMS = {"generator": ("z_dim", "c_dim", "w_dim", "num_ws", "resolution"),
         "classifier": ("num_classes", "feature_dim")}


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
    not_counts = [f"{a}={getattr(obj, a)!r}" for a in _DIMS[kind]
                  if hasattr(obj, a) and not _is_count(getattr(obj, a))]
    if missing or not_callable or not_counts:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing)}")
        if not_callable:
            parts.append(f"not callable: {', '.join(not_callable)}")
        if not_counts:
            parts.append(f"not a non-negative int: {', '.join(not_counts)}")
        raise ModelError(
            f"the {kind} ({type(obj).__name__}) does not satisfy the {kind.capitalize()} "
            f"protocol: {'; '.join(parts)} (see linkstyle_core/models/protocols.py)"
        )


def _is_count(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and int(value) >= 0


def check_compatible(
    generator: Generator,
    classifier: Classifier,
    link_coef_shape: tuple[int, ...] | None = None,
    paired_r_dim: int | None = None,
    paired_w_dim: int | None = None,
) -> None:
    """Refuse models that do not fit each other or the stored data, before any work is done.

    ``link_coef_shape``: shape of a stored link's ``A`` ([w_dim, D]); ``paired_r_dim`` /
    ``paired_w_dim``: the widths of stored paired ``r`` / ``w``. Raises ``ModelError`` naming
    every mismatch with both numbers and the fix.
    """
    problems = []
    c_dim, num_classes = int(generator.c_dim), int(classifier.num_classes)
    if c_dim > num_classes:
        problems.append(
            f"the generator has {c_dim} classes but the classifier only {num_classes}: pair "
            f"models trained on the same label set (e.g. both ImageNet-1k)"
        )
    w_dim, feature_dim = int(generator.w_dim), int(classifier.feature_dim)
    stored = "rerun the stage with these models (it gets a new artifact key) or configure the " \
             "models the stored results were made with"
    if link_coef_shape is not None:
        shape = tuple(int(n) for n in link_coef_shape)
        if shape != (w_dim, feature_dim):
            problems.append(
                f"the stored link maps r of {shape[-1]} units to w of {shape[0]} dims "
                f"(coef shape {shape}), but the classifier has {feature_dim} units and the "
                f"generator w_dim {w_dim} (expected coef shape {(w_dim, feature_dim)}): {stored}"
            )
    if paired_r_dim is not None and int(paired_r_dim) != feature_dim:
        problems.append(
            f"the stored paired data has r of {paired_r_dim} units but the classifier has "
            f"{feature_dim}: {stored}"
        )
    if paired_w_dim is not None and int(paired_w_dim) != w_dim:
        problems.append(
            f"the stored paired data has w of {paired_w_dim} dims but the generator has "
            f"w_dim {w_dim}: {stored}"
        )
    if problems:
        raise ModelError("the models do not fit: " + "; ".join(problems))


def _toy_generator(cfg: GeneratorConfig, device: torch.device, **_: Any) -> Generator:
    from linkstyle_core.models.toy import load_toy_generator

    return load_toy_generator(device)


def _toy_classifier(cfg: ClassifierConfig, device: torch.device) -> Classifier:
    """The bundled toy classifier, a bundled variant (``classifier.weights: mixed``), or the
    toy classifier weight file ``classifier.weights`` (``linkstyle toy train-classifier --out
    FILE``)."""
    from linkstyle_core.models.toy import toy_classifier_file
    from linkstyle_core.toyworld.checkpoint import load_classifier as load_toy_file

    path = toy_classifier_file(cfg.weights)
    if not path.is_file():
        raise ModelError(
            f"classifier.weights: no toy classifier file at {path}; write one with `linkstyle "
            f"toy train-classifier --out {path}`, or leave classifier.weights unset for the "
            "bundled toy classifier ('mixed' for its bundled variant)"
        )
    try:
        return load_toy_file(path, device)
    except ValueError as exc:
        raise ModelError(f"classifier.weights: {exc}; classifier.kind 'toy' reads weight "
                         "files of `linkstyle toy train-classifier --out FILE`") from None


def _python_model(cfg: GeneratorConfig | ClassifierConfig, device: torch.device, section: str):
    assert cfg.target is not None
    factory = _import_target(cfg.target, section)
    try:
        inspect.signature(factory).bind(device=device)
    except TypeError:
        raise ModelError(
            f"{section}.target {cfg.target!r}: the factory must accept a keyword argument "
            f"device (factory(device=torch.device) -> {section}), its signature is "
            f"{cfg.target.partition(':')[2]}{inspect.signature(factory)}"
        ) from None
    except ValueError:  # no signature to inspect (some builtins): just call it
        pass
    return factory(device=device)


def _stylegan_xl(cfg: GeneratorConfig, device: torch.device, open_uri: Any = None) -> Generator:
    from linkstyle_core.models.stylegan_xl import load_stylegan_xl

    assert cfg.network is not None and cfg.source is not None  # GeneratorConfig checks
    return load_stylegan_xl(cfg.network, cfg.source, device, ops=cfg.ops, open_uri=open_uri)


def _torchvision(cfg: ClassifierConfig, device: torch.device) -> Classifier:
    from linkstyle_core.models.pretrained import load_torchvision

    assert cfg.name is not None  # ClassifierConfig checks
    return load_torchvision(cfg.name, cfg.weights, device)


def _timm(cfg: ClassifierConfig, device: torch.device) -> Classifier:
    from linkstyle_core.models.pretrained import load_timm

    assert cfg.name is not None
    return load_timm(cfg.name, cfg.weights, device)


# A generator factory takes (cfg, device, open_uri=None); open_uri opens network URIs
# (s3://, gs://) and is given by the edge, e.g. fsspec.open (linkstyle_core reads local files).
GENERATORS: dict[str, Callable[..., Generator]] = {
    "toy": _toy_generator,
    "stylegan-xl": _stylegan_xl,
    "python": lambda cfg, device, **_: _python_model(cfg, device, "generator"),
}
CLASSIFIERS: dict[str, Callable[[ClassifierConfig, torch.device], Classifier]] = {
    "toy": _toy_classifier,
    "torchvision": _torchvision,
    "timm": _timm,
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


def load_generator(cfg: GeneratorConfig, device: torch.device, open_uri: Any = None) -> Generator:
    """The configured generator on ``device``, checked against the protocol.

    ``open_uri``: how to open a ``generator.network`` URI (e.g. ``fsspec.open``); local paths
    need none.
    """
    generator = _lookup(GENERATORS, cfg.kind, "generator")(cfg, device, open_uri=open_uri)
    check_protocol(generator, "generator")
    return generator


def load_classifier(cfg: ClassifierConfig, device: torch.device) -> Classifier:
    """The configured classifier on ``device``, checked against the protocol."""
    classifier = _lookup(CLASSIFIERS, cfg.kind, "classifier")(cfg, device)
    check_protocol(classifier, "classifier")
    return classifier


def class_names(classifier: Any) -> list[str]:
    """The classifier's class names: its ``class_names`` attribute when that names every class
    (the toy species; ImageNet categories from torchvision weights or a checkpoint that stores
    them), else the class indices as text."""
    n = int(classifier.num_classes)
    names = getattr(classifier, "class_names", None)
    if isinstance(names, (list, tuple)) and len(names) == n \
            and all(isinstance(x, str) and x for x in names):
        return list(names)
    return [str(i) for i in range(n)]


def modules_of(model: Any) -> list[torch.nn.Module]:
    """The torch modules behind a model: itself, or those an adapter object holds."""
    if isinstance(model, torch.nn.Module):
        return [model]
    return [v for v in getattr(model, "__dict__", {}).values() if isinstance(v, torch.nn.Module)]


def fingerprint(model: Any, spec: str) -> str:
    """A content hash of a model: its parameters and buffers if it exposes a state dict.

    Cache keys of every stage depend on it, so retrained weights invalidate stored results
    while reloading the same weights does not. ``spec`` (the config) is mixed in so that two
    models with equal weights but different adapters stay apart.
    """
    digest = hashlib.sha256(spec.encode())
    for module in modules_of(model):
        for name, tensor in sorted(module.state_dict().items()):
            flat = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
            digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
            digest.update(flat.numpy().tobytes())
    return digest.hexdigest()[:20]
