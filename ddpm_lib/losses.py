"""Likelihood pieces: Gaussian KL, the discretized decoder, and the ELBO in bits/dim (Chapter 5).

The negative ELBO of one image x_0 with D = C·H·W dimensions is

    L = L_T + Σ_{t=2..T} L_{t-1} + L_0,
    L_T     = KL(q(x_T | x_0) || N(0, I)),
    L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p_θ(x_{t-1} | x_t)),   x_t ~ q(x_t | x_0),
    L_0     = -log p_θ(x_0 | x_1)   (discretized Gaussian decoder over 256 levels),

and -log p(x_0) ≤ L. Dividing by D·ln 2 gives bits per dimension. Code index t = 0 is the
book's step 1, whose term is the decoder L_0.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from .utils import cuda_capturing

if TYPE_CHECKING:
    from .diffusion import GaussianDiffusion, Model

Tensor = torch.Tensor
LN2 = math.log(2.0)


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) per element, in nats; Chapter 5.

    KL = ½ (logvar2 - logvar1 + e^(logvar1-logvar2) + (mean1-mean2)² e^(-logvar2) - 1).
    Arguments broadcast against each other.
    """
    return 0.5 * (
        logvar2
        - logvar1
        + torch.exp(logvar1 - logvar2)
        + (mean1 - mean2).pow(2) * torch.exp(-logvar2)
        - 1.0
    )


def _log_normal_interval(a: Tensor, b: Tensor) -> Tensor:
    """log(Φ(b) - Φ(a)) for a < b, accurate in both tails (Φ is the standard normal CDF)."""
    # Reflect intervals in the upper tail, where Φ(b) - Φ(a) loses every digit to cancellation.
    upper = a > 0
    lo = torch.where(upper, -b, a)
    hi = torch.where(upper, -a, b)
    log_hi = torch.special.log_ndtr(hi)
    log_lo = torch.special.log_ndtr(lo)
    diff = (log_lo - log_hi).clamp(max=-1e-12)
    return log_hi + torch.log(-torch.expm1(diff))


def discretized_gaussian_log_likelihood(
    x: Tensor, means: Tensor, log_scales: Tensor, num_bins: int = 256
) -> Tensor:
    """log p(x) per element for data on ``num_bins`` levels scaled to [-1, 1]; Chapter 5.

    Level k sits at x = 2k/(num_bins-1) - 1 and owns the interval x ± 1/(num_bins-1); the end
    levels own everything beyond (so the probabilities of all levels sum to 1). The density is
    N(means, exp(log_scales)²): ``log_scales`` is the log standard deviation. Shapes broadcast.
    """
    if not cuda_capturing(x) and (x.abs() > 1 + 1e-6).any():  # no host read inside a graph
        raise ValueError("x must lie in [-1, 1] (8-bit data scaled by x/127.5 - 1)")
    half = 1.0 / (num_bins - 1)
    inv_std = torch.exp(-log_scales)
    lo = torch.where(x <= -1 + 1e-6, torch.full_like(x, -math.inf), (x - half - means) * inv_std)
    hi = torch.where(x >= 1 - 1e-6, torch.full_like(x, math.inf), (x + half - means) * inv_std)
    return _log_normal_interval(lo, hi)


def mean_flat(x: Tensor) -> Tensor:
    """Mean over every dimension but the batch: [B, ...] → [B]."""
    return x.flatten(1).mean(dim=1)


def prior_bpd(diffusion: GaussianDiffusion, x0: Tensor) -> Tensor:
    """L_T = KL(q(x_T | x_0) || N(0, I)) in bits/dim, shape [B]. No parameters: near 0."""
    t = torch.full((x0.shape[0],), diffusion.num_timesteps - 1, device=x0.device)
    mean, _, log_var = diffusion.q_mean_variance(x0, t)
    return mean_flat(normal_kl(mean, log_var, torch.zeros_like(mean), torch.zeros_like(mean))) / LN2


def vb_term_bpd(
    diffusion: GaussianDiffusion,
    model: Model,
    x0: Tensor,
    x_t: Tensor,
    t: Tensor,
    clip_denoised: bool = False,
) -> Tensor:
    """One ELBO term in bits/dim, shape [B]: L_{t-1} for code index t ≥ 1, L_0 for t = 0.

    L_{t-1} is the closed-form KL between the true posterior q(x_{t-1} | x_t, x_0) and the
    model's p_θ(x_{t-1} | x_t); L_0 is the decoder's negative log-likelihood of the 8-bit
    x_0 with mean μ_θ(x_1, 1) and the model's step-1 variance.
    """
    return _vb_term(diffusion, model, x0, x_t, t, clip_denoised)[0]


def _vb_term(
    diffusion: GaussianDiffusion,
    model: Model,
    x0: Tensor,
    x_t: Tensor,
    t: Tensor,
    clip_denoised: bool,
) -> tuple[Tensor, Tensor]:
    """:func:`vb_term_bpd` and the network's ε̂, from one network call."""
    t = diffusion.check_t(t, x0)
    true_mean, _, true_log_var = diffusion.q_posterior_mean_variance(x0, x_t, t)
    out = diffusion.p_mean_variance(model, x_t, t, clip_denoised=clip_denoised)
    kl = mean_flat(normal_kl(true_mean, true_log_var, out["mean"], out["log_variance"])) / LN2
    nll = (
        -mean_flat(discretized_gaussian_log_likelihood(x0, out["mean"], 0.5 * out["log_variance"]))
        / LN2
    )
    return torch.where(t == 0, nll, kl), out["eps"]


@torch.no_grad()
def elbo_bpd(
    diffusion: GaussianDiffusion,
    model: Model,
    x0: Tensor,
    clip_denoised: bool = False,
    generator: torch.Generator | None = None,
    progress: bool = True,
) -> dict[str, Tensor]:
    """The full negative ELBO per image in bits/dim, with every term; Chapter 5.

    Each of the T terms uses one draw x_t ~ q(x_t | x_0), so ``total`` is an unbiased estimate
    of the bound (exact in its T closed-form KLs given those draws). Returns ``total`` [B],
    ``prior`` [B] (L_T), ``terms`` [B, T] (column i is the book's L_i: column 0 is the decoder
    L_0, column i ≥ 1 is the KL L_i at book step i+1) and ``mse`` [B, T] (‖ε - ε̂‖² per dim).
    """
    T = diffusion.num_timesteps
    b = x0.shape[0]
    terms = torch.zeros(b, T, device=x0.device, dtype=torch.float64)
    mse = torch.zeros_like(terms)
    for i in tqdm(range(T - 1, -1, -1), desc="ELBO terms", disable=not progress):
        t = torch.full((b,), i, device=x0.device, dtype=torch.long)
        noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        x_t = diffusion.q_sample(x0, t, noise)
        bpd, eps = _vb_term(diffusion, model, x0, x_t, t, clip_denoised)
        terms[:, i] = bpd.double()
        mse[:, i] = mean_flat((eps - noise) ** 2).double()
    prior = prior_bpd(diffusion, x0).double()
    return {"total": terms.sum(dim=1) + prior, "prior": prior, "terms": terms, "mse": mse}
