"""Exact ε-models: networks that know the answer, for data whose every density is known.

Chapters 4-7, the errata page and the tests check samplers and losses against these. Each is
called like a trained network, ``oracle(x_t, t)`` with code indices ``t`` [B], and returns the
ideal prediction E[ε | x_t] = -√(1-ᾱ_t) ∇ log q_t(x_t) (eq-ch4-tweedie).

- :class:`PointOracle`: the data is one point x*; then x̂_0 = x* at every step, and every
  correct sampler must return x* (Chapter 4's "oracle" check).
- :class:`GaussianOracle`: x_0 ~ N(m, s²) per coordinate; every step of the chain stays
  Gaussian, so sampler outputs have closed-form variances (errata E9).
- :class:`MixtureOracle`: the book's 2-D Gaussian mixture (:mod:`ddpm_lib.mixture`), also
  class-conditional; :class:`MixtureClassifier`: its exact noisy classifier (Chapter 8).
"""

from __future__ import annotations

import math

import torch

from .diffusion import GaussianDiffusion
from .mixture import GaussianMixture2D
from .sde import SDE, ScoreFn

Tensor = torch.Tensor


class PointOracle:
    """The exact ε (eq-ch4-tweedie) for data that is the single point ``x_star``:
    ε = (x_t - √ᾱ_t x*)/√(1-ᾱ_t).

    ``x_star`` is [1, ...] (or shaped like one batch item) and is broadcast over the batch.
    """

    def __init__(self, diffusion: GaussianDiffusion, x_star: Tensor) -> None:
        self.diffusion = diffusion
        self.x_star = x_star

    def __call__(self, x_t: Tensor, t: Tensor) -> Tensor:
        x0 = self.x_star.to(x_t).expand_as(x_t)
        return self.diffusion.predict_eps_from_x0(x_t, t, x0)

    def score_fn(self, sde: SDE) -> ScoreFn:
        """The exact score of the noised point mass under ``sde`` at continuous times t > 0:
        ∇ log p_t(x) = -(x - s(t) x*)/σ_t², for the samplers of :mod:`ddpm_lib.sde`."""

        def score(x: Tensor, t: Tensor) -> Tensor:
            mean, std = sde.marginal_prob(self.x_star.to(x).expand_as(x), t)
            return -(x - mean) / std.reshape(-1, *([1] * (x.ndim - 1))) ** 2

        return score


class GaussianOracle:
    """The exact ε (eq-ch4-tweedie) for data x_0 ~ N(mean, s2) in every coordinate, independently.

    x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε is Gaussian too, and
    E[x_0 | x_t] = m + gain_t (x_t - √ᾱ_t m) with gain_t = √ᾱ_t s²/(ᾱ_t s² + 1 - ᾱ_t).
    """

    def __init__(self, diffusion: GaussianDiffusion, s2: float, mean: float = 0.0) -> None:
        if not s2 > 0:
            raise ValueError(f"the data variance s2 must be positive, got {s2}")
        ab = diffusion.alphas_cumprod
        self.diffusion, self.s2, self.mean = diffusion, float(s2), float(mean)
        self.gain = ab.sqrt() * s2 / (ab * s2 + 1 - ab)  # [T], float64
        self._tables: dict[tuple[torch.dtype, torch.device], tuple[Tensor, Tensor]] = {}

    def x0(self, x_t: Tensor, t: Tensor) -> Tensor:
        """E[x_0 | x_t], shaped like x_t."""
        t = self.diffusion.check_t(t, x_t)
        key = (x_t.dtype, x_t.device)
        if key not in self._tables:  # cached per device: a CUDA graph may not copy from the CPU
            ab = self.diffusion.sqrt_alphas_cumprod
            self._tables[key] = (self.gain.to(x_t), ab.to(x_t))
        gain, root_ab = self._tables[key]
        shape = (-1, *([1] * (x_t.ndim - 1)))
        gain, root_ab = gain[t].reshape(shape), root_ab[t].reshape(shape)
        return self.mean + gain * (x_t - root_ab * self.mean)

    def __call__(self, x_t: Tensor, t: Tensor) -> Tensor:
        return self.diffusion.predict_eps_from_x0(x_t, t, self.x0(x_t, t))


class MixtureOracle:
    """The exact ε (eq-ch4-tweedie) for data from a :class:`GaussianMixture2D`, at any mix of
    steps ``t``, and for a labelled mixture also given the class (Chapter 8).

    ε*(x_t, t) = -√(1-ᾱ_t) ∇ log q_t(x_t), with q_t the noised mixture
    (:meth:`GaussianMixture2D.noised`); with labels ``y`` [B] (or one int), ε*(x_t, t, y) =
    -√(1-ᾱ_t) ∇ log q_t(x_t | y), the noised class-y mixture, and y = C (the number of classes)
    is the null label ∅: the unconditional ε. Called like a class-conditional network.
    Computed in the mixture's dtype (float64 for exact comparisons), returned in x_t's dtype.
    """

    def __init__(self, diffusion: GaussianDiffusion, mixture: GaussianMixture2D) -> None:
        self.diffusion, self.mixture = diffusion, mixture
        self.num_classes = mixture.num_classes

    def __call__(self, x_t: Tensor, t: Tensor, y: Tensor | int | None = None) -> Tensor:
        t = self.diffusion.check_t(t, x_t).cpu()
        k = self.num_classes
        if y is None:
            y = torch.full_like(t, k)
        elif k == 0:
            raise ValueError("labels given to the oracle of an unlabelled mixture")
        y = torch.as_tensor(y).cpu().expand(len(t))
        if y.min() < 0 or y.max() > k:
            raise ValueError(f"labels must lie in 0..{k} ({k}: the null label), got {y.tolist()}")
        out = torch.empty_like(x_t)
        key = t * (k + 1) + y  # one group per (step, label)
        order = torch.argsort(key)
        present, counts = torch.unique_consecutive(key[order], return_counts=True)
        for g, rows in zip(present.tolist(), torch.split(order, counts.tolist()), strict=True):
            i, label = divmod(g, k + 1)
            ab = self.diffusion.alphas_cumprod[i].item()
            mix = self.mixture if label == k else self.mixture.conditional(label)
            rows = rows.to(x_t.device)
            score = mix.noised(ab).score(x_t[rows].to(mix.means.dtype))
            out[rows] = (-math.sqrt(1 - ab) * score).to(x_t.dtype)
        return out


class MixtureClassifier:
    """The exact noisy classifier of a labelled mixture: ``(x_t [B, d], t [B]) -> log q_t(y | x_t)``
    [B, C], the class posterior of the noised mixture (Bayes' rule, Chapter 8). Classifier
    guidance with it is exact; a trained noise-aware classifier approximates it."""

    def __init__(self, diffusion: GaussianDiffusion, mixture: GaussianMixture2D) -> None:
        if mixture.num_classes == 0:
            raise ValueError("MixtureClassifier needs a labelled mixture (labels=[...])")
        self.diffusion, self.mixture = diffusion, mixture
        self.num_classes = mixture.num_classes

    def __call__(self, x_t: Tensor, t: Tensor) -> Tensor:
        t = self.diffusion.check_t(t, x_t).cpu()
        out = torch.empty(len(t), self.mixture.num_classes, dtype=x_t.dtype, device=x_t.device)
        order = torch.argsort(t)
        present, counts = torch.unique_consecutive(t[order], return_counts=True)
        for i, rows in zip(present.tolist(), torch.split(order, counts.tolist()), strict=True):
            ab = self.diffusion.alphas_cumprod[i].item()
            rows = rows.to(x_t.device)
            noised = self.mixture.noised(ab)
            out[rows] = noised.class_log_posterior(x_t[rows].to(noised.means.dtype)).to(out)
        return out
