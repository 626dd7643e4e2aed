"""Figures people look at: what a unit does, counterfactual pairs. Returns PNG bytes.

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
                                         (diff, "|difference|, RGB mean"))):
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


def unit_figure(images: np.ndarray, parts: np.ndarray, set_values: np.ndarray,
                response: np.ndarray, shares: Sequence[float], part_names: Sequence[str],
                highlighted: Sequence[bool], null_threshold: Sequence[float], title: str,
                row_labels: Sequence[str] | None = None) -> bytes:
    """What one unit does, in one picture.

    images: [Ns, S, 3, H, W] uint8 tuning strips of Ns samples; parts: [Ns, S, H, W] their part
    label maps (outlined on the images); set_values: [Ns, S] the values the unit was set to;
    response: [Ns, S] the re-encoded unit; shares: [P] each part's share of the unit's change
    profile; highlighted: [P] parts drawn in colour (the others grey); null_threshold: [P] the
    null directions' 95th percentile of that share (a tick on each bar).
    Left: one row per sample, the steps and |last - first| (the difference map, in grey
    levels); right: the closed-loop curve (set against re-encoded; the diagonal is gain 1) and
    the per-part bars.
    """
    plt = _pyplot()
    ns, steps = images.shape[:2]
    diffs = np.abs(images[:, -1].astype(np.float32) - images[:, 0].astype(np.float32)).mean(1)
    vmax = max(float(diffs.max()), 1.0)
    fig = plt.figure(figsize=(1.3 * (steps + 1) + 7.0, max(1.3 * ns, 4.6) + 0.5))
    grid = fig.add_gridspec(ns, steps + 3, width_ratios=[1] * (steps + 1) + [0.55, 4.2],
                            wspace=0.08, hspace=0.25)
    levels = np.arange(int(parts.max()) + 2) - 0.5  # one contour between neighbouring labels
    for i in range(ns):
        for j in range(steps + 1):
            ax = fig.add_subplot(grid[i, j])
            if j < steps:
                ax.imshow(_hwc(images[i, j]))
                ax.contour(parts[i, j], levels=levels, colors="white", linewidths=0.4, alpha=0.8)
                ax.set_xlabel(f"re-encoded {response[i, j]:.2f}", fontsize=6, labelpad=1)
                if i == 0:
                    ax.set_title(f"set {set_values[i, j]:.2f}", fontsize=7)
            else:
                ax.imshow(diffs[i], cmap="magma", vmin=0, vmax=vmax)
                if i == 0:
                    ax.set_title(f"|last - first|\n(0-{vmax:.0f} grey levels)", fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0 and row_labels is not None:
                ax.set_ylabel(row_labels[i], fontsize=7)
    right = grid[:, steps + 2].subgridspec(2, 1, hspace=0.55)
    loop = fig.add_subplot(right[0])
    for i in range(ns):
        loop.plot(set_values[i], response[i], marker="o", markersize=3, linewidth=1, alpha=0.8)
    lo = float(min(set_values.min(), response.min()))
    hi = float(max(set_values.max(), response.max()))
    loop.plot([lo, hi], [lo, hi], linestyle="--", color="grey", linewidth=0.8, label="gain 1")
    loop.set_xlabel("value set", fontsize=7)
    loop.set_ylabel("re-encoded", fontsize=7)
    loop.set_title("closed loop (one line per sample)", fontsize=8)
    loop.tick_params(labelsize=6)
    loop.legend(fontsize=6, loc="upper left")
    bars = fig.add_subplot(right[1])
    colours = ["#c44e52" if h else "#b0b0b0" for h in highlighted]
    y = np.arange(len(part_names))[::-1]
    bars.barh(y, shares, color=colours)
    bars.scatter(null_threshold, y, marker="|", color="black", s=90,
                 label="random directions, 95th percentile")
    bars.set_yticks(y, list(part_names), fontsize=7)
    bars.tick_params(labelsize=6)
    bars.set_xlim(0, max(1.0, float(np.nanmax(shares))) if len(shares) else 1.0)
    bars.set_xlabel("share of the unit's change profile", fontsize=7)
    bars.set_title("where the change goes (coloured: significant unit, beyond random)",
                   fontsize=8)
    bars.legend(fontsize=6, loc="upper right")
    fig.suptitle(title, fontsize=9)
    return _png(fig)
