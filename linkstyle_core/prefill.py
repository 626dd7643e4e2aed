"""Pre-filled part masks while a person labels: the stage-3 segmenter, trained on the images
labelled so far, proposes masks for the rest (DESIGN.md "4. Score"; docs/real-models.md).

The segmenter and its inputs are exactly those of the segmenter stage: ``train_segmenter`` on
the generator's feature maps (``tuning.generator_features``). Three answers:

- proposals for every image (``Proposal.labels``), which the labelling page shows as the mask
  of an image not labelled yet, for the person to correct;
- how sure the segmenter is of each image (mean per-pixel entropy of its part probabilities,
  in nats), so the least sure images are labelled next;
- held-out quality by leave-one-out over the labelled images: train on all but one, predict the
  one left out, pool the intersections and unions of every fold per part (``mean_iou`` over the
  stacked predictions), so a part that shows in one image only still gets a held-out IoU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from linkstyle_core import stop
from linkstyle_core.segment import mean_iou, train_segmenter

MIN_LABELLED = 2  # fewest labelled images to train on (leave-one-out needs one to hold out)


@dataclass(frozen=True)
class Proposal:
    """labels: [N, H, W] int64, the proposed mask of every image; entropy: [N] float32, the
    mean per-pixel entropy (nats) of each image's part probabilities; trained_on: the
    labelled image indices the segmenter was trained on."""

    labels: torch.Tensor
    entropy: torch.Tensor
    trained_on: tuple[int, ...]

    def least_sure(self, exclude: Sequence[int] = ()) -> list[int]:
        """Image indices, least sure first, leaving out ``exclude`` (the labelled ones)."""
        skip = set(exclude)
        order = torch.argsort(self.entropy, descending=True, stable=True).tolist()
        return [i for i in order if i not in skip]


@dataclass(frozen=True)
class HeldOut:
    """Leave-one-out quality: miou (mean over parts present), per_part (IoU per part, NaN for
    a part in no held-out image and no prediction), folds (labelled images held out)."""

    miou: float
    per_part: list[float]
    folds: int


def _select(features: Sequence[torch.Tensor], idx: Sequence[int]) -> list[torch.Tensor]:
    index = torch.as_tensor(list(idx), dtype=torch.long)
    return [f[index.to(f.device)] for f in features]


def propose(features: Sequence[torch.Tensor], labelled: Sequence[int], labels: torch.Tensor,
            num_parts: int, steps: int = 300, seed: int = 0, hidden: int = 32,
            kernel: int = 1, batch_size: int = 32,
            check: Callable[[], None] = stop.check) -> Proposal:
    """Train on the labelled images and propose a mask for every image.

    features: feature maps of all N images; labelled: indices of the labelled images;
    labels: [len(labelled), H, W] int64, their masks in the same order.
    """
    if len(labelled) < MIN_LABELLED:
        raise ValueError(f"pre-fill needs at least {MIN_LABELLED} labelled images, "
                         f"got {len(labelled)}")
    seg = train_segmenter(_select(features, labelled), labels, num_parts, steps=steps,
                          hidden=hidden, seed=seed, kernel=kernel, check=check)
    n = features[0].shape[0]
    preds, entropies = [], []
    for start in range(0, n, batch_size):
        check()
        logits = seg([f[start:start + batch_size] for f in features]).float()
        logp = torch.log_softmax(logits, dim=1)
        preds.append(logits.argmax(1))
        entropies.append(-(logp.exp() * logp).sum(1).mean((1, 2)))
    return Proposal(torch.cat(preds).cpu(), torch.cat(entropies).cpu(), tuple(labelled))


def leave_one_out(features: Sequence[torch.Tensor], labelled: Sequence[int],
                  labels: torch.Tensor, num_parts: int, steps: int = 300, seed: int = 0,
                  hidden: int = 32, kernel: int = 1,
                  check: Callable[[], None] = stop.check) -> HeldOut:
    """Held-out IoU per part by leave-one-out over the labelled images (one training per
    labelled image); arguments as for ``propose``."""
    if len(labelled) < MIN_LABELLED:
        raise ValueError(f"leave-one-out needs at least {MIN_LABELLED} labelled images, "
                         f"got {len(labelled)}")
    preds = []
    for k in range(len(labelled)):
        keep = [j for j in range(len(labelled)) if j != k]
        seg = train_segmenter(_select(features, [labelled[j] for j in keep]), labels[keep],
                              num_parts, steps=steps, hidden=hidden, seed=seed, kernel=kernel,
                              check=check)
        preds.append(seg.predict(_select(features, [labelled[k]])))
    miou, per_part = mean_iou(torch.cat(preds), labels, num_parts)
    return HeldOut(miou, per_part, len(labelled))
