"""Control classifiers: the same network with its penultimate units replaced by random mixtures.

A negative control for the per-unit specificity test (DESIGN.md "Tuning that moves the
unit"): ``RotatedUnits`` keeps the classifier's decisions and its penultimate space, but each
"unit" becomes a random orthogonal mixture of the real units, which is exactly what the null
directions are. The test should then call (almost) no unit significant. Use it like any other
classifier: ``classifier: {kind: python, target:
"linkstyle_core.models.controls:rotated_toy_classifier"}``.
"""

from __future__ import annotations

import torch

from linkstyle_core.models.protocols import Classifier


def random_rotation(dim: int, seed: int = 0) -> torch.Tensor:
    """A uniformly random orthogonal matrix [dim, dim] (QR of a Gaussian, sign-corrected)."""
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).float()


class RotatedUnits(torch.nn.Module):
    """``classifier`` with features ``r Q^T`` and head ``head(r~ Q)``: same logits, the units
    replaced by random orthogonal mixtures of the original ones."""

    rotation: torch.Tensor

    def __init__(self, classifier: Classifier, seed: int = 0) -> None:
        super().__init__()
        self.inner = classifier
        self.num_classes = classifier.num_classes
        self.feature_dim = classifier.feature_dim
        self.register_buffer("rotation", random_rotation(classifier.feature_dim, seed))

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        return self.inner.preprocess(images)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner.features(x).float() @ self.rotation.T

    def head(self, r: torch.Tensor) -> torch.Tensor:
        return self.inner.head(r.float() @ self.rotation)


def rotated_toy_classifier(device: torch.device | str = "cpu") -> RotatedUnits:
    """The bundled toy classifier with randomly rotated penultimate units (seed 0)."""
    from linkstyle_core.models.toy import load_toy_classifier

    return RotatedUnits(load_toy_classifier(device)).to(device).eval().requires_grad_(False)
