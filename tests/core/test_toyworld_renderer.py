"""The toy world's renderer: shapes, determinism, label maps that follow the factors."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from linkstyle_core.toyworld.renderer import (
    FACTORS,
    LATENT_DIM,
    NUISANCE_FACTORS,
    PARTS,
    SPECIES,
    factor_index,
    factor_ranges,
    factors_from_latent,
    infer_labels,
    render,
    render_species,
    sample_factors,
    sample_latent,
    species_means,
)


def _batch(n: int = 64, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    species = torch.arange(n) % len(SPECIES)
    return render_species(species, gen)


def _mean_factors(species: int = 0, n: int = 1) -> torch.Tensor:
    """[n, F] copies of one species' mean factors (z = 0)."""
    z = torch.zeros(n, LATENT_DIM)
    return factors_from_latent(z, torch.full((n,), species, dtype=torch.long))


def _sweep(name: str, values: list[float], species: int = 0) -> torch.Tensor:
    """Factors [len(values), F]: one species' means with factor ``name`` set to each value."""
    f = _mean_factors(species, len(values))
    f[:, factor_index(name)] = torch.tensor(values)
    return f


def _area(labels: torch.Tensor, part: str) -> torch.Tensor:
    return (labels == PARTS.index(part)).sum(dim=(1, 2)).float()


def test_names_and_counts() -> None:
    assert PARTS == ("background", "body", "head", "ear", "leg", "tail", "eye")
    assert len(FACTORS) >= 12 and len(set(FACTORS)) == len(FACTORS)
    assert len(SPECIES) >= 5
    assert set(NUISANCE_FACTORS) <= set(FACTORS)


def test_shapes_dtypes_and_range() -> None:
    out = _batch(32)
    assert out.images.shape == (32, 3, 64, 64) and out.images.dtype == torch.float32
    assert out.labels.shape == (32, 64, 64) and out.labels.dtype == torch.int64
    assert out.factors.shape == (32, len(FACTORS))
    assert out.images.min() >= -1.0 and out.images.max() <= 1.0
    assert int(out.labels.min()) >= 0 and int(out.labels.max()) < len(PARTS)
    # every creature shows every part
    for part in PARTS:
        assert (_area(out.labels, part) > 0).all(), part


def test_other_resolution() -> None:
    out = render(_mean_factors(1, 2), resolution=32)
    assert out.images.shape == (2, 3, 32, 32) and out.labels.shape == (2, 32, 32)


def test_deterministic_by_seed() -> None:
    a, b, c = _batch(16, seed=3), _batch(16, seed=3), _batch(16, seed=4)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)


def test_factors_stay_in_range_and_means_at_zero_latent() -> None:
    gen = torch.Generator().manual_seed(0)
    species = torch.randint(len(SPECIES), (4000,), generator=gen)
    z = sample_latent(4000, gen) * 3.0  # far tails too
    f = factors_from_latent(z, species)
    lo, hi = factor_ranges()
    assert (f >= lo).all() and (f <= hi).all()
    # the soft clip is (nearly) the identity at the species means
    means = species_means()
    for s in range(len(SPECIES)):
        assert torch.allclose(_mean_factors(s)[0], means[s], atol=1e-3)


def test_factors_from_latent_is_smooth() -> None:
    gen = torch.Generator().manual_seed(1)
    z = sample_latent(64, gen)
    species = torch.arange(64) % len(SPECIES)
    step = 1e-3 * torch.randn(64, LATENT_DIM, generator=gen)
    diff = (factors_from_latent(z + step, species) - factors_from_latent(z, species)).abs()
    _, hi = factor_ranges()
    lo, _ = factor_ranges()
    assert (diff / (hi - lo)).max() < 1e-2


def test_species_overlap_per_factor_but_separate_jointly() -> None:
    """Nearest-mean on the true factors is ~99% right, any single factor at most ~55%."""
    gen = torch.Generator().manual_seed(2)
    species = torch.randint(len(SPECIES), (20000,), generator=gen)
    f = sample_factors(species, gen)
    std = f.std(dim=0)
    means = species_means()
    joint = torch.cdist(f / std, means / std).argmin(dim=1)
    assert (joint == species).float().mean() > 0.97
    for i, name in enumerate(FACTORS):
        single = (f[:, i : i + 1] - means[None, :, i]).abs().argmin(dim=1)
        assert (single == species).float().mean() < 0.6, name
    # nuisance factors share one distribution
    for name in NUISANCE_FACTORS:
        i = factor_index(name)
        assert torch.allclose(means[:, i], means[0, i].expand(len(SPECIES)))


def test_eye_lies_inside_head() -> None:
    out = _batch(64)
    eye, head = PARTS.index("eye"), PARTS.index("head")
    lab = out.labels
    inner = lab[:, 1:-1, 1:-1]
    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        neighbour = lab[:, 1 + dy : 63 + dy, 1 + dx : 63 + dx]
        assert ((neighbour == eye) | (neighbour == head))[inner == eye].all()


@pytest.mark.parametrize(
    ("factor", "part"),
    [
        ("ear_length", "ear"),
        ("ear_width", "ear"),
        ("tail_length", "tail"),
        ("leg_length", "leg"),
        ("head_size", "head"),
        ("body_size", "body"),
    ],
)
def test_part_area_grows_with_its_factor(factor: str, part: str) -> None:
    lo, hi = factor_ranges()
    i = factor_index(factor)
    values = torch.linspace(float(lo[i]) * 1.15, float(hi[i]) * 0.9, 5).tolist()
    areas = _area(render(_sweep(factor, values)).labels, part)
    assert (areas[1:] > areas[:-1]).all(), areas


def test_pos_x_shifts_the_centroid() -> None:
    out = render(_sweep("pos_x", [-6.0, 0.0, 6.0]))
    fg = (out.labels != 0).float()
    xs = torch.arange(64).float() + 0.5
    cx = (fg.sum(dim=1) * xs).sum(dim=1) / fg.sum(dim=(1, 2))
    assert torch.allclose(cx[1:] - cx[:-1], torch.tensor([6.0, 6.0]), atol=0.3)


def test_body_hue_changes_body_colour_only() -> None:
    out = render(_sweep("body_hue", [0.05, 0.25]))
    body = out.labels[0] == PARTS.index("body")
    assert torch.equal(out.labels[0], out.labels[1])
    assert (out.images[0][:, body] - out.images[1][:, body]).abs().max() > 0.2
    # the top rows are pure background (edge pixels next to the creature blend both colours)
    assert (out.labels[:, :4] == 0).all()
    assert torch.equal(out.images[0][:, :4], out.images[1][:, :4])


def test_infer_labels_recovers_renderer_labels() -> None:
    out = _batch(64)
    inferred = infer_labels(out.images, out.factors)
    assert (inferred == out.labels).float().mean() > 0.995


def test_bad_input_is_rejected() -> None:
    with pytest.raises(ValueError, match="factors must be"):
        render(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="z must be"):
        factors_from_latent(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="species indices"):
        factors_from_latent(torch.zeros(2, LATENT_DIM), torch.tensor([0, len(SPECIES)]))
    with pytest.raises(KeyError, match="unknown factor"):
        factor_index("wings")


def test_core_does_not_import_pipeline_dependencies() -> None:
    code = (
        "import sys, linkstyle_core.toyworld, linkstyle_core.models.toy; "
        "bad = [m for m in ('prefect', 'zarr', 'pyarrow', 'storage') if m in sys.modules]; "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
