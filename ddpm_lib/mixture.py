"""A Gaussian mixture with exact densities and scores: the book's 2-D toy data (Chapters 4-7).

Every density here is known in closed form, also after the forward process: x_t of a mixture is
again a mixture (:meth:`GaussianMixture2D.noised`), whose exact score is what an ideal ε-model
predicts (:class:`ddpm_lib.oracles.MixtureOracle`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


class GaussianMixture2D:
    """The mixture sum_k w_k N(mu_k, std^2 I) of K isotropic Gaussians in d dimensions (2 here).

    ``means`` is float [K, d]; ``weights`` [K] (uniform if None) must be non-negative with a
    positive sum and are normalised to sum to 1. Computations run in the dtype of ``means``
    (float32 if it is an integer tensor); pass float64 means for exact comparisons.
    """

    def __init__(self, means: Tensor, std: float, weights: Tensor | None = None) -> None:
        means = torch.as_tensor(means)
        if not means.is_floating_point():
            means = means.to(torch.float32)
        if means.ndim != 2 or means.shape[0] == 0 or means.shape[1] == 0:
            raise ValueError(f"means must be [K, d] with K, d >= 1, got {tuple(means.shape)}")
        if not (math.isfinite(std) and std > 0):
            raise ValueError(f"std must be positive and finite, got {std}")
        k = means.shape[0]
        w = torch.ones(k) if weights is None else torch.as_tensor(weights)
        w = w.to(means.dtype)
        if w.shape != (k,):
            raise ValueError(f"weights must have shape [{k}], got {tuple(w.shape)}")
        if not torch.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"weights must be finite, non-negative, with positive sum: {w}")
        self.means, self.std, self.weights = means, float(std), w / w.sum()

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` independent samples, [n, d] in the dtype of ``means``."""
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, self.dim, generator=generator, dtype=self.means.dtype)
        return self.means[comp] + self.std * noise

    def _log_joint(self, x: Tensor) -> Tensor:
        # [n, K]: log w_k + log N(x; mu_k, std^2 I)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must be [n, {self.dim}], got {tuple(x.shape)}")
        var = self.std**2
        sq = ((x[:, None, :] - self.means.to(x)[None]) ** 2).sum(-1)
        log_norm = 0.5 * self.dim * math.log(2 * math.pi * var)
        return self.weights.to(x).log() - sq / (2 * var) - log_norm

    def log_prob(self, x: Tensor) -> Tensor:
        """log p(x) for x [n, d] -> [n], via logsumexp (finite far from every component)."""
        return torch.logsumexp(self._log_joint(x), dim=1)

    def score(self, x: Tensor) -> Tensor:
        """The exact score grad_x log p(x), [n, d]: sum_k r_k(x) (mu_k - x) / std^2."""
        resp = torch.softmax(self._log_joint(x), dim=1)  # responsibilities r_k(x), [n, K]
        return (resp @ self.means.to(x) - x) / self.std**2

    def mean(self) -> Tensor:
        """E[x], [d]."""
        return self.weights @ self.means

    def covariance(self) -> Tensor:
        """Cov[x], [d, d]: std^2 I + sum_k w_k mu_k mu_k^T - E[x] E[x]^T."""
        m, eye = self.mean(), torch.eye(self.dim, dtype=self.means.dtype)
        return self.std**2 * eye + (self.means.T * self.weights) @ self.means - torch.outer(m, m)

    def noised(self, alpha_bar: float) -> GaussianMixture2D:
        """The law of x_t = sqrt(a) x_0 + sqrt(1 - a) eps, x_0 ~ self, eps ~ N(0, I), a = alpha_bar.

        Component k becomes N(sqrt(a) mu_k, (a std^2 + 1 - a) I): again an isotropic mixture,
        whose score is what an ideal eps-model predicts as -eps / sqrt(1 - a).
        """
        if not 0.0 <= alpha_bar <= 1.0:
            raise ValueError(f"alpha_bar must be in [0, 1], got {alpha_bar}")
        std = math.sqrt(alpha_bar * self.std**2 + 1.0 - alpha_bar)
        return GaussianMixture2D(math.sqrt(alpha_bar) * self.means, std, self.weights)


def default_gmm(dtype: torch.dtype = torch.float32) -> GaussianMixture2D:
    """Eight equal components on a circle of radius 2, std 0.15 (per-coordinate std about 1.4)."""
    angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    means = 2.0 * torch.stack([angles.cos(), angles.sin()], dim=1)
    return GaussianMixture2D(means.to(dtype), 0.15)
