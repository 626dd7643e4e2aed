"""Stage 1, paired data (DESIGN.md "1. Paired data"; paper Sec. 2.1).

Sample latents of the class-conditional generator, render, classify, keep the correctly
classified images and record for each its latent ``w`` and the classifier's penultimate
activation ``r``. Latent seeds derive from (run seed, split, class, sample index), so any class
can be recomputed alone and the result does not depend on the batch size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from linkstyle_core import stop
from linkstyle_core.models.protocols import Classifier, Generator
from linkstyle_core.render import check_finite, encode, synthesize
from linkstyle_core.runtime import autocast

SPLITS = {"train": 0, "test": 1}


class AcceptanceError(RuntimeError):
    """Too few generated images of a class are classified as that class."""


def sample_latents(
    z_dim: int, run_seed: int, split: str, cls: int, indices: np.ndarray
) -> torch.Tensor:
    """z: [len(indices), z_dim] float32: one N(0, I) draw per (seed, split, class, index)."""
    rows = [
        np.random.default_rng([run_seed, SPLITS[split], cls, int(i)]).standard_normal(z_dim)
        for i in indices
    ]
    return torch.from_numpy(np.stack(rows).astype(np.float32)) if rows else torch.zeros(0, z_dim)


def one_hot(labels: torch.Tensor, c_dim: int) -> torch.Tensor:
    """labels: [N] int64 -> c: [N, c_dim] float32, the generator's class conditioning."""
    return torch.nn.functional.one_hot(labels.long(), c_dim).float()


@dataclass
class PairedSamples:
    """The accepted samples of one class and split.

    w: [N, w_dim] float32 latent (one broadcast latent per image); r: [N, D] float32;
    label: [N] int64 class; index: [N] int64 latent index within (split, class);
    confidence: [N] float32 top-1 probability; attempts: latents drawn up to the N-th accepted.
    """

    w: torch.Tensor
    r: torch.Tensor
    label: torch.Tensor
    index: torch.Tensor
    confidence: torch.Tensor
    attempts: int

    @property
    def acceptance_rate(self) -> float:
        return len(self.label) / max(self.attempts, 1)


@torch.no_grad()
def sample_class(
    generator: Generator,
    classifier: Classifier,
    cls: int,
    n: int,
    *,
    split: str = "train",
    run_seed: int = 0,
    truncation: float = 0.7,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    max_attempts_factor: float = 8.0,
    min_acceptance: float = 0.05,
    progress: Callable[[int], None] | None = None,
) -> PairedSamples:
    """Draw latents of class ``cls`` in index order until ``n`` are correctly classified.

    Each round renders at most ``batch_size`` latents, and only as many as the acceptance rate
    so far says are still needed; which latents are kept does not depend on either.

    Raises ``AcceptanceError`` naming the class and its acceptance rate when more than
    ``max_attempts_factor * n`` draws would be needed, or when, after ``n`` draws, fewer than
    ``min_acceptance`` of them were accepted. ``progress(k)`` is called with newly accepted counts.
    """
    device = torch.device(device)
    max_attempts = int(np.ceil(max_attempts_factor * n))
    kept: dict[str, list[torch.Tensor]] = {k: [] for k in ("w", "r", "index", "confidence")}
    accepted, start = 0, 0
    while accepted < n:
        stop.check()
        if start >= max_attempts:
            raise AcceptanceError(
                f"class {cls}: only {accepted} of {n} {split} samples accepted after {start} "
                f"draws (acceptance rate {accepted / start:.1%}); the classifier rarely assigns "
                f"this class to the generator's images. Lower data.truncation, drop the class "
                f"from data.classes, or raise data.max_attempts_factor"
            )
        # draw only as many latents as the acceptance rate so far says are needed (plus a
        # margin), not a whole batch: 64 accepted at 90% acceptance render ~73 images, not 256
        rate = max(accepted / start if start else 1.0, min_acceptance, 0.05)
        draw = int(np.ceil((n - accepted) / rate * 1.1)) + 2
        idx = np.arange(start, min(start + min(draw, batch_size), max_attempts))
        z = sample_latents(generator.z_dim, run_seed, split, cls, idx).to(device)
        c = one_hot(torch.full((len(idx),), cls, device=device), generator.c_dim)
        with autocast(device, precision):
            w = generator.mapping(z, c, truncation)[:, 0].float()
        r, logits = encode(classifier, synthesize(generator, w, precision), precision)
        check_finite(r, f"class {cls} ({split})")
        probs = logits.softmax(dim=1)
        keep = (logits.argmax(dim=1) == cls).nonzero().squeeze(1)[: n - accepted]
        for name, value in (("w", w), ("r", r), ("confidence", probs[:, cls])):
            kept[name].append(value[keep].cpu())
        kept["index"].append(torch.from_numpy(idx)[keep.cpu()])
        accepted += len(keep)
        start += len(idx)
        if progress is not None and len(keep):
            progress(len(keep))
        if start >= n and accepted / start < min_acceptance and accepted < n:
            raise AcceptanceError(
                f"class {cls}: acceptance rate {accepted / start:.1%} after {start} draws is "
                f"below data.min_acceptance={min_acceptance:.1%}; the classifier rarely assigns "
                f"this class to the generator's images. Lower data.truncation or drop the class"
            )
    index = torch.cat(kept["index"])
    return PairedSamples(
        w=torch.cat(kept["w"]),
        r=torch.cat(kept["r"]),
        label=torch.full((n,), cls, dtype=torch.long),
        index=index,
        confidence=torch.cat(kept["confidence"]),
        # draws up to and including the n-th accepted one: independent of the batch size
        attempts=int(index[-1]) + 1,
    )
