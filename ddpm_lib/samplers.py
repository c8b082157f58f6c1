"""Sampling loops: DDPM ancestral sampling (Algorithm 2, Chapter 4) and DDIM (Chapter 7).

All loops take the ``GaussianDiffusion`` and the network as arguments. Time indices are 0-based
code indices (index i is the book's step i+1), as everywhere in ``ddpm_lib``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

if TYPE_CHECKING:
    from .diffusion import GaussianDiffusion, Model

Tensor = torch.Tensor


def _start(
    shape: tuple[int, ...],
    noise: Tensor | None,
    device: torch.device | str | None,
    generator: torch.Generator | None,
) -> Tensor:
    if noise is not None:
        if tuple(noise.shape) != tuple(shape):
            raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {tuple(shape)}")
        return noise.to(device) if device is not None else noise
    return torch.randn(shape, device=device, generator=generator)


def _fresh_noise(x: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)


def _stack(trajectory: dict[str, list[Any]]) -> dict[str, Any]:
    return {
        "steps": trajectory["steps"],
        "x_t": torch.stack(trajectory["x_t"]),
        "pred_x0": torch.stack(trajectory["pred_x0"]),
    }


@torch.no_grad()
def ddpm_sample_loop(
    diffusion: GaussianDiffusion,
    model: Model,
    shape: tuple[int, ...],
    noise: Tensor | None = None,
    clip_denoised: bool = True,
    variance: str | None = None,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
    progress: bool = True,
    return_trajectory: bool = False,
    trajectory_stride: int = 100,
) -> Tensor | tuple[Tensor, dict[str, Any]]:
    """Algorithm 2: x_T ~ N(0, I), then x_{t-1} = μ_θ(x_t, t) + σ_t z for t = T..1.

    Returns x_0 [shape]. With ``return_trajectory`` also a dict with ``steps`` (book steps t,
    descending), ``x_t`` [S, *shape] (the state entering that step) and ``pred_x0`` [S, *shape],
    recorded every ``trajectory_stride`` steps and at t = 1.
    """
    if trajectory_stride < 1:
        raise ValueError(f"trajectory_stride must be ≥ 1, got {trajectory_stride}")
    x = _start(shape, noise, device, generator)
    traj: dict[str, list[Any]] = {"steps": [], "x_t": [], "pred_x0": []}
    T = diffusion.num_timesteps
    for i in tqdm(range(T - 1, -1, -1), desc="DDPM sampling", disable=not progress):
        t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
        z = _fresh_noise(x, generator)
        out = diffusion.p_sample(
            model, x, t, noise=z, clip_denoised=clip_denoised, variance=variance
        )
        if return_trajectory and (i % trajectory_stride == 0 or i == T - 1):
            traj["steps"].append(i + 1)
            traj["x_t"].append(x.cpu())
            traj["pred_x0"].append(out["pred_x0"].cpu())
        x = out["sample"]
    return (x, _stack(traj)) if return_trajectory else x


def ddim_timesteps(num_timesteps: int, steps: int, kind: str = "uniform") -> list[int]:
    """A descending sub-sequence of ``steps`` code indices from 0..T-1 that ends at index 0.

    "uniform" spaces them evenly (DDIM's linear choice, always containing index 0 and, when
    steps = T, every index); "quad" spaces them quadratically, denser near t = 1.
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


def ddim_step(
    diffusion: GaussianDiffusion,
    model: Model,
    x_t: Tensor,
    t: int,
    t_prev: int,
    eta: float = 0.0,
    noise: Tensor | None = None,
    clip_denoised: bool = True,
) -> dict[str, Tensor]:
    """One DDIM update x_t → x_{t_prev} (code indices; ``t_prev = -1`` means x_0).

    x_prev = √ᾱ_prev x̂_0 + √(1-ᾱ_prev-σ²) ε̂ + σ z with
    σ = η √((1-ᾱ_prev)/(1-ᾱ_t)) √(1-ᾱ_t/ᾱ_prev). With η = 1 and t_prev = t-1, σ² = β̃_t and the
    mean equals μ̃_t(x̂_0, x_t): one DDPM step (tested). Returns sample, mean, variance,
    pred_x0 shaped like x_t.
    """
    if eta < 0:
        raise ValueError(f"eta must be ≥ 0, got {eta}")
    if not -1 <= t_prev < t < diffusion.num_timesteps:
        raise ValueError(f"need -1 ≤ t_prev < t ≤ T-1, got t={t}, t_prev={t_prev}")
    tt = torch.full((x_t.shape[0],), t, device=x_t.device, dtype=torch.long)
    pred = diffusion.model_predictions(model, x_t, tt)
    x0, eps = pred["pred_x0"], pred["eps"]
    if clip_denoised:
        x0 = x0.clamp(-1.0, 1.0)
        eps = diffusion.predict_eps_from_x0(x_t, tt, x0)
    ab = diffusion.alphas_cumprod[t].item()
    ab_prev = diffusion.alphas_cumprod[t_prev].item() if t_prev >= 0 else 1.0
    var = eta**2 * (1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)
    mean = math.sqrt(ab_prev) * x0 + math.sqrt(max(1 - ab_prev - var, 0.0)) * eps
    sample = mean
    if var > 0:
        noise = torch.randn_like(x_t) if noise is None else noise
        sample = mean + math.sqrt(var) * noise
    return {
        "sample": sample,
        "mean": mean,
        "variance": torch.full_like(x_t, var),
        "pred_x0": x0,
    }


@torch.no_grad()
def ddim_sample_loop(
    diffusion: GaussianDiffusion,
    model: Model,
    shape: tuple[int, ...],
    steps: int = 50,
    eta: float = 0.0,
    spacing: str = "uniform",
    noise: Tensor | None = None,
    clip_denoised: bool = True,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
    progress: bool = True,
    return_trajectory: bool = False,
) -> Tensor | tuple[Tensor, dict[str, Any]]:
    """DDIM sampling over ``steps`` of the T steps; η = 0 is deterministic, η = 1 is DDPM-like.

    Returns x_0 [shape], and with ``return_trajectory`` a dict as in :func:`ddpm_sample_loop`
    recording every visited step.
    """
    seq = ddim_timesteps(diffusion.num_timesteps, steps, spacing)
    x = _start(shape, noise, device, generator)
    traj: dict[str, list[Any]] = {"steps": [], "x_t": [], "pred_x0": []}
    pairs = list(zip(seq, seq[1:] + [-1], strict=True))
    for t, t_prev in tqdm(pairs, desc=f"DDIM sampling ({steps} steps)", disable=not progress):
        z = _fresh_noise(x, generator) if eta > 0 else None
        out = ddim_step(diffusion, model, x, t, t_prev, eta, z, clip_denoised)
        if return_trajectory:
            traj["steps"].append(t + 1)
            traj["x_t"].append(x.cpu())
            traj["pred_x0"].append(out["pred_x0"].cpu())
        x = out["sample"]
    return (x, _stack(traj)) if return_trajectory else x
