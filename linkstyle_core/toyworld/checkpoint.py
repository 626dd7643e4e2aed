"""Saving and loading the toy models' weight files.

A weight file is a ``torch.save``d dict: ``kind`` ("toy-generator" or "toy-classifier"),
``format_version``, ``config`` (architecture hyperparameters), ``state_dict`` (fp16 floating
tensors, to keep the bundled files small), ``species``, ``factors``, ``seed``, ``metrics``
(training figures) and, for a classifier, ``ground_truth`` (the interventional ground truth of
its units, ``toyworld.ground_truth``). Loading restores fp32 weights, eval mode and
``requires_grad=False``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from linkstyle_core.toyworld.classifier import ToyClassifier, ToyClassifierConfig
from linkstyle_core.toyworld.factors import FACTORS, SPECIES
from linkstyle_core.toyworld.generator import ToyGenerator, ToyGeneratorConfig

FORMAT_VERSION = 1
GENERATOR_KIND = "toy-generator"
CLASSIFIER_KIND = "toy-classifier"


def save_checkpoint(
    model: ToyGenerator | ToyClassifier,
    path: str | os.PathLike[str],
    *,
    seed: int,
    metrics: dict[str, Any],
    ground_truth: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` to ``path`` atomically (parent folders created); returns the path.

    ``ground_truth``: for a classifier, the interventional ground truth of its units
    (``ground_truth.measure_ground_truth``), stored under the payload's ``"ground_truth"`` key.
    """
    kind = GENERATOR_KIND if isinstance(model, ToyGenerator) else CLASSIFIER_KIND
    state = {
        k: (v.half() if v.is_floating_point() else v).detach().cpu().clone()
        for k, v in model.state_dict().items()
    }
    payload = {
        "kind": kind,
        "format_version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        "state_dict": state,
        "species": list(SPECIES),
        "factors": list(FACTORS),
        "seed": int(seed),
        "metrics": metrics,
    }
    if ground_truth is not None:
        payload["ground_truth"] = ground_truth
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)  # a crash mid-write never leaves a truncated weight file behind
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_checkpoint(path: str | os.PathLike[str], kind: str) -> dict[str, Any]:
    """Load the payload of a weight file and check that it holds a ``kind`` model."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"toy weight file not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: say which and how to fix it
        raise ValueError(f"{path} is not a readable toy weight file ({exc}); retrain it") from exc
    if not isinstance(payload, dict) or payload.get("kind") != kind:
        found = payload.get("kind") if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"{path} holds {found!r}, expected a {kind!r} weight file")
    if payload.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path} has format_version {payload.get('format_version')}, "
            f"this code reads {FORMAT_VERSION}"
        )
    if tuple(payload.get("species", ())) != SPECIES:
        raise ValueError(f"{path} was trained for species {payload.get('species')}, not {SPECIES}")
    return payload


def _finish(model: torch.nn.Module, payload: dict[str, Any], device: str | torch.device,
            path: Path) -> None:
    """Load the payload's weights into ``model``; ``ValueError`` naming the file and the fix
    when they are missing, do not fit the model's shapes, or are not finite."""
    weights = payload.get("state_dict")
    if not isinstance(weights, dict) or not all(
            isinstance(v, torch.Tensor) for v in weights.values()):
        raise ValueError(f"{path} has no state_dict of tensors; it is not a complete "
                         f"{payload['kind']} weight file: retrain it")
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in weights.items()}
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ValueError(f"{path} holds non-finite (NaN or infinite) weights in {bad[0]}"
                         f"{f' and {len(bad) - 1} more tensors' if len(bad) > 1 else ''}; "
                         "retrain it")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:  # missing, unexpected or misshapen tensors
        first = str(exc).strip().splitlines()
        detail = next((line.strip() for line in first[1:] if line.strip()), first[0])
        raise ValueError(f"{path} holds weights that do not fit the toy model its config "
                         f"describes ({detail}); retrain it") from None
    model.eval().requires_grad_(False).to(device)


def _build(model: Any, config: Any, payload: dict[str, Any], path: str | os.PathLike[str]) -> Any:
    """The model a weight file's config describes (``ValueError`` naming the file if the config
    is unusable)."""
    try:
        return model(config.from_dict(payload["config"]))
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
        raise ValueError(f"{path} has no usable model config ({type(exc).__name__}: {exc}); "
                         "retrain it") from None


def load_generator(
    path: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> ToyGenerator:
    """A ``ToyGenerator`` from a weight file, fp32, eval mode, no gradients, on ``device``."""
    payload = read_checkpoint(path, GENERATOR_KIND)
    model = _build(ToyGenerator, ToyGeneratorConfig, payload, path)
    _finish(model, payload, device, Path(path))
    return model


def load_classifier(
    path: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> ToyClassifier:
    """A ``ToyClassifier`` from a weight file, fp32, eval mode, no gradients, on ``device``."""
    payload = read_checkpoint(path, CLASSIFIER_KIND)
    model = _build(ToyClassifier, ToyClassifierConfig, payload, path)
    _finish(model, payload, device, Path(path))
    return model


def read_ground_truth(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``ground_truth`` entry of a classifier weight file (``KeyError`` naming the fix if
    it has none)."""
    payload = read_checkpoint(path, CLASSIFIER_KIND)
    if "ground_truth" not in payload:
        raise KeyError(
            f"{path} holds no interventional ground truth; retrain the classifier with "
            "`linkstyle toy train-classifier`, which measures and stores it"
        )
    return payload["ground_truth"]
