"""A contact sheet of the toy world: renderer images, the generator's reproductions, label maps.

``write_sheet`` draws, for every species, ``per_species`` latents three ways: the renderer's
image, the toy generator's image of the same ``(z, c)`` (truncation 1, so the two should look
alike), and the renderer's part label map in the colours of ``PART_COLOURS``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from linkstyle_core.models.protocols import Generator
from linkstyle_core.toyworld.factors import PARTS, SPECIES, factors_from_latent
from linkstyle_core.toyworld.generator import model_device, one_hot
from linkstyle_core.toyworld.renderer import render

# One fixed, readable colour per part for label maps (RGB in [0, 1]), indexed like PARTS.
PART_COLOURS: tuple[tuple[float, float, float], ...] = (
    (0.93, 0.93, 0.93),  # background
    (0.12, 0.47, 0.71),  # body
    (1.00, 0.50, 0.05),  # head
    (0.84, 0.15, 0.16),  # ear
    (0.58, 0.40, 0.74),  # leg
    (0.17, 0.63, 0.17),  # tail
    (0.10, 0.10, 0.10),  # eye
)


def colour_labels(labels: torch.Tensor) -> torch.Tensor:
    """labels: [N, H, W] int64 -> RGB images [N, H, W, 3] float32 in [0, 1] (``PART_COLOURS``)."""
    palette = torch.tensor(PART_COLOURS, dtype=torch.float32, device=labels.device)
    return palette[labels]


@torch.no_grad()
def write_sheet(
    generator: Generator,
    out_png: str | os.PathLike[str],
    seed: int = 0,
    per_species: int = 4,
    truncation: float = 1.0,
) -> Path:
    """Write the contact sheet PNG to ``out_png`` (parent folders created); returns its path.

    One row per species; for each of ``per_species`` latents drawn from ``seed``, three columns:
    the renderer's image, the generator's image of the same ``(z, c)`` and the label map.
    Uses matplotlib's Agg backend (no display needed).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    if per_species < 1:
        raise ValueError(f"per_species must be >= 1, got {per_species}")
    device = model_device(generator)
    gen = torch.Generator().manual_seed(seed)
    n_species = len(SPECIES)
    species = torch.arange(n_species).repeat_interleave(per_species)
    z = torch.randn(species.numel(), generator.z_dim, generator=gen)
    real = render(factors_from_latent(z, species))
    c = one_hot(species, n_species).to(device)
    fake = (
        generator.synthesis(generator.mapping(z.to(device), c, truncation=truncation)).float().cpu()
    )

    def to_rgb(images: torch.Tensor) -> torch.Tensor:
        return ((images.clamp(-1, 1) + 1) * 0.5).permute(0, 2, 3, 1)

    kinds = [
        ("renderer", to_rgb(real.images)),
        ("generator", to_rgb(fake)),
        ("labels", colour_labels(real.labels)),
    ]
    # One row per species; each sample takes three adjacent columns (renderer, generator, labels).
    n_rows, n_cols = n_species, per_species * len(kinds)
    fig, axes = plt.subplots(
        n_rows, n_cols, figsize=(1.05 * n_cols + 0.9, 1.15 * n_rows + 0.9), squeeze=False
    )
    for s, name in enumerate(SPECIES):
        for j in range(per_species):
            for k, (kind, images) in enumerate(kinds):
                ax = axes[s, j * len(kinds) + k]
                ax.imshow(images[s * per_species + j].numpy(), interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if s == 0:
                    ax.set_title(f"{kind} {j + 1}", fontsize=7)
        axes[s, 0].set_ylabel(name, fontsize=9, rotation=0, ha="right", va="center")
    handles = [Patch(color=PART_COLOURS[k], label=p) for k, p in enumerate(PARTS)]
    fig.legend(handles=handles, loc="lower center", ncol=len(PARTS), fontsize=7, frameon=False)
    fig.suptitle(
        f"toy world: renderer vs generator (truncation {truncation}), seed {seed}", fontsize=9
    )
    fig.tight_layout(rect=(0.0, 0.05, 1.0, 0.97))
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
