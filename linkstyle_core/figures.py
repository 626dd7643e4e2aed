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
                highlighted: Sequence[bool], line: float, title: str,
                row_labels: Sequence[str] | None = None) -> bytes:
    """What one unit does, in one picture.

    images: [Ns, S, 3, H, W] uint8 tuning strips of Ns samples; parts: [Ns, S, H, W] their part
    label maps (outlined on the images); set_values: [Ns, S] the values the unit was set to;
    response: [Ns, S] the re-encoded unit; shares: [P] each part's share of the unit's sensitivity
    profile; highlighted: [P] parts drawn in colour (the others grey); line: the run's
    significance line (``selectivity.significance_line``), drawn across the bars: the share
    the top part must exceed for the unit to be significant, whatever the part.
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
    bars.axvline(line, color="black", linewidth=1.2, linestyle="--")
    bars.set_yticks(y, list(part_names), fontsize=7)
    bars.tick_params(labelsize=6)
    bars.set_xlim(0, max(1.0, float(np.nanmax(shares))) if len(shares) else 1.0)
    bars.set_xlabel(f"share of the unit's sensitivity (line {line:.2f}: significant beyond it, "
                    "q < 0.05)", fontsize=7)
    bars.set_title("what the unit responds to (coloured: beyond the line)", fontsize=8)
    fig.suptitle(title, fontsize=9)
    return _png(fig)


# -- fast figures for reports of thousands of units: numpy and PIL, no matplotlib --------------
def magma_table() -> np.ndarray:
    """[256, 3] uint8: matplotlib's magma colour map (the difference maps' colours, here and in
    ``linkstyle explore``), read once."""
    global _MAGMA
    if _MAGMA is None:
        from matplotlib import colormaps

        _MAGMA = (colormaps["magma"](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)
    return _MAGMA


_MAGMA: np.ndarray | None = None


def _outlined(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """image [3, H, W] uint8 with white pixels where ``labels`` [H, W] changes to its right or
    below: the part outlines -> [H, W, 3] uint8."""
    out = _hwc(image).copy()
    edge = np.zeros(labels.shape, dtype=bool)
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:-1, :] |= labels[:-1, :] != labels[1:, :]
    out[edge] = (out[edge].astype(np.uint16) + 2 * 255) // 3  # two thirds of the way to white
    return out


def unit_strips_png(images: np.ndarray, parts: np.ndarray, scale: int = 2) -> bytes:
    """The tuning strips of one unit as one PNG, made without matplotlib (milliseconds).

    images: [Ns, S, 3, H, W] uint8; parts: [Ns, S, H, W] part labels. One row per sample: the
    S steps with their part outlines, then |last - first| in the magma colours, scaled to the
    largest difference of the unit (so rows compare); every pixel ``scale`` times.
    """
    from PIL import Image

    diffs = np.abs(images[:, -1].astype(np.float32) - images[:, 0].astype(np.float32)).mean(1)
    vmax = max(float(diffs.max()), 1.0)
    magma = magma_table()
    rows = []
    gap = np.full((images.shape[-2], 2, 3), 255, dtype=np.uint8)
    for i in range(images.shape[0]):
        tiles = [_outlined(images[i, j], parts[i, j]) for j in range(images.shape[1])]
        tiles.append(magma[(diffs[i] / vmax * 255).clip(0, 255).astype(np.uint8)])
        rows.append(np.concatenate([x for t in tiles for x in (t, gap)][:-1], axis=1))
    hgap = np.full((2, rows[0].shape[1], 3), 255, dtype=np.uint8)
    grid = np.concatenate([x for r in rows for x in (r, hgap)][:-1], axis=0)
    grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    buffer = io.BytesIO()
    Image.fromarray(grid).save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


def _esc(text: object) -> str:
    import html

    return html.escape(str(text))


def unit_charts_svg(set_values: np.ndarray, response: np.ndarray, shares: Sequence[float],
                    part_names: Sequence[str], highlighted: Sequence[bool],
                    line: float) -> str:
    """The closed-loop curve and the per-part bars of ``unit_figure`` as one inline SVG (text,
    made in microseconds; a browser draws it).

    set_values, response: [Ns, S]; shares, highlighted: [P] and line as in ``unit_figure``.
    """
    w, h, pad = 300, 190, 34
    lo = float(min(np.nanmin(set_values), np.nanmin(response)))
    hi = float(max(np.nanmax(set_values), np.nanmax(response)))
    hi = hi if hi > lo else lo + 1.0

    def x(v: float) -> float:
        return pad + (v - lo) / (hi - lo) * (w - pad - 8)

    def y(v: float) -> float:
        return h - pad + 8 - (v - lo) / (hi - lo) * (h - pad - 8)

    colours = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860")
    loop = [f'<line x1="{x(lo):.1f}" y1="{y(lo):.1f}" x2="{x(hi):.1f}" y2="{y(hi):.1f}" '
            'stroke="#999" stroke-dasharray="4 3"/>',
            f'<text x="{x(hi) - 2:.1f}" y="{y(hi) + 12:.1f}" font-size="9" text-anchor="end" '
            'fill="#777">gain 1</text>']
    for i, (sv, rv) in enumerate(zip(set_values, response, strict=True)):
        c = colours[i % len(colours)]
        pts = " ".join(f"{x(float(a)):.1f},{y(float(b)):.1f}" for a, b in zip(sv, rv, strict=True))
        loop.append(f'<polyline points="{pts}" fill="none" stroke="{c}" stroke-width="1.5"/>')
        loop += [f'<circle cx="{x(float(a)):.1f}" cy="{y(float(b)):.1f}" r="2.5" fill="{c}"/>'
                 for a, b in zip(sv, rv, strict=True)]
    axes = (f'<line x1="{pad}" y1="{h - pad + 8}" x2="{w - 8}" y2="{h - pad + 8}" '
            f'stroke="#333"/><line x1="{pad}" y1="8" x2="{pad}" y2="{h - pad + 8}" '
            f'stroke="#333"/><text x="{(w + pad) / 2:.0f}" y="{h - 4}" font-size="10" '
            f'text-anchor="middle">value set ({lo:.2f} to {hi:.2f})</text>'
            f'<text x="10" y="{(h - pad) / 2:.0f}" font-size="10" text-anchor="middle" '
            f'transform="rotate(-90 10 {(h - pad) / 2:.0f})">re-encoded</text>')
    bar_h, top = 16, h + 42
    bars = [f'<text x="{pad}" y="{top - 20}" font-size="10">what the unit responds to, share '
            "per part</text>"
            f'<text x="{pad}" y="{top - 8}" font-size="9" fill="#555">dashed line at '
            f"{line:.2f}: significant beyond it (q &lt; 0.05); coloured: beyond it</text>"]
    for k, (name, share, hot) in enumerate(zip(part_names, shares, highlighted, strict=True)):
        yy = top + k * (bar_h + 4)
        length = 0.0 if not np.isfinite(share) else float(share) * (w - 90)
        bars.append(f'<text x="{pad + 50}" y="{yy + 12}" font-size="10" '
                    f'text-anchor="end">{_esc(name)}</text>'
                    f'<rect x="{pad + 56}" y="{yy}" width="{length:.1f}" height="{bar_h}" '
                    f'fill="{"#c44e52" if hot else "#b0b0b0"}"><title>{_esc(name)}: '
                    f'{float(share):.2f}</title></rect>')
    height = top + len(part_names) * (bar_h + 4) + 6
    lx = pad + 56 + float(line) * (w - 90)
    bars.append(f'<line x1="{lx:.1f}" y1="{top - 3}" x2="{lx:.1f}" y2="{height - 4}" '
                'stroke="#000" stroke-width="1.5" stroke-dasharray="4 2"/>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{w + 120}" height="{height}" '
            f'font-family="sans-serif" role="img" aria-label="closed loop and part shares">'
            f'<text x="{pad}" y="8" font-size="10" dy="-0">closed loop (one line per '
            f"sample)</text>{axes}{''.join(loop)}{''.join(bars)}</svg>")
