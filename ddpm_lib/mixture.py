"""A Gaussian mixture with exact densities and scores: the book's 2-D toy data (Chapters 3-7).

Every density here is known in closed form, also after the forward process: x_t of a mixture is
again a mixture (:meth:`GaussianMixture2D.noised`), whose exact score is what an ideal ε-model
predicts (:class:`ddpm_lib.oracles.MixtureOracle`), and so is the exact reverse kernel
q(x_s | x_t) (:meth:`GaussianMixture2D.reverse_kernel`, Chapter 3's 1-D example). Components may
carry class labels (Chapter 8): then p(x | y), p(y | x) and their noised versions are exact too.
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

    ``labels`` [K] (optional, Chapter 8) gives each component a class in 0..C-1, every class
    used: then y is the label of the component x was drawn from, p(x | y) is the mixture of
    class y's components (:meth:`conditional`) and p(y | x) is exact (:meth:`class_log_posterior`).
    """

    def __init__(
        self,
        means: Tensor,
        std: float,
        weights: Tensor | None = None,
        labels: Tensor | None = None,
    ) -> None:
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
        self.labels: Tensor | None = None
        if labels is not None:
            labels = torch.as_tensor(labels)
            if labels.shape != (k,) or labels.is_floating_point():
                raise ValueError(f"labels must be integers of shape [{k}], got {labels}")
            used = torch.unique(labels)
            if used.min() < 0 or not torch.equal(used, torch.arange(len(used))):
                raise ValueError(
                    f"labels must use every class 0..C-1 at least once, got {labels.tolist()}"
                )
            self.labels = labels.long()

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def num_classes(self) -> int:
        """C, the number of classes (0 for an unlabelled mixture)."""
        return 0 if self.labels is None else int(self.labels.max()) + 1

    def _need_labels(self) -> Tensor:
        if self.labels is None:
            raise ValueError(
                "this mixture has no class labels: build it with labels=[...] (one class per "
                "component), e.g. labelled_gmm()"
            )
        return self.labels

    def class_weights(self) -> Tensor:
        """p(y) for y = 0..C-1, [C]: the summed weights of each class's components."""
        labels = self._need_labels()
        return torch.zeros(self.num_classes, dtype=self.weights.dtype).index_add_(
            0, labels, self.weights
        )

    def conditional(self, y: int) -> GaussianMixture2D:
        """p(x | y): the mixture of class ``y``'s components, their weights renormalised."""
        labels = self._need_labels()
        if not 0 <= y < self.num_classes:
            raise ValueError(f"label y must lie in 0..{self.num_classes - 1}, got {y}")
        keep = labels == y
        return GaussianMixture2D(self.means[keep], self.std, self.weights[keep])

    def class_log_posterior(self, x: Tensor) -> Tensor:
        """log p(y | x) for x [n, d] and every class y, [n, C] (Bayes' rule over components)."""
        labels = self._need_labels()
        log_joint = self._log_joint(x)  # [n, K]
        per_class = torch.stack(
            [torch.logsumexp(log_joint[:, labels == c], dim=1) for c in range(self.num_classes)],
            dim=1,
        )
        return per_class - torch.logsumexp(log_joint, dim=1, keepdim=True)

    def sample_labelled(
        self, n: int, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """``n`` pairs (x, y): points [n, d] and the labels [n] of the components drawn."""
        labels = self._need_labels()
        x, comp = self._draw(n, generator)
        return x, labels[comp]

    def _draw(self, n: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, self.dim, generator=generator, dtype=self.means.dtype)
        return self.means[comp] + self.std * noise, comp

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` independent samples, [n, d] in the dtype of ``means``."""
        return self._draw(n, generator)[0]

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
        return GaussianMixture2D(math.sqrt(alpha_bar) * self.means, std, self.weights, self.labels)

    def reverse_kernel(
        self, x_t: Tensor, alpha_bar_s: float, alpha_bar_t: float
    ) -> GaussianMixture2D:
        """The exact reverse kernel q(x_s | x_t) for data from this mixture, s < t (Chapter 3).

        ``x_t`` is one point, [d]; ``alpha_bar_s`` > ``alpha_bar_t`` are ᾱ at the two steps
        (ᾱ_s = 1 gives q(x_0 | x_t); s = t - 1 is one reverse step). With a = ᾱ_t/ᾱ_s and
        r_u² = ᾱ_u std² + 1 - ᾱ_u the variance of a component after u steps, component k makes
        (x_s, x_t) jointly Gaussian, so conditioning it (eq-ch3-conditioning) and reweighting the
        components by how well they explain x_t gives (eq-ch3-mixture-kernel)

            q(x_s | x_t) = sum_k π_k(x_t) N(x_s; m_k, r² I),   π_k ∝ w_k N(x_t; √ᾱ_t μ_k, r_t² I),
            m_k = √ᾱ_s μ_k + √a r_s²/r_t² (x_t - √ᾱ_t μ_k),   r² = r_s² (1 - a)/r_t².

        This is Bayes' rule q(x_s | x_t) ∝ q(x_t | x_s) q_s(x_s) (eq-ch3-reverse-bayes) in closed
        form, and equally the posterior q(x_s | x_t, x_0) averaged over q(x_0 | x_t)
        (eq-ch3-reverse-average). All components share r², so the kernel is again a
        :class:`GaussianMixture2D`; its ``mean()`` and ``covariance()`` are the moments of the
        moment-matched Gaussian. For one component (Gaussian data) the second-order expansion
        of log q_s around x_t/√a (eq-ch3-taylor) is exact and so is the Gaussian it gives; for
        one small step of any mixture the moments are close to
        ((x_t + β_t ∇log q_t(x_t))/√α_t, β_t I) (eq-ch3-small-step) and the kernel is close to
        that Gaussian; for a long jump it can have several modes.
        """
        if not 0.0 <= alpha_bar_t < alpha_bar_s <= 1.0:
            raise ValueError(
                f"need 0 <= alpha_bar_t < alpha_bar_s <= 1, got {alpha_bar_t}, {alpha_bar_s}"
            )
        x_t = torch.as_tensor(x_t, dtype=self.means.dtype)
        if x_t.shape != (self.dim,):
            raise ValueError(f"x_t must be one point of shape [{self.dim}], got {tuple(x_t.shape)}")
        a = alpha_bar_t / alpha_bar_s
        var_s = alpha_bar_s * self.std**2 + 1.0 - alpha_bar_s  # r_s², one component at step s
        var_t = alpha_bar_t * self.std**2 + 1.0 - alpha_bar_t  # r_t² = a r_s² + 1 - a
        resp = torch.softmax(self.noised(alpha_bar_t)._log_joint(x_t[None])[0], dim=0)  # [K]
        gain = math.sqrt(a) * var_s / var_t  # Cov[x_s, x_t] / Var[x_t] within a component
        means = math.sqrt(alpha_bar_s) * self.means + gain * (
            x_t[None] - math.sqrt(alpha_bar_t) * self.means
        )
        std = math.sqrt(var_s * (1.0 - a) / var_t)
        return GaussianMixture2D(means, std, resp)


def default_gmm(dtype: torch.dtype = torch.float32) -> GaussianMixture2D:
    """Eight equal components on a circle of radius 2, std 0.15 (per-coordinate std about 1.4)."""
    angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    means = 2.0 * torch.stack([angles.cos(), angles.sin()], dim=1)
    return GaussianMixture2D(means.to(dtype), 0.15)


def labelled_gmm(dtype: torch.dtype = torch.float32, std: float = 0.4) -> GaussianMixture2D:
    """The book's eight means (:func:`default_gmm`) in four classes of two neighbours:
    components 2c and 2c + 1 have label c (Chapter 8). The components are wider than the
    unlabelled toy's (std 0.4 instead of 0.15), so neighbouring classes overlap and p(y | x)
    is uncertain between them, as it is for real images."""
    gmm = default_gmm(dtype)
    return GaussianMixture2D(gmm.means, std, gmm.weights, torch.arange(8) // 2)
