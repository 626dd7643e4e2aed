"""Figures people look at: tuning images of a unit, counterfactual pairs. Returns PNG bytes.

matplotlib's Agg backend is used, so no display is needed.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return buf.getvalue()


def _hwc(image: np.ndarray) -> np.ndarray:
    return np.asarray(image).transpose(1, 2, 0)


def tuning_figure(images: np.ndarray, set_values: np.ndarray, title: str,
                  row_labels: Sequence[str] | None = None) -> bytes:
    """images: [Ns, S, 3, H, W] uint8 of one unit; set_values: [S] -> a grid, one row per
    sample, one column per step."""
    plt = _pyplot()
    ns, steps = images.shape[:2]
    fig, axes = plt.subplots(ns, steps, figsize=(1.3 * steps, 1.3 * ns), squeeze=False)
    for i in range(ns):
        for j in range(steps):
            ax = axes[i, j]
            ax.imshow(_hwc(images[i, j]))
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"{set_values[j]:.2f}", fontsize=8)
            if j == 0 and row_labels is not None:
                ax.set_ylabel(row_labels[i], fontsize=7)
    fig.suptitle(title, fontsize=9)
    return _png(fig)


def counterfactual_figure(images: np.ndarray, labels: Sequence[str],
                          unit_counts: Sequence[tuple[int, int]], title: str) -> bytes:
    """images: [P, 2, 3, H, W] uint8 (original, counterfactual) -> rows of original,
    counterfactual and their absolute difference, beside a bar chart of the most frequent
    decision units (unit, count)."""
    plt = _pyplot()
    p = len(images)
    fig = plt.figure(figsize=(7.5, 1.4 * max(p, 2) + 0.6))
    grid = fig.add_gridspec(max(p, 1), 4, width_ratios=[1, 1, 1, 2.2], wspace=0.3)
    for i in range(p):
        orig, cf = images[i, 0].astype(np.float32), images[i, 1].astype(np.float32)
        diff = np.abs(cf - orig).mean(0)
        for j, (img, name) in enumerate(((orig, "original"), (cf, "counterfactual"),
                                         (diff, "|difference|"))):
            ax = fig.add_subplot(grid[i, j])
            if img.ndim == 3:
                ax.imshow(_hwc(img).astype(np.uint8))
            else:
                ax.imshow(img, cmap="magma")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(name, fontsize=8)
            if j == 0:
                ax.set_ylabel(labels[i], fontsize=7)
    bars = fig.add_subplot(grid[:, 3])
    if unit_counts:
        units, counts = zip(*unit_counts, strict=True)
        bars.barh([f"unit {u}" for u in units][::-1], list(counts)[::-1], color="#4c72b0")
        bars.yaxis.tick_right()
    bars.set_xlabel("pairs with the unit among their top shifted units", fontsize=8)
    bars.set_title("decision units", fontsize=9)
    bars.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=10)
    return _png(fig)
