"""The toy world's renderer: shapes, determinism, label maps that follow the factors."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from linkstyle_core.toyworld.factors import (
    FACTOR_PARTS,
    FACTORS,
    LATENT_DIM,
    NUISANCE_FACTORS,
    PARTS,
    SPECIES,
    factor_index,
    factor_ranges,
    factors_from_latent,
    sample_factors,
    sample_latent,
    species_means,
    species_stds,
)
from linkstyle_core.toyworld.footprint import factor_footprints
from linkstyle_core.toyworld.renderer import infer_labels, render, render_species


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
    assert len(FACTORS) <= LATENT_DIM
    assert 8 <= len(SPECIES) <= 10
    assert set(NUISANCE_FACTORS) <= set(FACTORS)
    # every factor is either a nuisance or belongs to exactly one creature part, and every
    # creature part (the eye too) has at least two factors of its own
    assert set(FACTOR_PARTS) == set(FACTORS) - set(NUISANCE_FACTORS)
    for part in PARTS[1:]:
        assert sum(p == part for p in FACTOR_PARTS.values()) >= 2, part


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
    # the soft clip is (nearly) the identity at the species means: within 0.2% of the range
    means = species_means()
    for s in range(len(SPECIES)):
        assert ((_mean_factors(s)[0] - means[s]).abs() <= 2e-3 * (hi - lo)).all()


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
    """Nearest-mean on the true factors is ~98% right, any single factor at most ~40%."""
    gen = torch.Generator().manual_seed(2)
    species = torch.randint(len(SPECIES), (20000,), generator=gen)
    f = sample_factors(species, gen)
    std = f.std(dim=0)
    means = species_means()
    joint = torch.cdist(f / std, means / std).argmin(dim=1)
    assert (joint == species).float().mean() > 0.97
    for i, name in enumerate(FACTORS):
        single = (f[:, i : i + 1] - means[None, :, i]).abs().argmin(dim=1)
        assert (single == species).float().mean() < 0.4, name
    # nuisance factors share one distribution
    for name in NUISANCE_FACTORS:
        i = factor_index(name)
        assert torch.allclose(means[:, i], means[0, i].expand(len(SPECIES)))


def test_every_part_decides_some_pair_of_species() -> None:
    """For every part there are two species whose means differ in that part's factors alone
    (by at least 5 within-species stds), so a classifier must read every part."""
    offsets = (species_means() - species_means()[0]) / species_stds()
    for part in PARTS[1:]:
        cols = torch.tensor([FACTOR_PARTS.get(f) == part for f in FACTORS])
        found = False
        for a in range(len(SPECIES)):
            for b in range(len(SPECIES)):
                d = offsets[a] - offsets[b]
                if d[~cols].abs().max() < 1e-6 and d[cols].norm() >= 5.0:
                    found = True
        assert found, part


def test_every_part_factor_stays_on_its_part_and_is_visible() -> None:
    """+-1 std of every part factor: at least 0.8 of the changed pixels lie on its own part
    (0.9 measured as the worst case at this sample size), and the change is visible: at least
    8 changed pixels per image for geometry and a colour change of at least 0.1."""
    footprints = factor_footprints(n_per_class=6, seed=11)
    for name in FACTOR_PARTS:
        row = footprints[name]
        assert row["own_part_share"] >= 0.8, (name, row)
        assert row["changed_px"] >= 8.0, (name, row)
        assert row["colour_change"] >= 0.1, (name, row)
    # nuisances change pixels all over the creature, not one part
    for name in NUISANCE_FACTORS:
        row = footprints[name]
        assert max(row[f"share_{p}"] for p in PARTS[1:]) < 0.8 or name == "brightness", name


def test_ears_do_not_scale_with_the_head_and_head_colour_is_its_own() -> None:
    f = _sweep("head_size", [4.5, 6.5])
    out = render(f)
    ear = PARTS.index("ear")
    ys = torch.arange(64).float().view(-1, 1)
    # the ear tips (top-most ear row) stay where they are when the head grows
    top = [float(ys.expand(64, 64)[out.labels[k] == ear].min()) for k in range(2)]
    assert top[0] == top[1]
    g = _sweep("body_hue", [0.0, 0.2])
    out = render(g)
    head = (out.labels[0] == PARTS.index("head")).float()
    # head pixels away from the head's edge (whose anti-aliasing blends in the body's colour)
    inner = torch.nn.functional.avg_pool2d(head[None, None], 3, 1, padding=1)[0, 0] > 0.999
    assert inner.sum() > 20
    assert torch.equal(out.images[0][:, inner], out.images[1][:, inner])


def test_eye_lies_on_head() -> None:
    """The eye sits at a fixed place on the head (not scaled by its size), so on the smallest
    heads it can reach over the head's edge: at least 80% of eye pixels only touch eye or head
    pixels (87% on this batch)."""
    out = _batch(64)
    eye, head = PARTS.index("eye"), PARTS.index("head")
    lab = out.labels
    inner = lab[:, 1:-1, 1:-1]
    inside = torch.ones_like(inner, dtype=torch.bool)
    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        neighbour = lab[:, 1 + dy : 63 + dy, 1 + dx : 63 + dx]
        inside &= (neighbour == eye) | (neighbour == head)
    assert inside[inner == eye].float().mean() >= 0.8


@pytest.mark.parametrize(
    ("factor", "part"),
    [
        ("ear_length", "ear"),
        ("ear_width", "ear"),
        ("tail_length", "tail"),
        ("leg_length", "leg"),
        ("leg_width", "leg"),
        ("head_size", "head"),
        ("body_length", "body"),
        ("body_height", "body"),
        ("eye_size", "eye"),
    ],
)
def test_part_area_grows_with_its_factor(factor: str, part: str) -> None:
    lo, hi = factor_ranges()
    i = factor_index(factor)
    span = float(hi[i] - lo[i])
    values = torch.linspace(float(lo[i]) + 0.2 * span, float(hi[i]) - 0.2 * span, 5).tolist()
    areas = _area(render(_sweep(factor, values)).labels, part)
    assert (areas[1:] > areas[:-1]).all(), areas


def test_pos_x_shifts_the_centroid() -> None:
    out = render(_sweep("pos_x", [-6.0, 0.0, 6.0]))
    fg = (out.labels != 0).float()
    xs = torch.arange(64).float() + 0.5
    cx = (fg.sum(dim=1) * xs).sum(dim=1) / fg.sum(dim=(1, 2))
    assert torch.allclose(cx[1:] - cx[:-1], torch.tensor([6.0, 6.0]), atol=0.3)


def test_body_hue_changes_body_colour_only() -> None:
    out = render(_sweep("body_hue", [0.0, 0.2]))
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
