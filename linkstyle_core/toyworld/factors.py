"""The toy world's vocabulary: its parts, species and factors, and how factors are drawn from
the toy generator's latents (DESIGN.md, "The bundled toy world"; ``renderer`` draws them).

Factors are drawn per species from Gaussians in a fixed latent space (``factors_from_latent``):
``factor_i = softclip(mean[species, i] + std[i] * z_i)``. Each part has a *trait*, a direction
in its own factors; a species is a choice of the trait's sign for every part (``_SPECIES_CODE``):
one species has every trait low, one has every trait high, and six have exactly one trait
high. For every part there is therefore a pair of species that differs in that part alone, so a
classifier has to read every part. The nuisance factors share one distribution.
"""


from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

LATENT_DIM = 32
"""Size of the latent ``z`` that ``factors_from_latent`` reads (the toy generator's ``z_dim``)."""

PARTS: tuple[str, ...] = ("background", "body", "head", "ear", "leg", "tail", "eye")
"""Part names; a label map holds the index of the part in this tuple."""

FACTORS: tuple[str, ...] = (
    "body_length",  # semi-axis of the body ellipse along the body, px
    "body_height",  # semi-axis of the body ellipse across the body, px
    "body_hue",  # HSV hue of the body
    "head_size",  # head radius, px
    "head_hue",  # HSV hue of the head
    "ear_length",  # distance from the head centre to the ear tips, px
    "ear_width",  # half-width of the ears at their (hidden) base, px
    "ear_hue",  # HSV hue of the ears (mod 1)
    "leg_length",  # distance from the body's nominal bottom to the foot line, px
    "leg_width",  # leg radius, px
    "tail_length",  # tail length from its anchor, px
    "tail_angle",  # tail elevation above the body's backward axis, radians
    "tail_hue",  # HSV hue of the tail
    "eye_size",  # eye radius, px
    "eye_hue",  # HSV hue of the eye
    "scale",  # overall scale of the creature, 1 = nominal (nuisance)
    "brightness",  # global illumination multiplier (nuisance)
    "pose",  # tilt of the whole creature, radians, positive = nose up (nuisance)
    "pos_x",  # horizontal offset of the body centre from its nominal position, px (nuisance)
    "pos_y",  # vertical offset of the body centre, px, positive = down (nuisance)
)
NUISANCE_FACTORS: tuple[str, ...] = ("scale", "brightness", "pose", "pos_x", "pos_y")

FACTOR_PARTS: dict[str, str] = {
    "body_length": "body",
    "body_height": "body",
    "body_hue": "body",
    "head_size": "head",
    "head_hue": "head",
    "ear_length": "ear",
    "ear_width": "ear",
    "ear_hue": "ear",
    "leg_length": "leg",
    "leg_width": "leg",
    "tail_length": "tail",
    "tail_angle": "tail",
    "tail_hue": "tail",
    "eye_size": "eye",
    "eye_hue": "eye",
}
"""The part whose pixels each part-specific factor changes (every factor but the nuisances)."""

SPECIES: tuple[str, ...] = ("mole", "otter", "pug", "hare", "deer", "fox", "lemur", "lynx")

# Per factor (columns of FACTORS): valid range, mean shared by all species, within-species std.
# Stds are set so that +-1 std moves an edge by about 1 px or more (2 px between -1 and +1 std)
# or a colour by 0.1 or more in [-1, 1] units; ranges hold every species' mean +- about 2.5 std.
_RANGE_LO = torch.tensor(
    [7.5, 5.0, -0.12, 3.0, -0.06, 6.5, 1.2, 0.76, 5.5, 0.8, 7.0, -0.4, 0.42, 0.8, 0.15,
     0.85, 0.6, -0.45, -7.0, -5.0]
)  # fmt: skip
_RANGE_HI = torch.tensor(
    [16.5, 10.0, 0.26, 8.0, 0.32, 15.5, 4.8, 1.1, 12.5, 2.6, 17.0, 1.4, 0.74, 2.7, 0.55,
     1.15, 1.25, 0.45, 7.0, 5.0]
)  # fmt: skip
_BASE_MEAN = torch.tensor(
    [12.0, 7.5, 0.07, 5.5, 0.13, 11.0, 3.0, 0.93, 9.0, 1.7, 12.0, 0.5, 0.58, 1.7, 0.35,
     1.0, 0.95, 0.0, 0.0, 0.0]
)  # fmt: skip
_STD = torch.tensor(
    [0.9, 0.6, 0.03, 0.5, 0.03, 1.0, 0.55, 0.025, 1.0, 0.3, 1.4, 0.2, 0.025, 0.3, 0.035,
     0.05, 0.08, 0.1, 2.0, 1.5]
)  # fmt: skip

# Each part's trait: a direction in its factors (std units, length sqrt(k) for k factors) and
# the trait's size. A species sits at +-size along every part's trait, so two species that
# differ in one part alone are 2 * size * sqrt(k) = 5.9-6.1 std apart.
_TRAITS: dict[str, tuple[dict[str, float], float]] = {
    "body": ({"body_length": 1.0, "body_height": -1.0, "body_hue": 1.0}, 1.75),
    "head": ({"head_size": 1.0, "head_hue": -1.0}, 2.1),
    "ear": ({"ear_length": 1.0, "ear_width": -1.0, "ear_hue": 1.0}, 1.75),
    "leg": ({"leg_length": 1.0, "leg_width": -1.0}, 2.1),
    "tail": ({"tail_length": 1.0, "tail_angle": 1.0, "tail_hue": -1.0}, 1.75),
    "eye": ({"eye_size": 1.0, "eye_hue": 1.0}, 2.1),
}
_TRAIT_PARTS: tuple[str, ...] = tuple(_TRAITS)
# Sign of each part's trait per species: rows follow SPECIES, columns _TRAIT_PARTS.
_SPECIES_CODE = torch.tensor(
    [
        [-1, -1, -1, -1, -1, -1],  # mole: every trait low (short, tall, red body, small head, ...)
        [+1, -1, -1, -1, -1, -1],  # otter: long, flat, yellow body
        [-1, +1, -1, -1, -1, -1],  # pug: big, peach head
        [-1, -1, +1, -1, -1, -1],  # hare: long, narrow, red ears
        [-1, -1, -1, +1, -1, -1],  # deer: long, thin legs
        [-1, -1, -1, -1, +1, -1],  # fox: long, raised, cyan tail
        [-1, -1, -1, -1, -1, +1],  # lemur: big, green eye
        [+1, +1, +1, +1, +1, +1],  # lynx: every trait high
    ],
    dtype=torch.float32,
)


def factor_index(name: str) -> int:
    """Column of factor ``name`` in a factor tensor; raises ``KeyError`` naming the options."""
    try:
        return FACTORS.index(name)
    except ValueError:
        raise KeyError(f"unknown factor {name!r}; factors are {FACTORS}") from None


def factor_ranges() -> tuple[torch.Tensor, torch.Tensor]:
    """(lo, hi): [F] each, the valid range of every factor."""
    return _RANGE_LO.clone(), _RANGE_HI.clone()


def species_offsets() -> torch.Tensor:
    """[S, F] float32: every species' offset from the base mean, in within-species stds."""
    offsets = torch.zeros(len(SPECIES), len(FACTORS))
    for j, part in enumerate(_TRAIT_PARTS):
        direction, size = _TRAITS[part]
        for name, sign in direction.items():
            offsets[:, factor_index(name)] = _SPECIES_CODE[:, j] * sign * size
    return offsets


def species_means() -> torch.Tensor:
    """[S, F] float32: the mean of every factor for every species (before the soft clip)."""
    return _BASE_MEAN + species_offsets() * _STD


def species_stds() -> torch.Tensor:
    """[S, F] float32: the within-species std of every factor (the same for all species)."""
    return _STD.expand(len(SPECIES), -1).clone()


def _softclip(
    x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, sharpness: float = 25.0
) -> torch.Tensor:
    """Smooth clip of ``x`` into ``(lo, hi)``: identity inside, saturating at the bounds.

    ``(softplus(k t) - softplus(k (t - 1))) / k`` on ``t = (x - lo) / (hi - lo)`` is within
    ``exp(-k t) / k`` of ``t`` in the middle of the range and smooth everywhere, so the factors
    (and the generator's learning target) are a smooth function of the latent.
    """
    t = (x - lo) / (hi - lo)
    t = (F.softplus(sharpness * t) - F.softplus(sharpness * (t - 1.0))) / sharpness
    return lo + (hi - lo) * t


def normalize_latent(z: torch.Tensor) -> torch.Tensor:
    """z: [N, D] -> z scaled to unit second moment per row, as StyleGAN's mapping network does.

    Both ``factors_from_latent`` and the toy generator's mapping see the normalised latent, so
    the renderer's factors are a deterministic function of what the generator receives.
    """
    return z * torch.rsqrt(z.square().mean(dim=1, keepdim=True) + 1e-8)


def factors_from_latent(z: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
    """Deterministic, smooth map from a latent and a species to the factors.

    z: [N, D] float32 with ``D >= len(FACTORS)`` (normally ``LATENT_DIM``); it is normalised to
    unit second moment over all D columns, then column ``i`` drives factor ``i``.
    species: [N] int64 indices into ``SPECIES``.
    Returns factors: [N, F] float32, ``softclip(mean[species, i] + std[species, i] * z_i)``.
    """
    n_factors = len(FACTORS)
    if z.ndim != 2 or z.shape[1] < n_factors:
        raise ValueError(f"z must be [N, D] with D >= {n_factors}, got {tuple(z.shape)}")
    if species.shape != (z.shape[0],):
        raise ValueError(f"species must be [N] = [{z.shape[0]}], got {tuple(species.shape)}")
    if species.numel() and (int(species.min()) < 0 or int(species.max()) >= len(SPECIES)):
        raise ValueError(f"species indices must lie in [0, {len(SPECIES)}), got {species.tolist()}")
    device = z.device
    zn = normalize_latent(z.float())[:, :n_factors]
    mean = species_means().to(device)[species]
    std = species_stds().to(device)[species]
    return _softclip(mean + std * zn, _RANGE_LO.to(device), _RANGE_HI.to(device))


def sample_latent(n: int, generator: torch.Generator) -> torch.Tensor:
    """[n, LATENT_DIM] standard normal latents drawn from ``generator`` (CPU)."""
    return torch.randn(n, LATENT_DIM, generator=generator)


def sample_factors(species: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """species: [N] int64 -> factors [N, F] drawn from each species' distribution.

    Equivalent to ``factors_from_latent(sample_latent(N, generator), species)``, so a seed
    fixes the factors.
    """
    z = sample_latent(species.shape[0], generator).to(species.device)
    return factors_from_latent(z, species)


def factor_interventions(
    n_per_class: int, seed: int
) -> Iterator[tuple[int, str, torch.Tensor, torch.Tensor]]:
    """The toy world's intervention on each factor: ``n_per_class`` creatures per species
    (drawn with ``seed``), with one factor moved to -1 and +1 within-species std and every
    other factor fixed. Yields ``(index, name, low [N, F], high [N, F])`` for every factor in
    ``FACTORS`` order, all on the same creatures."""
    gen = torch.Generator().manual_seed(seed)
    species = torch.arange(len(SPECIES)).repeat_interleave(n_per_class)
    base = sample_factors(species, gen)  # [N, F]
    std = species_stds()[species]  # [N, F]
    for i, name in enumerate(FACTORS):
        low, high = base.clone(), base.clone()
        low[:, i] -= std[:, i]
        high[:, i] += std[:, i]
        yield i, name, low, high
