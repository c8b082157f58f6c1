"""Chapter 3's coding exercises (ddpm_lib.exercises)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ddpm_lib.diffusion import GaussianDiffusion
from ddpm_lib.exercises import Exercise
from ddpm_lib.schedules import linear_beta_schedule


def _test_posterior(fn: Callable) -> str | None:
    """Compare fn(x0, x_t, beta_t, alpha_bar_t, alpha_bar_prev) -> (mean, variance) with
    q(x_{t-1} | x_t, x_0) = N(μ̃_t, β̃_t I) (eq-ch3-mu-tilde, eq-ch3-beta-tilde) of the library,
    at a few book steps t of the linear schedule (T = 1000), in float64."""
    diffusion = GaussianDiffusion(linear_beta_schedule(1000))
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(3, 4, generator=g, dtype=torch.float64) * 2 - 1
    x_t = torch.randn(3, 4, generator=g, dtype=torch.float64)
    for t in (2, 10, 100, 500, 1000):
        i = t - 1  # code index of book step t
        beta_t = diffusion.betas[i].item()
        alpha_bar_t = diffusion.alphas_cumprod[i].item()
        alpha_bar_prev = diffusion.alphas_cumprod_prev[i].item()
        want = diffusion.q_posterior_mean_variance(x0, x_t, i)
        out = fn(x0, x_t, beta_t, alpha_bar_t, alpha_bar_prev)
        if not isinstance(out, tuple | list) or len(out) != 2:
            return "return a pair (mean, variance)."
        mean = torch.as_tensor(out[0], dtype=torch.float64)
        var = torch.as_tensor(out[1], dtype=torch.float64)
        if mean.shape != x0.shape:
            return (
                f"the mean should have the shape of x0, {tuple(x0.shape)}; got {tuple(mean.shape)}."
            )
        var_want = want.variance[0, 0].item()
        if not torch.allclose(var, torch.tensor(var_want, dtype=torch.float64), rtol=1e-9):
            got = var.flatten()[0].item()
            return (
                f"at t = {t} your variance is {got:.6g}, the posterior's is {var_want:.6g} "
                "= (1 - alpha_bar_prev) / (1 - alpha_bar_t) * beta_t."
            )
        if not torch.allclose(mean, want.mean, rtol=1e-9, atol=1e-12):
            # the two factors: feed x0 = 1, x_t = 0 and x0 = 0, x_t = 1
            one, zero = torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
            f_x0 = torch.as_tensor(fn(one, zero, beta_t, alpha_bar_t, alpha_bar_prev)[0]).item()
            f_xt = torch.as_tensor(fn(zero, one, beta_t, alpha_bar_t, alpha_bar_prev)[0]).item()
            c_x0 = diffusion.posterior_mean_coef1[i].item()
            c_xt = diffusion.posterior_mean_coef2[i].item()
            if not math.isclose(f_x0, c_x0, rel_tol=1e-9):
                hint = (
                    " Did you use alpha_bar_t where alpha_bar_{t-1} belongs?"
                    if math.isclose(f_x0, math.sqrt(alpha_bar_t) * beta_t / (1 - alpha_bar_t))
                    else ""
                )
                return (
                    f"at t = {t} the factor of x0 in your mean is {f_x0:.6g}, the posterior's "
                    f"is sqrt(alpha_bar_prev) * beta_t / (1 - alpha_bar_t) = {c_x0:.6g}.{hint}"
                )
            if not math.isclose(f_xt, c_xt, rel_tol=1e-9):
                return (
                    f"at t = {t} the factor of x_t in your mean is {f_xt:.6g}, the posterior's "
                    "is sqrt(alpha_t) * (1 - alpha_bar_prev) / (1 - alpha_bar_t) "
                    f"= {c_xt:.6g}."
                )
            return f"at t = {t} your mean differs from the posterior mean."
    return None


def _posterior_mistake(x0, x_t, beta_t, alpha_bar_t, alpha_bar_prev):
    """The slip of Chapter 3's "bar" section, one step later: ᾱ_t where ᾱ_{t-1} belongs."""
    alpha_t = 1 - beta_t
    mean = (
        math.sqrt(alpha_bar_t) * beta_t / (1 - alpha_bar_t) * x0
        + math.sqrt(alpha_t) * (1 - alpha_bar_prev) / (1 - alpha_bar_t) * x_t
    )
    return mean, (1 - alpha_bar_prev) / (1 - alpha_bar_t) * beta_t


EXERCISES = [
    Exercise(
        "ch03.posterior_mean_variance",
        "posterior_mean_variance",
        _test_posterior,
        _posterior_mistake,
    )
]
