"""Part-local probes: latent directions that change one part's pixels and little else.

The sensitivity profile's random probes move the parts together (docs/tuning.md, "Open"), so
a regression on their part changes has little independent variation to credit each part with.
These probes are found from the generator itself: for part p, the directions in W whose
change of the image, per pixel, is largest on p's pixels against the rest of the image, summed
over samples (a generalized eigenproblem on the Jacobian of the image with respect to w).
A unit's direct profile is then its mean squared response along each part's probes.
``benchmarks/part_probes.py`` measures them against the toy world's ground truth.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy.linalg import eigh

from linkstyle_core.models.protocols import Generator
from linkstyle_core.render import broadcast_w


def part_subspaces(generator: Generator, w0: torch.Tensor, labels: torch.Tensor,
                   parts: Sequence[int], k: int) -> list[np.ndarray]:
    """For each part label in ``parts``, [w_dim, k] unit-norm columns: the top ``k``
    generalized eigenvectors of (sum_i J_i,p^T J_i,p / |p_i|, sum_i J_i,o^T J_i,o / |o_i|),
    J_i the Jacobian of sample i's image with respect to its w (every colour channel), p_i
    the pixels of the part in ``labels`` [Ns, H, W] (the segmentation of the base images of
    w0 [Ns, w_dim]) and o_i the other pixels. The first columns change the part's pixels
    most against the others', per pixel. Forward-mode differentiation, w_dim passes per
    sample."""
    if k < 1 or k > generator.w_dim:
        raise ValueError(f"k must be between 1 and w_dim ({generator.w_dim}), got {k}")
    dim = generator.w_dim
    inside = np.zeros((len(parts), dim, dim))
    outside = np.zeros_like(inside)

    def image(w: torch.Tensor) -> torch.Tensor:
        return generator.synthesis(broadcast_w(w[None], generator.num_ws))[0]

    for i in range(len(w0)):
        jac = torch.func.jacfwd(image)(w0[i]).detach().double().cpu()   # [3, H, W, dim]
        jac = jac.permute(1, 2, 0, 3).reshape(-1, jac.shape[0], dim).numpy()
        label = labels[i].reshape(-1).cpu().numpy()
        for j, part in enumerate(parts):
            own = label == part
            a, b = jac[own].reshape(-1, dim), jac[~own].reshape(-1, dim)
            inside[j] += a.T @ a / max(int(own.sum()), 1)
            outside[j] += b.T @ b / max(int((~own).sum()), 1)
    out = []
    for j in range(len(parts)):
        floor = 1e-6 * max(np.trace(outside[j]), 1e-12) / dim
        _, vectors = eigh(inside[j], outside[j] + floor * np.eye(dim))
        top = vectors[:, ::-1][:, :k]
        out.append(top / np.linalg.norm(top, axis=0))
    return out


def part_probe_directions(subspaces: Sequence[np.ndarray], count: int,
                          seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``count`` unit-norm latent directions, the parts in turn, each a Gaussian combination
    of its part's subspace columns: (directions [count, w_dim], part index of each [count])."""
    rng = np.random.default_rng(seed)
    which = np.arange(count) % len(subspaces)
    dirs = np.stack([subspaces[int(j)] @ rng.standard_normal(subspaces[int(j)].shape[1])
                     for j in which])
    return dirs / np.linalg.norm(dirs, axis=1, keepdims=True), which


def direct_profiles(response: np.ndarray, which: np.ndarray, n_parts: int) -> np.ndarray:
    """response [K, C] (each channel's change along each probe), which [K] (each probe's
    part) -> [C, n_parts]: the mean squared response along each part's probes."""
    return np.stack([(response[which == j] ** 2).mean(0) for j in range(n_parts)], 1)
