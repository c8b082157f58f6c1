"""Gaussian pieces of the likelihood: the KL between two Gaussians and the discretized decoder.

Pure maths on tensors, with no diffusion chain in sight: :mod:`ddpm_lib.elbo` assembles them
into the bound of Chapter 5, and :mod:`ddpm_lib.learned_variance` into the hybrid loss.
"""

from __future__ import annotations

import math

import torch

Tensor = torch.Tensor
LN2 = math.log(2.0)


def mean_flat(x: Tensor) -> Tensor:
    """Mean over every dimension but the batch: [B, ...] → [B]."""
    return x.flatten(1).mean(dim=1)


def normal_kl(
    mean1: Tensor, logvar1: Tensor, mean2: Tensor | float, logvar2: Tensor | float
) -> Tensor:
    """KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)) per element, in nats (eq-ch5-kl).

    KL = ½ (logvar2 - logvar1 + e^(logvar1-logvar2) + (mean1-mean2)² e^(-logvar2) - 1),
    Chapter 5. ``mean1`` and ``logvar1`` are tensors; the second Gaussian may be given by
    tensors or by Python floats (``normal_kl(m, lv, 0.0, 0.0)`` is the KL to N(0, 1)), which
    take ``mean1``'s dtype and device. All arguments broadcast against each other.
    """
    if not isinstance(mean1, Tensor) or not isinstance(logvar1, Tensor):
        raise TypeError(
            "normal_kl needs tensors for the first Gaussian (mean1, logvar1); only the second "
            f"may be Python floats, got {type(mean1).__name__} and {type(logvar1).__name__}"
        )
    mean2 = torch.as_tensor(mean2, dtype=mean1.dtype, device=mean1.device)
    logvar2 = torch.as_tensor(logvar2, dtype=logvar1.dtype, device=logvar1.device)
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
    """log p(x) per element for data on ``num_bins`` levels scaled to [-1, 1] (eq-ch5-decoder).

    Level k sits at x = 2k/(num_bins-1) - 1 and owns the interval x ± 1/(num_bins-1); the end
    levels own everything beyond (so the probabilities of all levels sum to 1). The density is
    N(means, exp(log_scales)²): ``log_scales`` is the log standard deviation. Shapes broadcast.
    Chapter 5: the decoder p_θ(x_0 | x_1). ``x`` is trusted to lie on the grid: the callers
    that take data from a user (``elbo.elbo_bpd``, the trainer) check it once.
    """
    half = 1.0 / (num_bins - 1)
    inv_std = torch.exp(-log_scales)
    lo = torch.where(x <= -1 + 1e-6, torch.full_like(x, -math.inf), (x - half - means) * inv_std)
    hi = torch.where(x >= 1 - 1e-6, torch.full_like(x, math.inf), (x + half - means) * inv_std)
    return _log_normal_interval(lo, hi)
