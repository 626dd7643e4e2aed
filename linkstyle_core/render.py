"""Batched render-and-encode: latents -> images -> classifier activations, on the device.

Images stay tensors from synthesis to the classifier (no PIL or PNG round trip).
"""

from __future__ import annotations

import torch

from linkstyle_core.models.protocols import Classifier, Generator
from linkstyle_core.runtime import autocast


def broadcast_w(w: torch.Tensor, num_ws: int) -> torch.Tensor:
    """w: [N, w_dim] -> ws: [N, num_ws, w_dim], one latent for every style input (paper)."""
    return w.unsqueeze(1).expand(-1, num_ws, -1)


@torch.no_grad()
def encode(
    classifier: Classifier, images: torch.Tensor, precision: str = "fp32"
) -> tuple[torch.Tensor, torch.Tensor]:
    """images: [N, 3, H, W] in [-1, 1] -> (r [N, D] float32, logits [N, classes] float32)."""
    with autocast(images.device, precision):
        r = classifier.features(classifier.preprocess(images))
        logits = classifier.head(r)
    return r.float(), logits.float()


@torch.no_grad()
def synthesize(generator: Generator, w: torch.Tensor, precision: str = "fp32") -> torch.Tensor:
    """w: [N, w_dim] -> images [N, 3, H, W] float32 in [-1, 1]."""
    with autocast(w.device, precision):
        images = generator.synthesis(broadcast_w(w, generator.num_ws))
    return images.float().clamp_(-1.0, 1.0)


def check_finite(r: torch.Tensor, what: str) -> None:
    """Raise if activations hold NaN/Inf (a broken model or a precision overflow)."""
    bad = ~torch.isfinite(r)
    if bad.any():
        rows = int(bad.any(dim=1).sum())
        raise FloatingPointError(
            f"{what}: {rows} of {r.shape[0]} activation vectors contain NaN/Inf; check the "
            "model's weights, or set runtime.precision to fp32 if fp16 overflows"
        )
