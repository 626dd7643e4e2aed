"""Part-local probes: the Jacobian's generalized eigenvectors find the latent directions that
change one part's pixels, on a generator whose parts are known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from linkstyle_core.part_probes import (
    direct_profiles,
    enclosed_borders,
    global_move_count,
    image_change_basis,
    natural_basis,
    part_centroids,
    part_energy_bias,
    part_probe_directions,
    part_split_responses,
    part_subspaces,
    refine_by_measured_change,
    sd_length,
    share_test,
    split_profile,
)


class BandGenerator:
    """w [w_dim = 7] -> 3 x 8 x 8 images: dims 0-1 draw on rows 0-3 (part 1), dims 2-3 on rows
    4-7 (part 2), dims 4-6 everywhere, through a tanh, so the Jacobian depends on w."""

    w_dim, num_ws, resolution = 7, 2, 8

    def __init__(self) -> None:
        gen = torch.Generator().manual_seed(0)
        basis = torch.randn(7, 3, 8, 8, generator=gen)
        basis[0:2, :, 4:] = 0
        basis[2:4, :, :4] = 0
        basis[4:] *= 0.5
        self.basis = basis

    def synthesis(self, ws: torch.Tensor) -> torch.Tensor:
        return torch.tanh(torch.einsum("nd,dchw->nchw", ws[:, 0], self.basis) / 3)


def _labels(n: int) -> torch.Tensor:
    labels = torch.ones(n, 8, 8, dtype=torch.long)
    labels[:, 4:] = 2
    return labels


@pytest.mark.parametrize("part,own", [(1, [0, 1]), (2, [2, 3])])
def test_part_subspaces_span_the_directions_that_draw_on_the_part_alone(part, own):
    gen = BandGenerator()
    w0 = torch.randn(3, gen.w_dim, generator=torch.Generator().manual_seed(1))
    [sub] = part_subspaces(gen, w0, _labels(3), [part], k=2)
    assert sub.shape == (gen.w_dim, 2)
    np.testing.assert_allclose(np.linalg.norm(sub, axis=0), 1.0, rtol=1e-6)
    # both columns lie in the span of the part's own latent dimensions
    inside = np.linalg.norm(sub[own], axis=0)
    assert np.all(inside > 0.999), inside
    # the third direction can only mix in the creature-wide dimensions or the other part
    [three] = part_subspaces(gen, w0, _labels(3), [part], k=3)
    assert np.linalg.norm(three[own, 2]) < 0.9


def test_part_subspaces_refuse_a_subspace_larger_than_the_latent():
    gen = BandGenerator()
    with pytest.raises(ValueError, match="between 1 and the latent's 7 coordinates"):
        part_subspaces(gen, torch.zeros(1, gen.w_dim), _labels(1), [1], k=8)
    with pytest.raises(ValueError, match="between 1 and the latent's 2 coordinates"):
        part_subspaces(gen, torch.zeros(1, gen.w_dim), _labels(1), [1], k=3,
                       basis=np.eye(7)[:, :2])


def test_natural_basis_keeps_the_spread_within_classes_scaled_by_its_sd():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 500)
    # classes far apart along dim 6; within them dims 0 and 1 vary (sd 3 and 1), dim 5 barely
    w = np.zeros((2000, 7))
    w[:, 6] = 50.0 * labels
    w[:, 0] = 3.0 * rng.standard_normal(2000)
    w[:, 1] = 1.0 * rng.standard_normal(2000)
    w[:, 5] = 1e-3 * rng.standard_normal(2000)
    basis = natural_basis(w, labels, variance=0.99)
    assert basis.shape == (7, 2)
    np.testing.assert_allclose(np.abs(basis[[0, 1], [0, 1]]), [3.0, 1.0], rtol=0.05)
    assert np.abs(basis[2:]).max() < 0.01
    # without the classes, their offsets dominate
    assert np.abs(natural_basis(w, None, variance=0.99)[6, 0]) > 10
    with pytest.raises(ValueError, match="variance"):
        natural_basis(w, labels, variance=0.0)


def test_part_subspaces_stay_in_the_natural_basis():
    gen = BandGenerator()
    w0 = torch.randn(3, gen.w_dim, generator=torch.Generator().manual_seed(1))
    rng = np.random.default_rng(2)
    basis = rng.standard_normal((gen.w_dim, 3)) * [2.0, 1.0, 0.5]
    # dims 0 and 1 (part 1's) in the basis: part 1's top direction is the basis's mix of them
    basis[:, 0] = [1.0, 2.0, 0, 0, 0, 0, 0]
    [sub] = part_subspaces(gen, w0, _labels(3), [1], k=2, basis=basis)
    q, _ = np.linalg.qr(basis)
    np.testing.assert_allclose(q @ (q.T @ sub), sub, atol=1e-8)
    np.testing.assert_allclose(np.abs(sub[:, 0]), np.abs(basis[:, 0]) / np.sqrt(5), atol=1e-6)


def test_part_probe_directions_take_the_parts_in_turn_within_their_subspaces():
    rng = np.random.default_rng(0)
    subspaces = [np.linalg.qr(rng.standard_normal((7, 2)))[0] for _ in range(3)]
    dirs, which = part_probe_directions(subspaces, 10, seed=3)
    assert dirs.shape == (10, 7) and which.tolist() == [0, 1, 2, 0, 1, 2, 0, 1, 2, 0]
    np.testing.assert_allclose(np.linalg.norm(dirs, axis=1), 1.0, rtol=1e-9)
    for d, j in zip(dirs, which, strict=True):
        q = subspaces[j]
        np.testing.assert_allclose(q @ (q.T @ d), d, atol=1e-9)
    again, _ = part_probe_directions(subspaces, 10, seed=3)
    np.testing.assert_array_equal(dirs, again)


def test_direct_profiles_average_the_squared_response_per_probe_part():
    which = np.array([0, 1, 0, 1])
    response = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [0.0, 4.0]])
    np.testing.assert_allclose(direct_profiles(response, which, 2),
                               [[5.0, 0.0], [0.0, 10.0]])


def _responses(probes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Three units over 3 parts' probes: one reads part 0 alone, one all parts alike, one
    part 0 at a share of 0.8 of its mean squared response; every response noisy."""
    rng = np.random.default_rng(seed)
    which = np.arange(probes) % 3
    gains = np.array([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.3535, 0.3535]])
    response = gains[:, which].T * rng.standard_normal((probes, 1))
    return response + 0.05 * rng.standard_normal(response.shape), which


def test_share_test_calls_the_unit_of_one_part_and_not_the_one_of_all():
    response, which = _responses(192, 0)
    share, p = share_test(response, which, 3, tau=0.7, resamples=200)
    assert share.shape == (3, 3)
    np.testing.assert_allclose(share.sum(1), 1.0)
    assert share[0, 0] > 0.95 and p[0] < 0.01
    assert share[1].max() < 0.6 and p[1] > 0.5
    with pytest.raises(ValueError, match="tau"):
        share_test(response, which, 3, tau=1.0)


def test_share_test_finds_a_unit_above_the_line_more_surely_with_more_probes():
    # the third unit's share is 0.8, above a line at 0.7: its p falls as the probes grow
    medians = [np.median([share_test(*_responses(n, seed), 3, tau=0.7, resamples=200)[1][2]
                          for seed in range(5)]) for n in (48, 192, 768)]
    assert medians[0] > medians[1] > medians[2], medians
    assert medians[2] < 0.01


def test_refine_by_measured_change_keeps_the_combination_local_in_the_measures():
    rng = np.random.default_rng(0)
    cand = np.linalg.qr(rng.standard_normal((6, 3)))[0]             # part 0's 3 candidates
    # measured change [parts 2, candidates 3, parts 2, measures 2]: candidate 0 moves part 0
    # and part 1, candidates 1 and 2 part 1 alone, in other measures; only the combination
    # candidate 0 - candidate 2 leaves part 1 as it is
    change = np.zeros((2, 3, 2, 2))
    change[0, 0] = [[1.0, 0.5], [1.0, -0.5]]
    change[0, 1] = [[0.0, 0.0], [0.0, 1.0]]
    change[0, 2] = [[0.0, 0.0], [1.0, -0.5]]
    change[1] = change[0]
    [top, _] = refine_by_measured_change([cand, cand], change, k=1)
    expected = (cand[:, 0] - cand[:, 2]) / np.sqrt(2)
    np.testing.assert_allclose(np.abs(top[:, 0] @ expected), 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="between 1 and the 3 candidates"):
        refine_by_measured_change([cand], change[:1], k=4)


def test_part_energy_bias_recovers_a_per_part_scale_under_per_unit_scales():
    rng = np.random.default_rng(1)
    reference = rng.uniform(0.01, 1.0, (200, 4))
    bias = np.array([0.5, 0.0, -0.2, -0.3])                          # log10, mean 0
    profile = reference * 10 ** bias * rng.uniform(0.1, 10.0, (200, 1))
    profile[:5] *= 1e3                                               # a few units off the model
    np.testing.assert_allclose(part_energy_bias(profile, reference), bias, atol=1e-6)
    # without a bias there is none to find, whatever the units' scales
    np.testing.assert_allclose(part_energy_bias(reference * 7.0, reference), 0.0, atol=1e-9)


def test_probes_with_a_basis_are_one_sd_of_it_long():
    basis = np.diag([2.0, 0.5, 1.0])[:, :2]                          # SDs 2 and 0.5 on dims 0, 1
    sub = np.eye(3)[:, :2]
    dirs, _ = part_probe_directions([sub], 64, seed=3, basis=basis)
    np.testing.assert_allclose(sd_length(dirs, basis), 1.0)
    # in W the same probes are between 0.5 and 2 long, as their mix of the two axes
    w_length = sd_length(dirs, None)
    assert w_length.min() >= 0.5 - 1e-9 and w_length.max() <= 2.0 + 1e-9
    assert w_length.max() - w_length.min() > 0.5


def test_an_enclosed_part_takes_its_border_and_a_part_beside_the_background_does_not() -> None:
    labels = torch.zeros(12, 12, dtype=torch.long)     # 0 background
    labels[2:10, 2:10] = 1                              # a face
    labels[5:7, 5:7] = 2                                # an eye inside it
    labels[2:10, 10:12] = 3                             # an ear between the face and the edge
    out = enclosed_borders(labels, [1, 2, 3], background=0)
    assert (out[4:8, 4:8] == 2).all()                   # the eye's ring is the eye's now
    assert int((out == 1).sum()) == int((labels == 1).sum()) - 12
    assert torch.equal(out == 3, labels == 3)           # the ear borders the background too
    assert (out[labels == 0] == 0).all()                # no part takes the background
    assert torch.equal(enclosed_borders(labels, [1, 2, 3], background=0, share=1.01), labels)


def test_image_change_basis_keeps_each_read_outs_energy_and_drops_the_largest() -> None:
    gen = torch.Generator().manual_seed(1)
    a, b, c = torch.randn(3, 3, 8, 8, generator=gen, dtype=torch.float64)
    changes = torch.stack([a, 100 * b, a + 100 * b, 1e-3 * c])
    read = torch.randn(5, 3 * 8 * 8, generator=gen, dtype=torch.float64)   # 5 linear read-outs

    def energy(basis: torch.Tensor) -> torch.Tensor:
        return ((read @ basis.reshape(len(basis), -1).T) ** 2).sum(1)

    basis = image_change_basis(changes, rtol=1e-7)
    assert basis.shape == (3, 3, 8, 8)            # a, b, c: the sum adds no direction
    assert torch.allclose(energy(basis), energy(changes), rtol=1e-9)
    assert image_change_basis(changes, rtol=1e-3).shape[0] == 2     # the tiny one drops
    rest = image_change_basis(changes, rtol=1e-7, drop=1)           # the largest (mostly b)
    assert rest.shape[0] == 2 and torch.all(energy(rest) < energy(basis))
    b_hat = (b / b.norm()).reshape(-1)
    assert all(abs(float(v.reshape(-1) @ b_hat)) < 0.3 * float(v.norm()) for v in rest)
    white = image_change_basis(changes, rtol=1e-3, whiten=True)
    flat = white.reshape(2, -1)
    assert torch.allclose(flat @ flat.T, torch.eye(2, dtype=torch.float64), atol=1e-9)
    for change in (a, b):                         # an orthonormal basis of a and b's span
        v = change.reshape(-1)
        assert torch.allclose(flat.T @ (flat @ v), v, atol=1e-9 * float(v.norm()))
    assert image_change_basis(torch.zeros(2, 3, 8, 8)).shape[0] == 0


def test_part_split_responses_credit_the_pixels_a_read_out_reads() -> None:
    gen = torch.Generator().manual_seed(2)
    weights = torch.randn(2, 3, 8, 8, generator=gen)
    weights[0, :, 4:] = 0                         # read-out 0 ignores part 2's rows

    def read(x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(torch.einsum("bchw,dchw->bd", x, weights) / 10) ** 2

    image = torch.randn(3, 8, 8, generator=gen)
    changes = torch.randn(5, 3, 8, 8, generator=gen)          # spread over the whole image
    labels = _labels(1)[0]
    split = part_split_responses(read, image, changes, labels, [1, 2], chunk=3)
    assert split.shape == (2, 5, 2)
    assert torch.all(split[1, :, 0] == 0)                     # nothing from the pixels it ignores
    assert split[0, :, 0].abs().min() > 0 and split[1, :, 1].abs().min() > 0
    whole = torch.stack([torch.func.jvp(lambda x: read(x[None])[0], (image,), (c,))[1]
                         for c in changes])
    assert torch.allclose(split.sum(0), whole, atol=1e-5)     # the pieces add up to the whole
    eps = 1e-3                                                # and are the real derivative
    piece = changes[0] * (labels == 1)
    finite = (read((image + eps * piece)[None]) - read((image - eps * piece)[None]))[0] / (2 * eps)
    assert torch.allclose(split[0, 0], finite, atol=1e-3)


def test_part_centroids_find_each_parts_soft_centre_and_area() -> None:
    logits = torch.full((2, 3, 8, 8), -20.0)
    logits[:, 0] = 0.0                                      # background everywhere else
    logits[0, 1, 1:3, 2:6] = 20.0                           # part 1: rows 1-2, columns 2-5
    logits[0, 2, 5:8, 0:2] = 20.0                           # part 2: rows 5-7, columns 0-1
    logits[1] = logits[0].roll(1, dims=-1)                  # the same, one column to the right
    c = part_centroids(logits, [1, 2])
    assert c.shape == (2, 2, 3)
    assert torch.allclose(c[0], torch.tensor([[3.5, 1.5, 8.0], [0.5, 6.0, 6.0]]), atol=1e-3)
    assert torch.allclose(c[1, :, 0] - c[0, :, 0], torch.ones(2), atol=1e-3)


def test_global_move_count_counts_the_similarity_and_background_moves_only() -> None:
    centroids = np.array([[10.0, 10.0], [20.0, 12.0], [15.0, 20.0], [8.0, 18.0]])
    off = centroids - centroids.mean(0)
    m = 6
    velocity = np.zeros((4, 2, m))
    velocity[:, 0, 0] = 1.0                                  # all parts shift right
    velocity[:, :, 1] = 0.1 * off                            # all grow about their centre
    velocity[2, 1, 2] = 1.0                                  # one part moves on its own
    velocity[:, :, 3] = 1e-6 * off                           # barely moves: under the floor
    fg = np.diag([1.0, 1.0, 1.0, 1.0, 1.0, 0.05])            # move 5 is mostly background,
    bg = np.diag([0.05, 0.05, 0.05, 0.05, 0.2, 1.0])         # move 4 a little
    assert global_move_count(centroids, velocity, bg, fg) == 3
    assert global_move_count(centroids, velocity, bg, fg, share=0.99) == 2
    velocity[0, :, 1] += 0.5                                 # growth no longer a similarity
    assert global_move_count(centroids, velocity, bg, fg) == 2
    with pytest.raises(ValueError, match="in \\(0, 1\\)"):
        global_move_count(centroids, velocity, bg, fg, explained=1.0)


def test_split_profile_is_the_root_sum_of_squares_of_the_split_and_drops_on_request() -> None:
    gen = BandGenerator()
    w0 = torch.randn(7, generator=torch.Generator().manual_seed(4))
    weights = torch.randn(3, 3 * 8 * 8, generator=torch.Generator().manual_seed(5))

    def image(a: torch.Tensor) -> torch.Tensor:
        return gen.synthesis((w0 + a)[None, None].expand(1, 2, 7))[0]

    def read(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(len(x), -1) @ weights.T

    labels = _labels(1)[0]
    profile, dropped = split_profile(image, read, labels, [1, 2], 0, 7)
    jac = torch.func.jacfwd(image)(torch.zeros(7))                  # [3, 8, 8, 7]
    want = torch.stack([((weights * (labels == q).repeat(3, 1, 1).reshape(-1)) @
                         jac.reshape(-1, 7)).pow(2).sum(1).sqrt() for q in (1, 2)])
    assert dropped == 0 and profile.shape == (2, 3)
    assert np.allclose(profile, want.numpy(), rtol=1e-4)
    less, dropped = split_profile(image, read, labels, [1, 2], 0, 7, drop=2)
    assert dropped == 2 and np.all(less <= profile + 1e-6) and not np.allclose(less, profile)
    with pytest.raises(ValueError, match="needs centroids"):
        split_profile(image, read, labels, [1, 2], 0, 7, drop="auto")
