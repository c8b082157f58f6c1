"""The ELBO over the diffusion chain, in bits/dim (Chapter 5).

The negative ELBO of one image x_0 with D = C·H·W dimensions is (eq-ch5-decomposition)

    L = L_T + Σ_{t=2..T} L_{t-1} + L_0,
    L_T     = KL(q(x_T | x_0) || N(0, I)),
    L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p_θ(x_{t-1} | x_t)),   x_t ~ q(x_t | x_0),
    L_0     = -log p_θ(x_0 | x_1)   (discretized Gaussian decoder over 256 levels),

and -log p(x_0) ≤ L (eq-ch5-jensen). Dividing by D·ln 2 gives bits per dimension. Code index
t = 0 is the book's step 1, whose term is the decoder L_0. The Gaussian pieces (KL, decoder)
are in :mod:`ddpm_lib.gaussian`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from tqdm.auto import tqdm

from .diffusion import GaussianDiffusion, Model
from .gaussian import LN2, discretized_gaussian_log_likelihood, mean_flat, normal_kl

Tensor = torch.Tensor


class ElboTerms(NamedTuple):
    """The negative ELBO per image in bits/dim and its parts (see :func:`elbo_bpd`)."""

    total: Tensor  # [B]: L_T + Σ L_{t-1} + L_0
    prior: Tensor  # [B]: L_T
    terms: Tensor  # [B, T]: column 0 is L_0, column i ≥ 1 is L_i (book step i+1)
    mse: Tensor  # [B, T]: ‖ε - ε̂‖² per dimension at each step


def check_data_range(x0: Tensor, who: str) -> None:
    """Raise unless images ``x0`` lie in [-1, 1], the range the decoder's levels cover."""
    if x0.numel() and x0.detach().abs().max() > 1 + 1e-6:
        raise ValueError(f"{who}: x must lie in [-1, 1] (8-bit data scaled by x/127.5 - 1)")


def mse_weights(diffusion: GaussianDiffusion, variance: str | None = None) -> tuple[Tensor, Tensor]:
    """λ_t and c_t with L_{t-1} = λ_t ‖ε - ε̂‖² + D c_t, each [T] float64 (eq-ch5-weighted-mse).

    Chapter 5: λ_t = β_t²/(2 σ_t² α_t (1-ᾱ_t)) (eq-ch5-lambda) and
    c_t = ½(log(σ_t²/β̃_t) + β̃_t/σ_t² - 1) (eq-ch5-Lt-mean), in nats, with σ_t² the reverse
    variance ``variance`` (default: the diffusion's own fixed choice). Entry i is book step i+1;
    entry 0 (book step 1) is NaN: L_0 is the decoder, not a KL. The errata page states the
    same weights for write-up 001's missing loss section (eq-errata-elbo-weights).
    """
    var_type = variance or diffusion.model_var_type
    if var_type == "fixed_small":
        sigma2 = diffusion.posterior_variance
    elif var_type == "fixed_large":
        sigma2 = diffusion.betas
    else:
        raise ValueError(
            f"mse_weights needs a fixed variance (fixed_small, fixed_large), got {var_type!r}"
        )
    beta, tilde = diffusion.betas, diffusion.posterior_variance
    lam = beta**2 / (2 * sigma2 * diffusion.alphas * (1 - diffusion.alphas_cumprod))
    c = 0.5 * (torch.log(sigma2 / tilde) + tilde / sigma2 - 1)
    lam, c = lam.clone(), c.clone()
    lam[0] = c[0] = float("nan")
    return lam, c


def prior_bpd(diffusion: GaussianDiffusion, x0: Tensor) -> Tensor:
    """L_T = KL(q(x_T | x_0) ‖ N(0, I)) in bits/dim, shape [B] (in eq-ch5-decomposition).

    Chapter 5. It has no parameters; for DDPM's schedules it is near 0.
    """
    t = diffusion.step_index(diffusion.num_timesteps - 1, x0.shape[0], x0.device)
    mean, _, log_var = diffusion.q_mean_variance(x0, t)
    return mean_flat(normal_kl(mean, log_var, 0.0, 0.0)) / LN2


def vb_term_bpd(
    diffusion: GaussianDiffusion,
    model: Model,
    x0: Tensor,
    x_t: Tensor,
    t: Tensor | int,
    *,
    clip_denoised: bool = False,
) -> Tensor:
    """One ELBO term in bits/dim, shape [B]: L_{t-1} for code index t ≥ 1, L_0 for t = 0.

    L_{t-1} (eq-ch5-Lt-mean) is the closed-form KL (eq-ch5-kl) between the true posterior
    q(x_{t-1} | x_t, x_0) and the model's p_θ(x_{t-1} | x_t), the term the forward step turns
    into once Bayes' rule flips it (eq-ch5-bayes-flip); L_0 (eq-ch5-decoder) is the decoder's
    negative log-likelihood of the 8-bit x_0 with mean μ_θ(x_1, 1) and the model's step-1
    variance. Chapter 5.
    """
    return _vb_term(diffusion, model, x0, x_t, diffusion.check_t(t, x0), clip_denoised)[0]


def _vb_term(
    diffusion: GaussianDiffusion,
    model: Model,
    x0: Tensor,
    x_t: Tensor,
    t: Tensor,
    clip_denoised: bool,
) -> tuple[Tensor, Tensor]:
    """:func:`vb_term_bpd` and the network's ε̂, from one network call; ``t`` is checked."""
    true_mean, _, true_log_var = diffusion.q_posterior_mean_variance(x0, x_t, t)
    out = diffusion.p_mean_variance(model, x_t, t, clip_denoised=clip_denoised)
    kl = mean_flat(normal_kl(true_mean, true_log_var, out.mean, out.log_variance)) / LN2
    log_scales = 0.5 * out.log_variance
    nll = -mean_flat(discretized_gaussian_log_likelihood(x0, out.mean, log_scales)) / LN2
    return torch.where(t == 0, nll, kl), out.eps


@torch.no_grad()
def elbo_bpd(
    diffusion: GaussianDiffusion,
    model: Model,
    x0: Tensor,
    *,
    clip_denoised: bool = False,
    generator: torch.Generator | None = None,
    progress: bool = True,
) -> ElboTerms:
    """The full negative ELBO per image in bits/dim, with every term (eq-ch5-decomposition).

    Chapter 5: -log p_θ(x_0) ≤ L (eq-ch5-jensen), L written term by term (eq-ch5-pathwise).
    Each of the T terms uses one draw x_t ~ q(x_t | x_0), so ``total`` is an unbiased
    estimate of the bound (exact in its T closed-form KLs given those draws).
    ``x0`` [B, C, H, W] must lie in [-1, 1] (checked here, once).
    """
    check_data_range(x0, "elbo_bpd")
    T = diffusion.num_timesteps
    b = x0.shape[0]
    terms = torch.zeros(b, T, device=x0.device, dtype=torch.float64)
    mse = torch.zeros_like(terms)
    for i in tqdm(range(T - 1, -1, -1), desc="ELBO terms", disable=not progress):
        t = diffusion.step_index(i, b, x0.device)
        noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        x_t = diffusion.q_sample(x0, t, noise)
        bpd, eps = _vb_term(diffusion, model, x0, x_t, t, clip_denoised)
        terms[:, i] = bpd.double()
        mse[:, i] = mean_flat((eps - noise) ** 2).double()
    prior = prior_bpd(diffusion, x0).double()
    return ElboTerms(terms.sum(dim=1) + prior, prior, terms, mse)


def snr_form_kl(
    x0: Tensor, x0_hat: Tensor, snr_prev: Tensor | float, snr_t: Tensor | float
) -> Tensor:
    """L_{t-1} = ½ (SNR(t-1) - SNR(t)) ‖x_0 - x̂_0‖² in nats per image, shape [B] (eq-ch5-snr-form).

    Chapter 5: with the reverse variance σ_t² = β̃_t and the model's mean written as the
    posterior mean with x̂_0 in place of x_0 (eq-ch4-mu-x0), the KL term of step t ≥ 2 is this
    weighted squared error; it equals the Gaussian KL that :func:`vb_term_bpd` evaluates (times
    d·ln 2), and with ‖ε - ε̂‖² = SNR(t) ‖x_0 - x̂_0‖² it gives the weight of eq-ch5-snr-lambda.
    ``x0`` and ``x0_hat`` are [B, ...]; ``snr_prev`` = SNR(t-1) and ``snr_t`` = SNR(t) are
    floats or [B] tensors (SNR(t) = ᾱ_t/(1-ᾱ_t), :meth:`GaussianDiffusion.snr`).
    """
    sq = (x0 - x0_hat).pow(2).flatten(1).sum(1)
    gap = torch.as_tensor(snr_prev, dtype=sq.dtype, device=sq.device) - torch.as_tensor(
        snr_t, dtype=sq.dtype, device=sq.device
    )
    return 0.5 * gap * sq


def snr_mse_weights(alphas_cumprod: Tensor) -> Tensor:
    """λ_t = ½ (SNR(t-1)/SNR(t) - 1), the ε-MSE weight of the bound for σ_t² = β̃_t: [T].

    Chapter 5 (eq-ch5-snr-lambda): the SNR form of eq-ch5-lambda, equal to
    β_t / (2 α_t (1 - ᾱ_{t-1})). ``alphas_cumprod`` [T] holds ᾱ_t at code index t-1; entry 0
    (book step 1, whose term is the decoder L_0) is NaN, as in :func:`mse_weights`. Computed in
    float64 from SNR(t-1)/SNR(t) = ᾱ_{t-1}(1-ᾱ_t) / (ᾱ_t (1-ᾱ_{t-1})).
    """
    ab = alphas_cumprod.double()
    ratio = ab[:-1] * (1 - ab[1:]) / (ab[1:] * (1 - ab[:-1]))
    lam = torch.full_like(ab, float("nan"))
    lam[1:] = 0.5 * (ratio - 1)
    return lam


def gaussian_step_terms_sum(snr: Tensor, s2: float) -> Tensor:
    """Σ_{t=2..T} L_{t-1} per dimension, in nats, for data x_0 ~ N(0, s2 I) and the exact x̂_0.

    Chapter 5: eq-ch5-snr-form summed over the chain, with E‖x_0 - x̂_0‖²/d = s²/(1 + s² SNR(t))
    (eq-ch5-gaussian-limit, left; :class:`ddpm_lib.oracles.GaussianOracle` is that x̂_0).
    ``snr`` [T] holds SNR(1) > ... > SNR(T) of any schedule (float64 recommended); the result is
    a 0-dim tensor. For a finer grid between the same ends the sum decreases towards the
    continuous bound :func:`gaussian_continuous_bound` (eq-ch5-continuous, eq-ch5-snr-integral).
    """
    mmse = s2 / (1 + s2 * snr)
    return (0.5 * (snr[:-1] - snr[1:]) * mmse[1:]).sum()


def gaussian_continuous_bound(snr_max: float, snr_min: float, s2: float) -> float:
    """L_∞/d = ½ log((1 + s² SNR_max)/(1 + s² SNR_min)) nats per dimension (eq-ch5-gaussian-limit).

    Chapter 5: the T → ∞ limit of the step terms (eq-ch5-continuous), written as an integral
    over the SNR (eq-ch5-snr-integral), ½ ∫ s²/(1 + s² ζ) dζ from SNR_min to SNR_max, for data
    x_0 ~ N(0, s2 I) and the exact x̂_0. It depends on the schedule only through its two ends.
    """
    return 0.5 * math.log((1 + s2 * snr_max) / (1 + s2 * snr_min))
