"""The link estimator: exact recovery, regularisation, float64 solving, scikit-learn feel."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from linkstyle_core.link import LinearLink
from linkstyle_core.metrics import order_agreement, r2_scores


def _linear_data(n: int = 400, d: int = 20, k: int = 5, noise: float = 0.0):
    g = torch.Generator().manual_seed(0)
    r = torch.rand(n, d, generator=g) * 3
    a = torch.randn(k, d, generator=g)
    b = torch.randn(k, generator=g)
    w = r @ a.T + b + noise * torch.randn(n, k, generator=g)
    return r, w, a, b


def test_least_squares_recovers_the_map() -> None:
    r, w, a, b = _linear_data()
    link = LinearLink("lr").fit(r, w)
    assert link.fit(r, w) is link  # fit returns self
    torch.testing.assert_close(link.coef_, a, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(link.intercept_, b, atol=1e-4, rtol=1e-4)
    overall, per_dim = r2_scores(w, link.predict(r))
    assert overall > 0.999999 and per_dim.shape == (5,)


def test_ridge_shrinks_and_tends_to_least_squares() -> None:
    r, w, _, _ = _linear_data(noise=0.5)
    lr = LinearLink("lr").fit(r, w)
    small = LinearLink("ridge", alpha=1e-6).fit(r, w)
    big = LinearLink("ridge", alpha=1e4).fit(r, w)
    torch.testing.assert_close(small.coef_, lr.coef_, atol=1e-4, rtol=1e-4)
    assert big.coef_.norm() < 0.5 * lr.coef_.norm()


def test_dead_units_and_collinear_units_are_handled() -> None:
    r, w, _, _ = _linear_data()
    r = torch.cat([r, torch.zeros(len(r), 3), r[:, :2]], dim=1)  # dead and duplicated units
    for kind in ("lr", "ridge"):
        link = LinearLink(kind, alpha=1e-3).fit(r, w)
        assert torch.isfinite(link.coef_).all()
        assert r2_scores(w, link.predict(r))[0] > 0.9999


def test_elasticnet_is_sparse() -> None:
    pytest.importorskip("sklearn")
    r, w, _, _ = _linear_data(d=30, noise=0.1)
    r = torch.cat([r, torch.randn(len(r), 30)], 1)  # 30 irrelevant units
    enet = LinearLink("elasticnet", alpha=0.05, l1_ratio=1.0).fit(r, w)
    assert enet.coef_.shape == (5, 60)
    assert (enet.coef_[:, 30:].abs() < 1e-6).float().mean() > 0.8
    assert r2_scores(w, enet.predict(r))[0] > 0.95


def test_misuse_is_explained() -> None:
    r, w, _, _ = _linear_data()
    with pytest.raises(RuntimeError, match="not fitted yet"):
        LinearLink().predict(r)
    link = LinearLink().fit(r, w)
    with pytest.raises(ValueError, match="fitted on 20 units, r has 7"):
        link.predict(r[:, :7])
    with pytest.raises(ValueError, match="fit needs r"):
        LinearLink().fit(r, w[:10])


def test_stored_link_predicts_the_same() -> None:
    r, w, _, _ = _linear_data()
    link = LinearLink("ridge", alpha=0.1).fit(r, w)
    again = LinearLink.from_arrays(link.coef_.numpy(), link.intercept_.numpy(), type="ridge")
    torch.testing.assert_close(again.predict(r), link.predict(r))


def test_r2_known_values() -> None:
    t = torch.tensor([[0.0, 1.0], [2.0, 1.0], [4.0, 1.5], [6.0, 1.5]])
    overall, per_dim = r2_scores(t, t)
    assert overall == pytest.approx(1.0) and np.allclose(per_dim, 1.0)
    mean_pred = t.mean(0).expand_as(t)
    assert r2_scores(t, mean_pred)[0] == pytest.approx(0.0)


def test_order_agreement_sees_shared_geometry() -> None:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(200) % 5
    centres = torch.randn(5, 10, generator=g) * 4
    r = centres[labels] + torch.randn(200, 10, generator=g)
    q, _ = torch.linalg.qr(torch.randn(10, 10, generator=g))
    same = order_agreement(r, 2.0 * r @ q, labels)  # rotated and scaled: same order
    assert same["rsa_class"] == pytest.approx(1.0) and same["rsa_sample"] == pytest.approx(1.0)
    unrelated = order_agreement(r, torch.randn(200, 10, generator=g), labels)
    assert abs(unrelated["rsa_sample"]) < 0.2
