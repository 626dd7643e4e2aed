"""How well the link works: R², MSE, agreement of semantic order, and the closed loop.

The closed loop (DESIGN.md "2. Link") renders held-out samples from their *predicted* latents
and asks whether the classifier still sees the same class and the same activations.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import spearmanr

from linkstyle_core.link import LinearLink
from linkstyle_core.models.protocols import Classifier, Generator
from linkstyle_core.render import encode, synthesize
from linkstyle_core.runtime import batches


def r2_scores(w_true: torch.Tensor, w_pred: torch.Tensor) -> tuple[float, np.ndarray]:
    """Coefficient of determination. w_*: [N, w_dim].

    Returns (overall, per_dim [w_dim]); overall pools the residual and total sums of squares of
    all dimensions (variance-weighted), so near-constant dimensions do not dominate it.
    """
    t = w_true.double()
    ss_res = ((t - w_pred.double()) ** 2).sum(0)
    ss_tot = ((t - t.mean(0)) ** 2).sum(0)
    per_dim = 1.0 - ss_res / ss_tot.clamp_min(1e-12)
    overall = 1.0 - ss_res.sum() / ss_tot.sum().clamp_min(1e-12)
    return float(overall), per_dim.numpy()


def mse(w_true: torch.Tensor, w_pred: torch.Tensor) -> float:
    return float(((w_true.double() - w_pred.double()) ** 2).mean())


def _upper(d: torch.Tensor) -> np.ndarray:
    i, j = torch.triu_indices(d.shape[0], d.shape[0], offset=1)
    return d[i, j].numpy()


def order_agreement(
    r: torch.Tensor, w: torch.Tensor, labels: torch.Tensor, max_samples: int = 500, seed: int = 0
) -> dict[str, float]:
    """Do the two spaces order classes and samples alike? (representational similarity)

    Spearman correlation between the pairwise Euclidean distance matrices of class means in
    r-space and in w-space (``rsa_class``), and of individual samples (``rsa_sample``, on at
    most ``max_samples`` samples drawn with ``seed``). NaN where fewer than 3 classes exist.
    """
    r, w = r.double().cpu(), w.double().cpu()
    classes = torch.unique(labels)
    out = {"rsa_class": float("nan"), "rsa_sample": float("nan")}
    if len(classes) >= 3:
        r_means = torch.stack([r[labels == c].mean(0) for c in classes])
        w_means = torch.stack([w[labels == c].mean(0) for c in classes])
        out["rsa_class"] = float(spearmanr(_upper(torch.cdist(r_means, r_means)),
                                           _upper(torch.cdist(w_means, w_means)))[0])
    n = r.shape[0]
    if n >= 3:
        pick = np.random.default_rng(seed).permutation(n)[:max_samples]
        rs, ws = r[pick], w[pick]
        out["rsa_sample"] = float(spearmanr(_upper(torch.cdist(rs, rs)),
                                            _upper(torch.cdist(ws, ws)))[0])
    return out


def rowwise_pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each row of a [N, D] with the same row of b -> [N]."""
    a = a.double() - a.double().mean(1, keepdim=True)
    b = b.double() - b.double().mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-12)


@torch.no_grad()
def closed_loop(
    generator: Generator,
    classifier: Classifier,
    link: LinearLink,
    r: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int = 256,
    precision: str = "fp32",
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Render every sample from its predicted latent ``link.predict(r)`` and re-encode it.

    r: [N, D], labels: [N]. Returns ``closed_loop_accuracy`` (share classified as ``labels``)
    and ``closed_loop_r_corr`` (mean over samples of the Pearson correlation between the
    original r and the re-encoded r').
    """
    correct, corr = 0, []
    for sl in batches(r.shape[0], batch_size):
        w_hat = link.predict(r[sl].to(device))
        r2, logits = encode(classifier, synthesize(generator, w_hat, precision), precision)
        correct += int((logits.argmax(1).cpu() == labels[sl]).sum())
        corr.append(rowwise_pearson(r[sl], r2.cpu()))
    return {
        "closed_loop_accuracy": correct / max(r.shape[0], 1),
        "closed_loop_r_corr": float(torch.cat(corr).mean()) if corr else float("nan"),
    }
