"""Chapter 7's coding exercises (ddpm_lib.exercises)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ddpm_lib.diffusion import GaussianDiffusion
from ddpm_lib.exercises import Exercise
from ddpm_lib.samplers import ddim_step
from ddpm_lib.schedules import linear_beta_schedule

Tensor = torch.Tensor

# Jumps (code indices i -> i_prev; -1 is x_0) on the linear schedule, T = 1000: one adjacent
# step, two long jumps, and the last step to x_0 (alpha_bar_prev = 1).
_JUMPS = ((999, 998), (700, 350), (222, 111), (0, -1))
_ETAS = (0.0, 0.5, 1.0)


def _test_ddim_update(fn: Callable) -> str | None:
    """Compare fn(x_t, eps_hat, alpha_bar_t, alpha_bar_prev, eta, noise) with the library's
    ddim_step (no clipping) on fixed float64 inputs [4, 3], for eta = 0 first, then eta > 0."""
    diffusion = GaussianDiffusion(linear_beta_schedule(1000))
    gen = torch.Generator().manual_seed(0)
    x_t = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    eps_hat = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    noise = torch.randn(4, 3, generator=gen, dtype=torch.float64)

    def model(x, t):
        return eps_hat

    for eta in _ETAS:
        for i, i_prev in _JUMPS:
            a = diffusion.alphas_cumprod[i].item()
            a_prev = diffusion.alphas_cumprod[i_prev].item() if i_prev >= 0 else 1.0
            want = ddim_step(
                diffusion, model, x_t, i, i_prev, eta=eta, noise=noise, clip_denoised=False
            ).sample
            got = fn(x_t.clone(), eps_hat.clone(), a, a_prev, eta, noise.clone())
            got = torch.as_tensor(got, dtype=torch.float64)
            jump = f"the jump from step {i + 1} to step {i_prev + 1} at η = {eta:g}"
            if got.shape != want.shape:
                return f"on {jump} you return shape {tuple(got.shape)}, not {tuple(want.shape)}."
            if torch.allclose(got, want, rtol=1e-9, atol=1e-12):
                continue
            if torch.isnan(got).any():
                how = "some entries are nan (a negative square root?)"
            else:
                how = f"your x_prev is off by up to {(got - want).abs().max().item():.3g}"
            if eta == 0.0:
                return (
                    f"on {jump} (no fresh noise) {how}: check "
                    "x̂_0 = (x_t - √(1-ᾱ_t) ε̂)/√ᾱ_t and the coefficients √ᾱ_prev of x̂_0 and "
                    "√(1-ᾱ_prev-σ²) of ε̂."
                )
            return (
                f"with η = 0 you agree, but on {jump} {how}: check "
                "σ(η) = η √((1-ᾱ_prev)/(1-ᾱ_t)) "
                "√(1-ᾱ_t/ᾱ_prev), which enters twice, as σ z and as -σ² under the square root."
            )
    return None


def _ddim_update_mistake(
    x_t: Tensor, eps_hat: Tensor, alpha_bar_t: float, alpha_bar_prev: float, eta: float, noise
) -> Tensor:
    # σ(η) without the factor √(1 - ᾱ_t/ᾱ_prev): too much fresh noise on every jump.
    x0_hat = (x_t - math.sqrt(1 - alpha_bar_t) * eps_hat) / math.sqrt(alpha_bar_t)
    sigma = eta * math.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar_t))
    keep = torch.tensor(1 - alpha_bar_prev - sigma**2, dtype=x_t.dtype).sqrt()
    return math.sqrt(alpha_bar_prev) * x0_hat + keep * eps_hat + sigma * noise


EXERCISES = [
    Exercise("ch07.ddim_update", "ddim_update", _test_ddim_update, _ddim_update_mistake),
]
