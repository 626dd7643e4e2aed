"""torchvision and timm classifiers from local weights, as ``SplitClassifier``s.

Weights are never downloaded: torchvision weights are read from the torch hub cache
(``torch.hub.get_dir()/checkpoints/``), anything else from a local state-dict file; a missing
file is a ``ModelError`` that says where to put it.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from linkstyle_core.models.classifiers import (
    Preprocessing,
    SplitClassifier,
    last_linear,
    replace_module,
)
from linkstyle_core.models.errors import ModelError

_ENUM_NAME = re.compile(r"[A-Z][A-Z0-9_]*")


def load_state_dict_file(path: str | Path, what: str = "classifier.weights") -> dict[str, Any]:
    """A state dict from a local file (.pt/.pth/.bin via torch.load, or .safetensors).

    Checkpoints that wrap it (``{'state_dict': ...}``, ``{'model': ...}``, ``state_dict_ema``)
    and DataParallel ``module.`` prefixes are unwrapped. Only tensors are loaded (no pickles).
    """
    return read_checkpoint_file(path, what)[0]


def read_checkpoint_file(path: str | Path, what: str = "classifier.weights"
                         ) -> tuple[dict[str, Any], list[str] | None]:
    """``load_state_dict_file``'s state dict, and the class names a wrapping checkpoint
    stores beside it (a list of strings under ``class_names`` or ``categories``), if any."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelError(
            f"{what} file {str(path)!r} does not exist; give the path of a local state-dict "
            f"file (torch.save(model.state_dict(), path) or .safetensors); nothing is downloaded"
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"{what} file {str(path)!r} is not a readable state dict "
                         f"({type(exc).__name__}: {exc})") from exc
    names = None
    for key in ("class_names", "categories"):
        found = state.get(key) if isinstance(state, dict) else None
        if isinstance(found, (list, tuple)) and all(isinstance(x, str) for x in found):
            names = list(found)
            break
    for key in ("state_dict_ema", "state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        raise ModelError(f"{what} file {str(path)!r} does not hold a state dict of tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state, names


def _load_into(model: nn.Module, state: dict[str, Any], source: str, name: str,
               assign: bool = False) -> None:
    """Load ``state`` strictly, first resizing the last Linear to the file's class count.

    ``assign``: take the file's tensors (cast to the model's dtypes) instead of copying into
    the model's, for a model built on the meta device.
    """
    head_name, linear = last_linear(model)
    weight = state.get(f"{head_name}.weight")
    if isinstance(weight, torch.Tensor) and weight.ndim == 2 \
            and weight.shape[0] != linear.out_features and weight.shape[1] == linear.in_features:
        replace_module(model, head_name, nn.Linear(linear.in_features, weight.shape[0],
                                             bias=linear.bias is not None, device=weight.device))
    if assign:
        own = model.state_dict()
        state = {k: v.to(own[k].dtype) if k in own and v.is_floating_point() else v
                 for k, v in state.items()}
    try:
        result = model.load_state_dict(state, strict=False, assign=assign)
    except RuntimeError as exc:  # tensors of the wrong shape
        first = str(exc).strip().splitlines()[1:2] or [str(exc)]
        raise ModelError(f"{source} does not fit {name}: {first[0].strip()}; is it a "
                         f"checkpoint of {name}?") from exc
    if result.missing_keys or result.unexpected_keys:
        raise ModelError(
            f"{source} does not fit {name}: missing keys {result.missing_keys[:5]}, "
            f"unexpected keys {result.unexpected_keys[:5]}; is it a checkpoint of {name}?"
        )


def build_and_load(build: Callable[[], nn.Module], state: dict[str, Any], source: str,
                    name: str) -> nn.Module:
    """``build()`` with the tensors of ``state``, skipping the random initialisation.

    The model is built on the meta device and takes the file's tensors; models that cannot be
    built there, or keep tensors a state dict does not hold (non-persistent buffers), are built
    and initialised normally.
    """
    try:
        with torch.device("meta"):
            model = build()
    except Exception:
        model = None
    if model is not None:
        _load_into(model, state, source, name, assign=True)
        tensors = [*model.parameters(), *model.buffers()]
        if not any(t.is_meta for t in tensors):
            return model
    model = build()
    _load_into(model, state, source, name)
    return model


def _suggest(name: str, names: list[str]) -> str:
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    return f"; did you mean {', '.join(close)}?" if close else ""


# ------------------------------------------------------------------ torchvision


def torchvision_cache_file(url: str) -> Path:
    """Where torchvision (``torch.hub.load_state_dict_from_url``) keeps the weights of ``url``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def preprocessing_of(weights: Any) -> Preprocessing:
    """The preprocessing of a torchvision weights enum, from ``weights.transforms()``."""
    t = weights.transforms()
    return Preprocessing(
        resize_size=int(t.resize_size[0]), crop_size=int(t.crop_size[0]),
        mean=tuple(t.mean), std=tuple(t.std), interpolation=t.interpolation.value,
    )


def _torchvision_weights(name: str, weights: str) -> Any:
    import torchvision

    enum = torchvision.models.get_model_weights(name)
    available = [w.name for w in enum]
    if weights != "DEFAULT" and weights not in available:
        raise ModelError(
            f"classifier.weights {weights!r} is not a weights name of torchvision {name}"
            f"{_suggest(weights, available)} (available: {', '.join(available)}, DEFAULT; "
            f"or the path of a local state-dict file)"
        )
    return enum[weights]


def load_torchvision(name: str, weights: str | None, device: torch.device | str = "cpu",
                     check: bool = True) -> SplitClassifier:
    """A torchvision classifier by model name, split at its last Linear.

    ``weights``: a weights enum name (``IMAGENET1K_V2``; None means ``DEFAULT``), read from the
    torch hub cache and never downloaded, with its preprocessing from ``weights.transforms()``;
    or the path of a local state-dict file, with the default preprocessing (256/224, ImageNet).
    """
    import torchvision

    models = torchvision.models.list_models()
    if name not in models:
        raise ModelError(
            f"classifier.name {name!r} is not a torchvision model{_suggest(name, models)} "
            f"(torchvision.models.list_models() lists all {len(models)})"
        )
    weights = weights or "DEFAULT"
    if _ENUM_NAME.fullmatch(weights):
        enum = _torchvision_weights(name, weights)
        cached = torchvision_cache_file(enum.url)
        if not cached.is_file():
            raise ModelError(
                f"torchvision weights {name} {enum.name} not found: looked for {cached}. They "
                f"are never downloaded here: fetch {enum.url} on a machine with internet and "
                f"put it at that path (the torch hub cache, torch.hub.get_dir()/checkpoints; "
                f"move it with TORCH_HOME), or set classifier.weights to a local state-dict file"
            )
        model = build_without_download(torchvision.models.get_model, name, weights=enum)
        preprocessing = preprocessing_of(enum)
        names = enum.meta.get("categories")
    else:
        state, names = read_checkpoint_file(weights)
        model = build_and_load(lambda: torchvision.models.get_model(name, weights=None), state,
                                f"classifier.weights {weights!r}", f"torchvision {name}")
        preprocessing = Preprocessing()
    split = SplitClassifier(model.to(device), preprocessing, name=name, check=check)
    split.class_names = names
    return split


def build_without_download(builder: Any, *args: Any, **kwargs: Any) -> nn.Module:
    """Call ``builder`` with torch.hub downloads made impossible (the cache file must exist)."""
    import torch.hub

    download = torch.hub.download_url_to_file

    def refuse(url: str, dst: str, *a: Any, **kw: Any) -> None:
        raise ModelError(f"refusing to download {url} to {dst}: weights are never downloaded "
                         f"here; put the file there yourself")

    torch.hub.download_url_to_file = refuse  # type: ignore[assignment]
    try:
        return builder(*args, **kwargs)
    finally:
        torch.hub.download_url_to_file = download


# ------------------------------------------------------------------ timm


def load_timm(name: str, weights: str | None, device: torch.device | str = "cpu",
              check: bool = True) -> SplitClassifier:
    """A timm classifier by model name from a local checkpoint file, split at its last Linear.

    ``timm.create_model(name, pretrained=False, num_classes=<from the file>)``, then the file's
    state dict; preprocessing from ``timm.data.resolve_data_config`` (resize to
    ``crop / crop_pct``, centre crop, the model's mean/std and interpolation).
    """
    try:
        import timm
    except ImportError as exc:
        raise ModelError(
            "classifier.kind 'timm' needs the timm package: pip install 'linkstyle[timm]'"
        ) from exc
    if not timm.is_model(name):
        models = timm.list_models()
        raise ModelError(
            f"classifier.name {name!r} is not a timm model{_suggest(name, models)} "
            f"(timm.list_models() lists all {len(models)})"
        )
    if not weights:
        raise ModelError(
            f"classifier.kind 'timm' ({name}) needs classifier.weights: the path of a local "
            f"checkpoint file (.pth, .bin or .safetensors); timm weights are never downloaded "
            f"here, fetch them on a machine with internet (e.g. from the Hugging Face hub)"
        )
    state, names = read_checkpoint_file(weights)
    classifier_key = _timm_classifier_key(timm, name)
    head = state.get(f"{classifier_key}.weight") if classifier_key else None
    kwargs: dict[str, Any] = {}
    if isinstance(head, torch.Tensor):
        kwargs["num_classes"] = int(head.shape[0])
    model = build_and_load(lambda: timm.create_model(name, pretrained=False, **kwargs), state,
                            f"classifier.weights {weights!r}", f"timm {name}")
    cfg = timm.data.resolve_data_config({}, model=model)
    crop = int(cfg["input_size"][-1])
    crop_pct = float(cfg.get("crop_pct") or 0.875)
    interpolation = cfg.get("interpolation", "bicubic")
    preprocessing = Preprocessing(
        resize_size=max(crop, math.floor(crop / crop_pct)), crop_size=crop,
        mean=tuple(cfg["mean"]), std=tuple(cfg["std"]),
        interpolation=interpolation if interpolation in ("bilinear", "bicubic") else "bilinear",
    )
    split = SplitClassifier(model.to(device), preprocessing, name=name, check=check)
    split.class_names = names
    return split


def _timm_classifier_key(timm: Any, name: str) -> str | None:
    try:
        cfg = timm.models.get_pretrained_cfg(name, allow_unregistered=True)
    except Exception:
        return None
    key = getattr(cfg, "classifier", None)
    return key if isinstance(key, str) else None
