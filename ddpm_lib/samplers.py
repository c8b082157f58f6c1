"""Sampling loops: DDPM ancestral sampling (Algorithm 2, Chapter 4) and DDIM (Chapter 7).

Every sampler has one signature: ``sampler(diffusion, model, x_T, [steps,] *, options...,
generator=None, callback=None, progress=True)``. It starts from the noise ``x_T`` it is given
(draw it with ``torch.randn(shape, generator=...)``), takes its steps, calls ``callback`` with a
:class:`SamplerStep` after each one, and returns x_0. Time indices are 0-based code indices
(index i is the book's step i+1), as everywhere in ``ddpm_lib``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from tqdm.auto import tqdm

from .diffusion import GaussianDiffusion, Model

Tensor = torch.Tensor


class SamplerStep(NamedTuple):
    """What a sampler hands its callback after each step."""

    i: int  # code index of the step just taken (book step i+1)
    x_t: Tensor  # the state entering the step
    pred_x0: Tensor  # the network's x̂_0 at that state
    sample: Tensor  # the state after the step


Callback = Callable[[SamplerStep], None]


class Trajectory:
    """A sampler callback that keeps x_t and x̂_0 along the way, on the CPU.

    Records the first step and every step whose code index is a multiple of ``every``
    (``every=1``: all of them). After sampling: ``steps`` (book steps t, descending), ``x_t``
    [S, *shape] (the state entering each recorded step) and ``pred_x0`` [S, *shape].
    """

    def __init__(self, every: int = 100) -> None:
        if every < 1:
            raise ValueError(f"every must be ≥ 1, got {every}")
        self.every = every
        self.steps: list[int] = []
        self._x_t: list[Tensor] = []
        self._pred_x0: list[Tensor] = []

    def __call__(self, step: SamplerStep) -> None:
        if not self.steps or step.i % self.every == 0:
            self.steps.append(step.i + 1)
            self._x_t.append(step.x_t.cpu())
            self._pred_x0.append(step.pred_x0.cpu())

    @property
    def x_t(self) -> Tensor:
        return torch.stack(self._x_t)

    @property
    def pred_x0(self) -> Tensor:
        return torch.stack(self._pred_x0)


def _fresh_noise(x: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)


@torch.no_grad()
def ddpm_sample(
    diffusion: GaussianDiffusion,
    model: Model,
    x_T: Tensor,
    *,
    clip_denoised: bool = True,
    variance: str | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    progress: bool = True,
) -> Tensor:
    """Algorithm 2 (alg-ch4-sampling) from ``x_T``; returns x_0 shaped like x_T. Chapter 4.

    It draws from the model's chain p_θ(x_{0:T}) (eq-ch5-reverse), one factor at a time.

    1. x_T is given (the caller draws it from N(0, I)).
    2. For t = T, ..., 1: draw z ~ N(0, I) (not used at t = 1) and
       x_{t-1} = μ_θ(x_t, t) + σ_t z (:meth:`GaussianDiffusion.p_sample`).
    3. Return x_0.
    """
    x = x_T
    for i in tqdm(
        range(diffusion.num_timesteps - 1, -1, -1), "DDPM sampling", disable=not progress
    ):
        t = diffusion.step_index(i, x.shape[0], x.device)
        z = _fresh_noise(x, generator)
        out = diffusion.p_sample(
            model, x, t, noise=z, clip_denoised=clip_denoised, variance=variance
        )
        if callback is not None:
            callback(SamplerStep(i, x, out.pred_x0, out.sample))
        x = out.sample
    return x


def ddim_timesteps(num_timesteps: int, steps: int, kind: str = "uniform") -> list[int]:
    """A descending sub-sequence of ``steps`` code indices from 0..T-1 that ends at index 0.

    "uniform" spaces them evenly (DDIM's linear choice, always containing index 0 and, when
    steps = T, every index); "quad" spaces them quadratically, denser near t = 1. Chapter 7.
    """
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"steps must lie in [1, {num_timesteps}] (T), got {steps}")
    if kind == "uniform":
        seq = [round(k * (num_timesteps - 1) / max(steps - 1, 1)) for k in range(steps)]
        if steps == 1:
            seq = [num_timesteps - 1]
    elif kind == "quad":
        seq = [
            round((math.sqrt(num_timesteps - 1) * k / max(steps - 1, 1)) ** 2) for k in range(steps)
        ]
    else:
        raise ValueError(f"unknown timestep spacing {kind!r}; choose 'uniform' or 'quad'")
    seq = sorted(set(seq), reverse=True)
    if len(seq) != steps:
        raise ValueError(
            f"'{kind}' spacing gives only {len(seq)} distinct steps for {steps} requested; "
            "use 'uniform' or fewer steps"
        )
    return seq


class DdimStep(NamedTuple):
    """One DDIM update: the draw ``sample``, its ``mean`` and ``variance`` (shaped like x_t),
    and the ``pred_x0`` it was built from."""

    sample: Tensor
    mean: Tensor
    variance: Tensor
    pred_x0: Tensor


def ddim_step(
    diffusion: GaussianDiffusion,
    model: Model,
    x_t: Tensor,
    t: int,
    t_prev: int,
    *,
    eta: float = 0.0,
    noise: Tensor | None = None,
    clip_denoised: bool = True,
) -> DdimStep:
    """One DDIM update x_t → x_{t_prev} (code indices; ``t_prev = -1`` means x_0). Chapter 7.

    A draw from q_σ(x_{t_prev} | x_t, x̂_0) (eq-ch7-family), the family whose marginals are
    DDPM's for every σ (eq-ch7-joint), with σ from η (eq-ch7-sigma-eta):
    x_prev = √ᾱ_prev x̂_0 + √(1-ᾱ_prev-σ²) ε̂ + σ z (eq-ch7-ddim-step),
    σ = η √((1-ᾱ_prev)/(1-ᾱ_t)) √(1-ᾱ_t/ᾱ_prev). With η = 0 it is an Euler step of the
    probability-flow ODE in the variables y = x/√ᾱ, s = √(1/ᾱ-1) (eq-ch7-ddim-euler), where the
    ODE reads dy/ds = ε̂ (eq-ch9-ve-ode) and the step lands on x_prev = √ᾱ_prev x̂_0 +
    √(1-ᾱ_prev) ε̂ (eq-ch9-ddim-euler); with η = 1 and t_prev = t-1, σ² = β̃_t and the mean
    is μ̃_t(x̂_0, x_t): one DDPM step.
    """
    if eta < 0:
        raise ValueError(f"eta must be ≥ 0, got {eta}")
    if not -1 <= t_prev < t < diffusion.num_timesteps:
        raise ValueError(f"need -1 ≤ t_prev < t ≤ T-1, got t={t}, t_prev={t_prev}")
    tt = diffusion.step_index(t, x_t.shape[0], x_t.device)
    pred = diffusion.model_predictions(model, x_t, tt)
    x0, eps = pred.pred_x0, pred.eps
    if clip_denoised:
        x0 = x0.clamp(-1.0, 1.0)
        eps = diffusion.predict_eps_from_x0(x_t, tt, x0)
    ab = diffusion.alphas_cumprod[t].item()
    ab_prev = diffusion.alphas_cumprod[t_prev].item() if t_prev >= 0 else 1.0
    var = eta**2 * (1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)
    if var > (1 - ab_prev) * (1 + 1e-12):
        limit = math.sqrt((1 - ab) / (1 - ab / ab_prev))
        raise ValueError(
            f"eta = {eta} gives σ² = {var:.3g} > 1 - ᾱ_prev = {1 - ab_prev:.3g} on the jump "
            f"{t} → {t_prev}: the step leaves the DDIM family (eq-ch7-family); use eta ≤ "
            f"{limit:.3g} here (eta ≤ 1 is always safe)"
        )
    mean = math.sqrt(ab_prev) * x0 + math.sqrt(max(1 - ab_prev - var, 0.0)) * eps
    sample = mean
    if var > 0:
        noise = torch.randn_like(x_t) if noise is None else noise
        sample = mean + math.sqrt(var) * noise
    return DdimStep(sample, mean, torch.full_like(x_t, var), x0)


def slerp(x_a: Tensor, x_b: Tensor, lam: float) -> Tensor:
    """Spherical interpolation of two noise tensors (eq-ch7-slerp), Chapter 7.

    sin((1-λ)θ)/sin θ · x_a + sin(λθ)/sin θ · x_b, θ the angle between the flattened x_a and
    x_b (per batch item, [B, ...] → [B, ...]). Unlike a straight line it keeps the norm of
    Gaussian noise (about √D) along the way, so every point is a typical x_T. Where the two
    point the same way (θ ≈ 0) the formula tends to the straight line, which is used there;
    opposite codes (θ = π) have no unique great circle and are refused.
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must lie in [0, 1], got {lam}")
    a, b = x_a.flatten(1).double(), x_b.flatten(1).double()
    cos = ((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))).clamp(-1.0, 1.0)
    if (cos < -1 + 1e-12).any():
        raise ValueError("slerp of opposite codes (angle π) is not defined: no unique arc")
    theta = torch.acos(cos)
    small = theta < 1e-6  # sin θ ≈ θ: both weights tend to those of the straight line
    sin = torch.where(small, torch.ones_like(theta), torch.sin(theta))
    w_a = torch.where(small, 1 - lam, torch.sin((1 - lam) * theta) / sin)
    w_b = torch.where(small, torch.full_like(theta, lam), torch.sin(lam * theta) / sin)
    shape = (-1, *([1] * (x_a.ndim - 1)))
    return w_a.reshape(shape).to(x_a.dtype) * x_a + w_b.reshape(shape).to(x_a.dtype) * x_b


@torch.no_grad()
def ddim_sample(
    diffusion: GaussianDiffusion,
    model: Model,
    x_T: Tensor,
    steps: int | Sequence[int] = 50,
    *,
    eta: float = 0.0,
    spacing: str = "uniform",
    clip_denoised: bool = True,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    progress: bool = True,
) -> Tensor:
    """DDIM sampling (Song, Meng & Ermon 2021) from ``x_T``; returns x_0. Chapter 7.

    ``steps`` is a number of steps, spaced by ``spacing`` (:func:`ddim_timesteps`), or the
    descending code indices themselves. η = 0 is deterministic given x_T; η = 1 is DDPM-like.

    1. x_T is given.
    2. For each pair (t, t_prev) of consecutive steps (t_prev = -1 after the last):
       x_{t_prev} = :func:`ddim_step` (x_t, t → t_prev), with fresh z when η > 0.
    3. Return x_0.
    """
    T = diffusion.num_timesteps
    seq = ddim_timesteps(T, steps, spacing) if isinstance(steps, int) else list(steps)
    descending = all(a > b for a, b in zip(seq, seq[1:], strict=False))
    if not seq or not descending or not 0 <= seq[-1] <= seq[0] < T:
        raise ValueError(f"steps must be descending code indices within 0..{T - 1}, got {seq}")
    x = x_T
    pairs = list(zip(seq, seq[1:] + [-1], strict=True))
    for t, t_prev in tqdm(pairs, f"DDIM sampling ({len(seq)} steps)", disable=not progress):
        z = _fresh_noise(x, generator) if eta > 0 else None
        out = ddim_step(
            diffusion, model, x, t, t_prev, eta=eta, noise=z, clip_denoised=clip_denoised
        )
        if callback is not None:
            callback(SamplerStep(t, x, out.pred_x0, out.sample))
        x = out.sample
    return x
