"""Part-local probes: the Jacobian's generalized eigenvectors find the latent directions that
change one part's pixels, on a generator whose parts are known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from linkstyle_core.part_probes import direct_profiles, part_probe_directions, part_subspaces


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


def test_part_subspaces_refuse_a_subspace_larger_than_w():
    gen = BandGenerator()
    with pytest.raises(ValueError, match="between 1 and w_dim"):
        part_subspaces(gen, torch.zeros(1, gen.w_dim), _labels(1), [1], k=8)


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
