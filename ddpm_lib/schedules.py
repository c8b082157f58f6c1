"""Variance schedules β_1..β_T (Chapter 1).

Every schedule is a float64 tensor of shape [T]. Entry ``i`` (0-based, as in all code) is the
book's β_{i+1}: the book counts diffusion steps t = 1..T, code indexes them 0..T-1.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

Tensor = torch.Tensor


def _check_num_timesteps(T: int) -> None:
    if isinstance(T, bool) or not isinstance(T, int) or T <= 0:
        raise ValueError(
            f"the number of diffusion steps T must be a positive integer, got {T!r}; "
            "DDPM uses T=1000"
        )


def check_betas(betas: Tensor) -> Tensor:
    """Validate a schedule: a 1-D tensor with every β_t strictly inside (0, 1).

    β_t = 0 would make a step do nothing and break the posterior (division by β̃); β_t ≥ 1 would
    make √(1-β_t) undefined or zero. Returns the schedule as float64.
    """
    betas = torch.as_tensor(betas, dtype=torch.float64)
    if betas.ndim != 1 or betas.numel() == 0:
        raise ValueError(
            f"betas must be a non-empty 1-D tensor of shape [T], got shape {tuple(betas.shape)}"
        )
    if not torch.isfinite(betas).all():
        raise ValueError("betas contain NaN or infinity; every β_t must lie in (0, 1)")
    bad = (betas <= 0) | (betas >= 1)
    if bad.any():
        i = int(torch.nonzero(bad)[0])
        raise ValueError(
            f"every β_t must lie strictly inside (0, 1), but betas[{i}] (book step t={i + 1}) "
            f"= {betas[i].item():.6g}; DDPM's linear schedule runs from 1e-4 to 0.02"
        )
    return betas


def linear_beta_schedule(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """β_t rising linearly from ``beta_start`` (t=1) to ``beta_end`` (t=T) (eq-ch1-linear).

    Ho et al. 2020; Chapter 1.

    Shape [T], float64. The DDPM values are 1e-4 → 0.02 for T = 1000 (one of the seed write-ups
    says 0.002: that end point leaves far too much signal at t=T, see the errata page).
    """
    _check_num_timesteps(T)
    if T == 1:
        return check_betas(torch.tensor([beta_end], dtype=torch.float64))
    return check_betas(torch.linspace(beta_start, beta_end, T, dtype=torch.float64))


def scaled_linear_beta_schedule(
    T: int, beta_start: float = 0.00085, beta_end: float = 0.012
) -> Tensor:
    """√β_t linear from √beta_start to √beta_end (the latent-diffusion "scaled linear"), [T]."""
    _check_num_timesteps(T)
    if not (0 < beta_start < 1 and 0 < beta_end < 1):
        raise ValueError(
            f"beta_start and beta_end must lie in (0, 1), got {beta_start}, {beta_end}"
        )
    roots = torch.linspace(math.sqrt(beta_start), math.sqrt(beta_end), T, dtype=torch.float64)
    return check_betas(roots**2)


def cosine_alpha_bar(u: Tensor, s: float = 0.008) -> Tensor:
    """ᾱ(u) = f(u)/f(0), f(u) = cos²((u + s)/(1 + s) · π/2), u = t/T ∈ [0, 1] (eq-ch1-cosine).

    Chapter 1; the errata page (eq-errata-cosine).

    The square is on the cosine, not on its argument (a misplacement found in popular posts).
    """
    f = torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    f0 = math.cos(s / (1 + s) * math.pi / 2) ** 2
    return f / f0


def cosine_beta_schedule(T: int, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """β_t = min(1 - ᾱ(t/T)/ᾱ((t-1)/T), max_beta) (eq-ch1-cosine), [T] float64. Chapter 1.

    Nichol & Dhariwal 2021.

    ᾱ follows :func:`cosine_alpha_bar`; the clip at ``max_beta`` keeps β_T below 1 where
    ᾱ(1) = 0 would otherwise give β_T = 1.
    """
    _check_num_timesteps(T)
    if not 0 < max_beta < 1:
        raise ValueError(f"max_beta must lie in (0, 1), got {max_beta}")
    if s < 0:
        raise ValueError(f"the offset s must be non-negative, got {s}")
    u = torch.arange(T + 1, dtype=torch.float64) / T
    alpha_bar = cosine_alpha_bar(u, s)
    betas = 1 - alpha_bar[1:] / alpha_bar[:-1]
    return check_betas(betas.clamp(max=max_beta))


SCHEDULES: dict[str, Callable[..., Tensor]] = {
    "linear": linear_beta_schedule,
    "cosine": cosine_beta_schedule,
    "scaled_linear": scaled_linear_beta_schedule,
}


def get_beta_schedule(name: str, T: int, **kwargs: float) -> Tensor:
    """Look a schedule up by name ("linear", "cosine", "scaled_linear"); returns [T] float64."""
    try:
        fn = SCHEDULES[name]
    except KeyError:
        raise ValueError(
            f"unknown beta schedule {name!r}; choose one of {', '.join(sorted(SCHEDULES))}"
        ) from None
    return fn(T, **kwargs)
