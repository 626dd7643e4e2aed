"""Stage 2, the link: a linear map from classifier activations to generator latents.

``w ~ A r + b`` (paper Sec. 2.2), fitted like a scikit-learn estimator: ``fit`` returns self,
learned values end in ``_``. Least squares and ridge are solved in closed form in float64 on
the configured device; elastic net goes through scikit-learn (the ``sklearn`` extra).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch


def _min_norm_lstsq(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The minimum-norm least-squares solution b of x @ b = y (x: [N, D], float64), as
    ``pinv(x) @ y`` but through the eigendecomposition of the smaller Gram matrix: dead
    (always-zero) units are common after a ReLU, and an SVD of a 25,000 x 2048 matrix takes
    10 s on two cores where this takes 3 s. Directions whose eigenvalue is below
    ``max(N, D) * eps`` of the largest count as null (numpy's rank cutoff, on x's squared
    singular values).
    """
    tall = x.shape[0] >= x.shape[1]
    gram = x.T @ x if tall else x @ x.T
    values, vectors = torch.linalg.eigh(gram)
    keep = values > values.max().clamp_min(0) * max(x.shape) * torch.finfo(x.dtype).eps
    v, inv = vectors[:, keep], 1.0 / values[keep]
    if tall:  # b = V diag(1/l) V^T x^T y
        return v @ (inv[:, None] * (v.T @ (x.T @ y)))
    return x.T @ (v @ (inv[:, None] * (v.T @ y)))  # b = x^T (x x^T)^+ y


class LinearLink:
    """w = r @ coef_.T + intercept_.

    type: 'lr' (ordinary least squares), 'ridge' (L2, ``alpha``), 'elasticnet'
    (``alpha``, ``l1_ratio``; scikit-learn's parameterisation).
    After ``fit``: ``coef_`` [w_dim, D] float32 (the paper's A), ``intercept_`` [w_dim] float32.
    """

    def __init__(
        self,
        type: Literal["lr", "ridge", "elasticnet"] = "ridge",
        alpha: float = 1.0,
        l1_ratio: float = 0.5,
        device: torch.device | str = "cpu",
    ) -> None:
        self.type = type
        self.alpha = alpha
        self.l1_ratio = l1_ratio
        self.device = device

    def fit(self, r: torch.Tensor, w: torch.Tensor) -> LinearLink:
        """r: [N, D] activations, w: [N, w_dim] latents."""
        if r.ndim != 2 or w.ndim != 2 or r.shape[0] != w.shape[0]:
            raise ValueError(f"fit needs r [N, D] and w [N, w_dim], got {tuple(r.shape)} and "
                             f"{tuple(w.shape)}")
        if self.type == "elasticnet":
            coef, intercept = self._fit_elasticnet(r, w)
        elif self.type in ("lr", "ridge"):
            coef, intercept = self._fit_closed_form(r, w)
        else:
            raise ValueError(f"link type must be 'lr', 'ridge' or 'elasticnet', got {self.type!r}")
        self.coef_ = coef.float()
        self.intercept_ = intercept.float()
        return self

    def _fit_closed_form(self, r: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, ...]:
        r64 = r.to(self.device, torch.float64)
        w64 = w.to(self.device, torch.float64)
        r_mean, w_mean = r64.mean(0), w64.mean(0)
        rc, wc = r64 - r_mean, w64 - w_mean
        if self.type == "ridge" and self.alpha > 0:
            gram = rc.T @ rc
            gram.diagonal().add_(self.alpha)
            coef = torch.linalg.solve(gram, rc.T @ wc).T  # [w_dim, D]
        else:
            coef = _min_norm_lstsq(rc, wc).T
        intercept = w_mean - coef @ r_mean
        return coef.cpu(), intercept.cpu()

    def _fit_elasticnet(self, r: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, ...]:
        try:
            from sklearn.linear_model import ElasticNet
        except ImportError as exc:
            raise ImportError(
                "link.type 'elasticnet' needs scikit-learn: pip install 'linkstyle[sklearn]'"
            ) from exc
        model = ElasticNet(alpha=self.alpha, l1_ratio=self.l1_ratio, max_iter=5000)
        model.fit(r.double().cpu().numpy(), w.double().cpu().numpy())
        return torch.from_numpy(np.atleast_2d(model.coef_)), torch.from_numpy(model.intercept_)

    def predict(self, r: torch.Tensor) -> torch.Tensor:
        """r: [N, D] -> w: [N, w_dim] float32, on r's device."""
        if not hasattr(self, "coef_"):
            raise RuntimeError("this LinearLink is not fitted yet; call fit(r, w) first")
        if r.shape[-1] != self.coef_.shape[1]:
            raise ValueError(f"the link was fitted on {self.coef_.shape[1]} units, r has "
                             f"{r.shape[-1]}; use a link fitted for this classifier")
        coef = self.coef_.to(r.device)
        return r.float() @ coef.T + self.intercept_.to(r.device)

    @classmethod
    def from_arrays(cls, coef: np.ndarray, intercept: np.ndarray, **params: object) -> LinearLink:
        """A fitted link from stored arrays (coef [w_dim, D], intercept [w_dim])."""
        link = cls(**params)  # type: ignore[arg-type]
        link.coef_ = torch.as_tensor(np.asarray(coef), dtype=torch.float32)
        link.intercept_ = torch.as_tensor(np.asarray(intercept), dtype=torch.float32)
        return link
