"""The two model interfaces every stage of the pipeline leans on (DESIGN.md, "Interfaces").

Any generator or classifier that satisfies these protocols can be analysed: the bundled toy
models, the StyleGAN-XL and torchvision/timm adapters, or a user's own ``module:factory``.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class Generator(Protocol):
    """A class-conditional style-based generator.

    Attributes: ``z_dim`` (latent size), ``c_dim`` (number of classes, one-hot conditioning),
    ``w_dim`` (size of one style vector), ``num_ws`` (style inputs of the synthesis network),
    ``resolution`` (output side length in pixels).
    """

    z_dim: int
    c_dim: int
    w_dim: int
    num_ws: int
    resolution: int

    def mapping(self, z: torch.Tensor, c: torch.Tensor, truncation: float = 1.0) -> torch.Tensor:
        """z: [N, z_dim] float32, c: [N, c_dim] one-hot -> ws: [N, num_ws, w_dim].

        Truncation pulls w towards the per-class average: ``w_avg[c] + t * (w - w_avg[c])``.
        """
        ...

    def synthesis(self, ws: torch.Tensor) -> torch.Tensor:
        """ws: [N, num_ws, w_dim] -> images [N, 3, resolution, resolution] in [-1, 1]."""
        ...

    def features(self, ws: torch.Tensor) -> list[torch.Tensor]:
        """ws: [N, num_ws, w_dim] -> the synthesis network's feature maps, [N, C_i, H_i, W_i] each.

        Used by the few-shot part segmenter (upsampled and concatenated).
        """
        ...


@runtime_checkable
class Classifier(Protocol):
    """An image classifier split at its penultimate layer.

    Attributes: ``num_classes`` (logits), ``feature_dim`` (D, units of the penultimate layer).
    """

    num_classes: int
    feature_dim: int

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """images: [N, 3, H, W] in [-1, 1] -> model input (resized, normalised), same device."""
        ...

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x: preprocessed input -> r: [N, D] float32, the penultimate activations."""
        ...

    def head(self, r: torch.Tensor) -> torch.Tensor:
        """r: [N, D] -> logits [N, num_classes]."""
        ...
