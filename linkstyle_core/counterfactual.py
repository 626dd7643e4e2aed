"""Stage 5, counterfactuals across the decision boundary (DESIGN.md "5. Counterfactuals").

For a batch of (sample, target class) pairs, optimise a shift ``s`` of the activations r so that
the classifier head prefers the target over the origin class, while the linked latent stays
close: ``cos(link(r), link(r - s))`` high. ``r - s`` is kept non-negative (a ReLU layer's
range). Every ``check_every`` steps the linked images are rendered and re-classified; a pair is
done once its rendered image (quantised to 8 bits, exactly as stored) is classified as the
target. All pairs optimise in parallel on the device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from linkstyle_core import stop
from linkstyle_core.link import LinearLink
from linkstyle_core.models.protocols import Classifier, Generator
from linkstyle_core.render import encode, synthesize
from linkstyle_core.tuning import to_uint8


@dataclass
class CounterfactualResult:
    """Per pair (P pairs): shift [P, D]; success [P] bool; steps [P] int64 (optimisation steps
    until the rendered image flipped, or the budget); prob_before / prob_after [P]: target
    probability of the rendered original / counterfactual image; images [P, 2, 3, H, W] uint8
    (original, counterfactual)."""

    shift: torch.Tensor
    success: torch.Tensor
    steps: torch.Tensor
    prob_before: torch.Tensor
    prob_after: torch.Tensor
    images: torch.Tensor


def _render_classify(generator: Generator, classifier: Classifier, w: torch.Tensor,
                     precision: str) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images [N, 3, H, W] and the probabilities [N, C] of exactly those images."""
    images = to_uint8(synthesize(generator, w, precision))
    _, logits = encode(classifier, images.float() / 127.5 - 1.0, precision)
    return images, logits.softmax(1)


def find_counterfactuals(
    generator: Generator,
    classifier: Classifier,
    link: LinearLink,
    r: torch.Tensor,
    origin: torch.Tensor,
    target: torch.Tensor,
    max_steps: int = 300,
    check_every: int = 10,
    lr: float = 0.05,
    weight_similarity: float = 10.0,
    weight_l1: float = 0.0,
    precision: str = "fp32",
    progress: Callable[[int], None] | None = None,
) -> CounterfactualResult:
    """r: [P, D] activations of the samples; origin, target: [P] class indices.

    Loss per pair: ``-(logit_target - logit_origin) + weight_similarity * (1 - cos(link(r),
    link(r - s))) + weight_l1 * mean|s|``, minimised with Adam on ``s``; after each step ``s``
    is clipped to ``[r - max(r), r]`` so that ``r - s`` stays in ``[0, max(r)]``.
    """
    device = r.device
    r = r.float()
    w0 = link.predict(r)
    original, probs0 = _render_classify(generator, classifier, w0, precision)
    rows = torch.arange(len(r), device=device)
    shift = torch.zeros_like(r, requires_grad=True)
    opt = torch.optim.Adam([shift], lr=lr)
    done = torch.zeros(len(r), dtype=torch.bool, device=device)
    steps = torch.full((len(r),), max_steps, dtype=torch.long, device=device)
    frozen = torch.zeros_like(r)
    coef, intercept = link.coef_.to(device), link.intercept_.to(device)
    upper = r.max().item()
    for step in range(1, max_steps + 1):
        stop.check()
        r_cf = r - shift
        logits = classifier.head(r_cf)
        margin = logits[rows, target] - logits[rows, origin]
        w_cf = r_cf @ coef.T + intercept
        similarity = F.cosine_similarity(w0, w_cf, dim=1)
        loss = -margin + weight_similarity * (1 - similarity) + weight_l1 * shift.abs().mean(1)
        opt.zero_grad(set_to_none=True)
        loss.masked_fill(done, 0.0).sum().backward()
        opt.step()
        with torch.no_grad():
            shift.copy_(torch.minimum(torch.maximum(shift, r - upper), r))
            shift[done] = frozen[done]  # finished pairs keep the shift that flipped them
        if step % check_every == 0 or step == max_steps:
            with torch.no_grad():
                active = (~done).nonzero().squeeze(1)
                if len(active):
                    _, probs = _render_classify(generator, classifier,
                                                link.predict(r[active] - shift[active]),
                                                precision)
                    flipped = active[probs.argmax(1) == target[active]]
                    done[flipped] = True
                    steps[flipped] = step
                    frozen[flipped] = shift[flipped].detach()
            if progress is not None:
                progress(check_every)
            if bool(done.all()):
                break
    with torch.no_grad():
        final = torch.where(done[:, None], frozen, shift.detach())
        counter, probs1 = _render_classify(generator, classifier, link.predict(r - final),
                                           precision)
        success = probs1.argmax(1) == target
    return CounterfactualResult(
        shift=final.cpu(), success=success.cpu(), steps=steps.cpu(),
        prob_before=probs0[rows, target].cpu(), prob_after=probs1[rows, target].cpu(),
        images=torch.stack([original, counter], dim=1).cpu(),
    )


def shift_statistics(shift: torch.Tensor, top_k: int = 10,
                     tolerance: float = 1e-3) -> dict[str, torch.Tensor]:
    """Per pair: l1, l2, sparsity (share of units shifted by less than ``tolerance`` times the
    largest shift of that pair) and the ``top_k`` units by |shift| ([P, top_k])."""
    mag = shift.abs()
    largest = mag.max(1, keepdim=True).values.clamp_min(1e-12)
    return {
        "l1": mag.sum(1),
        "l2": shift.norm(dim=1),
        "sparsity": (mag < tolerance * largest).float().mean(1),
        "top_units": mag.topk(min(top_k, shift.shape[1]), dim=1).indices,
    }


def pixel_distance(images: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference (in [0, 1] units) between original and counterfactual images.
    images: [P, 2, 3, H, W] uint8 -> [P]."""
    x = images.float() / 255.0
    return (x[:, 0] - x[:, 1]).abs().mean((1, 2, 3))
