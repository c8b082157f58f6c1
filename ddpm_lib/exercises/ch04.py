"""Chapter 4's coding exercises (ddpm_lib.exercises)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ddpm_lib.diffusion import GaussianDiffusion
from ddpm_lib.exercises import Exercise
from ddpm_lib.schedules import linear_beta_schedule

Tensor = torch.Tensor

# Code indices i = t - 1 to test: the last step (no noise), the first few, the middle, x_T.
_STEPS = (0, 1, 9, 299, 999)


def _library_step(
    diffusion: GaussianDiffusion, eps_hat: Tensor, x_t: Tensor, i: int, z: Tensor, **kw
) -> Tensor:
    """The library's step of Algorithm 2 (alg-ch4-sampling) for the fixed guess ``eps_hat``."""
    return diffusion.p_sample(lambda x, t: eps_hat, x_t, i, noise=z, **kw).sample


def _test_p_sample_step(fn: Callable) -> str | None:
    """One reverse step from ε̂, the library's way (eq-ch4-x0-from-eps, clip, eq-ch4-mu-x0, σ_t z).

    Compared with ``GaussianDiffusion.p_sample`` (σ_t² = β̃_t, x̂_0 clipped to [-1, 1]) at
    several code indices, in float64, on batches [4, 6] whose x̂_0 is partly clipped.
    """
    diffusion = GaussianDiffusion(linear_beta_schedule(1000))
    gen = torch.Generator().manual_seed(0)
    for i in _STEPS:
        x_t = 1.5 * torch.randn(4, 6, dtype=torch.float64, generator=gen)
        eps_hat = torch.randn(4, 6, dtype=torch.float64, generator=gen)
        z = torch.randn(4, 6, dtype=torch.float64, generator=gen)
        want = _library_step(diffusion, eps_hat, x_t, i, z)
        got = fn(eps_hat.clone(), x_t.clone(), i, diffusion, z.clone())
        if not isinstance(got, Tensor) or got.shape != want.shape:
            shape = tuple(got.shape) if isinstance(got, Tensor) else type(got).__name__
            return f"at i = {i} you return {shape}; the step should return x_(t-1), shaped [4, 6]."
        if torch.allclose(got, want, rtol=1e-9, atol=1e-10):
            continue
        t = i + 1
        gap = (got - want).abs().max().item()
        unclipped = _library_step(diffusion, eps_hat, x_t, i, z, clip_denoised=False)
        if torch.allclose(got, unclipped, rtol=1e-9, atol=1e-10):
            return f"at t = {t} you did not clip x0_hat to [-1, 1] before the posterior mean."
        large = _library_step(diffusion, eps_hat, x_t, i, z, variance="fixed_large")
        if torch.allclose(got, large, rtol=1e-9, atol=1e-10):
            return f"at t = {t} your noise has variance beta_t; this step uses beta~_t."
        if i == 0:
            return (
                f"at t = 1 (i = 0) you are off by up to {gap:.2g}: the last step returns the "
                "posterior mean, the clipped x0_hat, with no noise."
            )
        return (
            f"at t = {t} your x_(t-1) differs from the library's by up to {gap:.2g}; check "
            "alpha_bar_t against alpha_t, and alpha_bar_(t-1) (alphas_cumprod_prev)."
        )
    return None


def _p_sample_step_mistake(
    eps_hat: Tensor, x_t: Tensor, i: int, diffusion: GaussianDiffusion, z: Tensor
) -> Tensor:
    """α_t where ᾱ_t belongs in x̂_0 (a one-step jump instead of the t-step one)."""
    a = diffusion.alphas[i].item()
    ab, ab_prev = diffusion.alphas_cumprod[i].item(), diffusion.alphas_cumprod_prev[i].item()
    beta = diffusion.betas[i].item()
    x0_hat = ((x_t - (1 - a) ** 0.5 * eps_hat) / a**0.5).clamp(-1.0, 1.0)
    mean = ab_prev**0.5 * beta / (1 - ab) * x0_hat + a**0.5 * (1 - ab_prev) / (1 - ab) * x_t
    if i == 0:
        return mean
    return mean + ((1 - ab_prev) / (1 - ab) * beta) ** 0.5 * z


EXERCISES = [
    Exercise("ch04.p_sample_step", "p_sample_step", _test_p_sample_step, _p_sample_step_mistake)
]
