"""Any classifier as a ``Classifier``, split at its penultimate layer.

For any such model the penultimate layer is the input of its last ``nn.Linear``, found by
walking its modules (DESIGN.md, "Interfaces"): that Linear becomes ``head`` and is replaced by
``nn.Identity`` in the body, so ``features(x)`` returns ``r`` and ``head(r)`` the logits. This
works for ResNet, VGG, DenseNet, ConvNeXt, ViT and most other torchvision/timm classifiers; at
load time the split is checked against the unsplit model's output on a random input.

Loading torchvision and timm models from local weights is in ``pretrained``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from linkstyle_core.models.errors import ModelError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_ENUM_NAME = re.compile(r"[A-Z][A-Z0-9_]*")
_PROBE_SIZE = 64


@dataclass(frozen=True)
class Preprocessing:
    """How a classifier expects its input: resize the shorter side to ``resize_size``, centre
    crop ``crop_size``, normalise with ``mean``/``std`` (of images in [0, 1])."""

    resize_size: int = 256
    crop_size: int = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"  # bilinear, bicubic or nearest

    def __post_init__(self) -> None:
        if self.resize_size < self.crop_size:
            raise ModelError(f"preprocessing: resize_size {self.resize_size} is smaller than "
                             f"crop_size {self.crop_size}")
        if self.interpolation not in ("bilinear", "bicubic", "nearest"):
            raise ModelError(f"preprocessing: interpolation {self.interpolation!r} is not "
                             f"bilinear, bicubic or nearest")


def last_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    """The (qualified name, module) of the last ``nn.Linear`` registered in ``model``."""
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not found:
        raise ModelError(
            f"{type(model).__name__} has no nn.Linear layer, so its penultimate layer cannot be "
            f"found; wrap it in a factory of your own (classifier.kind: python)"
        )
    return found[-1]


def replace_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


class SplitClassifier(nn.Module):
    """A classifier split at the input of its last ``nn.Linear`` (``Classifier`` protocol).

    ``body``: the model with that Linear replaced by ``nn.Identity``; ``head``: the Linear.
    ``num_classes``/``feature_dim``: its out/in features. ``head_name``: where it sat.
    ``class_names``: the classes' names when the weights carry them (``registry.class_names``).
    """

    def __init__(self, model: nn.Module, preprocessing: Preprocessing | None = None,
                 *, name: str | None = None, check: bool = True) -> None:
        super().__init__()
        preprocessing = preprocessing or Preprocessing()
        model = model.eval().requires_grad_(False)
        self.name = name or type(model).__name__
        self.class_names: list[str] | None = None  # set by the loaders when the weights name them
        self.head_name, linear = last_linear(model)
        self.num_classes = linear.out_features
        self.feature_dim = linear.in_features
        self.preprocessing = preprocessing
        self.mean: torch.Tensor
        self.std: torch.Tensor
        device = next(model.parameters()).device  # buffers beside the model, wherever it is
        for key, value in (("mean", preprocessing.mean), ("std", preprocessing.std)):
            self.register_buffer(key, torch.tensor(value, device=device).view(1, -1, 1, 1))
        expected = self._probe(model) if check else None
        replace_module(model, self.head_name, nn.Identity())
        self.body = model
        self.head = linear
        if expected is not None:
            self._check_split(*expected)

    @torch.no_grad()
    def _probe(self, model: nn.Module) -> tuple[torch.Tensor, Any]:
        """A random input and the unsplit model's output on it: small (cheap) if the model
        takes it, else its own input size (ViTs need that)."""
        device = next(model.parameters()).device
        gen = torch.Generator().manual_seed(0)
        sizes = sorted({min(self.preprocessing.crop_size, _PROBE_SIZE),
                        self.preprocessing.crop_size})
        for size in sizes:
            x = torch.randn(1, 3, size, size, generator=gen).to(device)
            try:
                return x, model(x)
            except Exception:
                if size == sizes[-1]:
                    raise
        raise AssertionError("unreachable")

    @torch.no_grad()
    def _check_split(self, x: torch.Tensor, expected: Any) -> None:
        r = self.features(x)
        problem = None
        if not isinstance(expected, torch.Tensor) or expected.shape != (1, self.num_classes):
            problem = "the model's output is not [N, num_classes] logits of that layer"
        elif r.shape != (1, self.feature_dim):
            problem = f"its input has shape {tuple(r.shape)}, not [N, {self.feature_dim}]"
        else:
            logits = self.head(r)
            tol = 1e-4 * (1.0 + float(expected.abs().max()))
            if not torch.allclose(logits, expected, rtol=1e-3, atol=tol):
                problem = "the model computes more after it, so its input is not penultimate"
        if problem:
            raise ModelError(
                f"classifier {self.name}: cannot split at its last nn.Linear "
                f"({self.head_name}): {problem}; wrap the model in a factory of your own "
                f"(classifier.kind: python) that returns features and head"
            )

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """images: [N, 3, H, W] in [-1, 1] -> [N, 3, crop, crop] normalised, on their device.

        Batched: resize the shorter side (antialiased), centre crop, normalise; as torchvision's
        ``weights.transforms()`` does to one image.
        """
        p = self.preprocessing
        x = (images.float() + 1.0) / 2.0
        h, w = x.shape[-2:]
        short, long = min(h, w), max(h, w)
        new_long = int(p.resize_size * long / short)
        size = (p.resize_size, new_long) if h <= w else (new_long, p.resize_size)
        if (h, w) != size:
            smooth = p.interpolation != "nearest"
            x = F.interpolate(x, size=size, mode=p.interpolation, antialias=smooth,
                              align_corners=False if smooth else None)
        top = int(round((size[0] - p.crop_size) / 2.0))
        left = int(round((size[1] - p.crop_size) / 2.0))
        x = x[..., top:top + p.crop_size, left:left + p.crop_size]
        return (x - self.mean) / self.std

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x: preprocessed [N, 3, crop, crop] -> r: [N, feature_dim], the last Linear's input."""
        return self.body(x)


# ------------------------------------------------------------------ state-dict files
