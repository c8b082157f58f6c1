"""Shared test helpers: oracle models that know the answer, Monte Carlo tolerances."""

from __future__ import annotations

import torch

from ddpm_lib.diffusion import GaussianDiffusion


class OracleEps:
    """The exact ε for data that is a single point x*: ε = (x_t - √ᾱ_t x*)/√(1-ᾱ_t).

    With this model x̂_0 = x* at every step, so the reverse process must return x*.
    """

    def __init__(self, diffusion: GaussianDiffusion, x_star: torch.Tensor) -> None:
        self.diffusion = diffusion
        self.x_star = x_star

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.diffusion.predict_eps_from_x0(x_t, t, self.x_star.expand_as(x_t))


def mc_tolerance(std: float, n: int, z: float = 5.0) -> float:
    """z standard errors of a mean of n draws with standard deviation ``std``.

    z = 5 makes a false alarm (two-sided) about 6e-7 per comparison.
    """
    return z * std / n**0.5
