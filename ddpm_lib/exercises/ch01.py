"""Chapter 1's coding exercises (ddpm_lib.exercises)."""

from __future__ import annotations

import math

import torch

from ddpm_lib.exercises import Exercise
from ddpm_lib.schedules import cosine_beta_schedule

# (T, s): the DDPM size with the book's offset, a short schedule, and no offset at all.
_CASES = ((1000, 0.008), (10, 0.008), (50, 0.0))


def _test_cosine_betas(fn) -> str | None:
    """Compare the reader's ``cosine_betas(T, s)`` with :func:`cosine_beta_schedule`.

    The cosine schedule (eq-ch1-cosine), Chapter 1: ᾱ_t = f(t/T)/f(0) with
    f(u) = cos²((u + s)/(1 + s) · π/2) and β_t = min(1 - ᾱ_t/ᾱ_{t-1}, 0.999), shape [T].
    Returns None when every case agrees to 1e-6, else one sentence saying what is wrong.
    """
    for T, s in _CASES:
        out = fn(T, s)
        if not isinstance(out, torch.Tensor):
            return f"cosine_betas({T}, {s}) returned a {type(out).__name__}, not a tensor."
        want = cosine_beta_schedule(T, s)
        if out.shape != want.shape:
            hint = (
                " (did you return all T + 1 values of alpha_bar?)" if out.numel() == T + 1 else ""
            )
            return f"cosine_betas({T}, {s}) has shape {tuple(out.shape)}, expected ({T},){hint}."
        got = out.detach().to("cpu", torch.float64)
        if not bool(torch.isfinite(got).all()):
            return f"cosine_betas({T}, {s}) contains inf or nan values."
        if got.min().item() < 0:
            k = int((got < 0).nonzero()[0]) + 1
            return (
                f"beta_{k} = {got[k - 1].item():.4g} is negative for T = {T}: is the square "
                "on the cosine, cos(.)**2, and not on its argument?"
            )
        if got[-1].item() > 0.999 + 1e-9:
            return f"beta_T = {got[-1].item():.4g} for T = {T}: clip every beta_t at 0.999."
        close = torch.isclose(got, want, rtol=1e-6, atol=1e-9)
        if not bool(close.all()):
            k = int((~close).nonzero()[0]) + 1
            return (
                f"for T = {T}, s = {s} you return beta_{k} = {got[k - 1].item():.6g}, the "
                f"schedule has {want[k - 1].item():.6g} (beta_1 is index 0; "
                "beta_t = 1 - alpha_bar_t / alpha_bar_{t-1} with alpha_bar_0 = 1)."
            )
    return None


def _cosine_betas_square_on_argument(T: int, s: float = 0.008) -> torch.Tensor:
    """The errata slip: cos((·)²) instead of cos²(·); ᾱ turns negative near the end."""
    u = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos(((u + s) / (1 + s) * math.pi / 2) ** 2)
    alpha_bar = f / f[0]
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=0.999)


EXERCISES = [
    Exercise(
        "ch01.cosine_betas", "cosine_betas", _test_cosine_betas, _cosine_betas_square_on_argument
    )
]
