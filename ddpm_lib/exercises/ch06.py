"""Chapter 6's coding exercises (ddpm_lib.exercises)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ddpm_lib.exercises import Exercise
from ddpm_lib.mixture import GaussianMixture2D
from ddpm_lib.sde import VPSDE, mixture_score_fn


def _setup():
    """The linear VP-SDE, the exact score of a 1-D two-bump mixture, and fixed x and z [5, 1]."""
    sde = VPSDE(beta_min=0.1, beta_max=20.0)
    means = torch.tensor([[-1.5], [1.0]], dtype=torch.float64)
    score_fn = mixture_score_fn(sde, GaussianMixture2D(means, 0.25, torch.tensor([0.4, 0.6])))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 1, dtype=torch.float64, generator=gen)
    z = torch.randn(5, 1, dtype=torch.float64, generator=gen)
    return sde, score_fn, x, z


def _reader_args(sde, score_fn):
    """The exercise's interface: score(x, t) and beta(t) with a float t."""

    def score(x, t):
        return score_fn(x, torch.full((x.shape[0],), float(t), dtype=x.dtype))

    def beta(t):
        return float(sde.beta(torch.tensor(float(t), dtype=torch.float64)))

    return score, beta


def _test_reverse_sde_step(fn: Callable) -> str | None:
    """eq-ch6-reverse-sde, eq-ch6-em: one Euler–Maruyama step from t to t - h is
    x - [f - g² ∇log q_t] h + g √h z; compared with ddpm_lib.sde.ReverseSDE's drift and g."""
    sde, score_fn, x, z = _setup()
    score, beta = _reader_args(sde, score_fn)
    rsde = sde.reverse(score_fn)
    h = 0.01
    for t in (0.9, 0.5, 0.05):
        tt = torch.full((x.shape[0],), t, dtype=torch.float64)
        drift, g = rsde.sde(x, tt)
        want = x - drift * h + g[:, None] * math.sqrt(h) * z
        got = fn(x.clone(), t, h, score, beta, z.clone())
        if not isinstance(got, torch.Tensor) or got.shape != x.shape:
            return f"return a tensor shaped like x {tuple(x.shape)}, got {type(got).__name__}"
        if torch.allclose(got, want, rtol=1e-9, atol=1e-12):
            continue
        f = -0.5 * beta(t) * x
        s = score(x, t)
        b = beta(t)
        noise = math.sqrt(b * h) * z
        if torch.allclose(got, x + drift * h + noise, rtol=1e-9, atol=1e-12):
            return (
                f"at t = {t} you stepped forward in time: going from t to t - h, the step "
                "subtracts the drift times h, x - [f - g² ∇log q_t] h"
            )
        if torch.allclose(got, x - (f - 0.5 * b * s) * h + noise, rtol=1e-9, atol=1e-12):
            return (
                f"at t = {t} your drift has ½ g² ∇log q_t: that is the probability-flow ODE's; "
                "the reverse SDE needs the full g² ∇log q_t, because its noise spreads as well"
            )
        if torch.allclose(got, x - drift * h, rtol=1e-9, atol=1e-12):
            return f"at t = {t} the noise is missing: add g(t) √h z with g(t) = √β(t)"
        if torch.allclose(got, x - drift * h + b * h * z, rtol=1e-9, atol=1e-12):
            return f"at t = {t} the noise has g² h; its standard deviation is g √h = √(β(t) h)"
        err = (got - want).abs().max().item()
        return f"at t = {t} your step differs from the library's by up to {err:.3g}"
    return None


def _reverse_sde_step_ode_drift(x, t, h, score, beta, z):
    """A plausible mistake: the probability-flow ODE's ½ in the drift, with the SDE's noise."""
    b = beta(t)
    drift = -0.5 * b * x - 0.5 * b * score(x, t)
    return x - drift * h + math.sqrt(b * h) * z


EXERCISES = [
    Exercise(
        "ch06.reverse_sde_step",
        "reverse_sde_step",
        _test_reverse_sde_step,
        _reverse_sde_step_ode_drift,
    )
]
