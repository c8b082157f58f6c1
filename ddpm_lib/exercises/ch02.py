"""Chapter 2's coding exercises (ddpm_lib.exercises)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ddpm_lib.diffusion import GaussianDiffusion
from ddpm_lib.exercises import Exercise
from ddpm_lib.schedules import linear_beta_schedule

F64 = torch.float64


def _jump_reference(x_s: torch.Tensor, ab_s: torch.Tensor, ab_t: torch.Tensor, noise):
    """x_t = √(ᾱ_t/ᾱ_s) x_s + √(1 - ᾱ_t/ᾱ_s) ε: a draw of q(x_t | x_s) (Chapter 2, Exercise 1)."""
    ratio = ab_t / ab_s
    return ratio.sqrt() * x_s + (1 - ratio).sqrt() * noise


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, rtol=1e-6, atol=1e-6)


def _test_jump(fn: Callable) -> str | None:
    """Check ``jump(x_s, alpha_bar_s, alpha_bar_t, noise)`` against the library and the maths.

    Three cases on the linear schedule (T = 1000), shapes [4, 1, 3, 3] in float64: from x_0
    (ᾱ_s = 1) to step 300, which must equal ``GaussianDiffusion.q_sample``; from step 100 to
    step 300; and a batch whose examples have their own steps (ᾱ as [4, 1, 1, 1] tensors).
    """
    diffusion = GaussianDiffusion(linear_beta_schedule(1000))
    ab = diffusion.alphas_cumprod  # entry i is ᾱ at book step i + 1
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(4, 1, 3, 3, dtype=F64, generator=gen) * 2 - 1
    noise = torch.randn(x.shape, dtype=F64, generator=gen)
    one = torch.tensor(1.0, dtype=F64)

    out = fn(x.clone(), one, ab[299], noise.clone())
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        return f"from x_0 to t = 300 you return {shape}; expected a tensor shaped like x_s."
    expected = diffusion.q_sample(x, 299, noise)
    if not _close(out, expected):
        std_slip = ab[299].sqrt() * x + (1 - ab[299]) * noise
        if _close(out, std_slip):
            return (
                "you multiply the noise by 1 - alpha_bar, the variance; "
                "the standard deviation is its square root."
            )
        if _close(out, ab[299] * x + (1 - ab[299]).sqrt() * noise):
            return "the signal factor is sqrt(alpha_bar_t / alpha_bar_s), with the square root."
        return (
            "with alpha_bar_s = 1 (from x_0) to t = 300 your x_t differs from q_sample's by up "
            f"to {(out - expected).abs().max().item():.3g}."
        )

    s, t = 100, 300  # book steps
    out = fn(x.clone(), ab[s - 1], ab[t - 1], noise.clone())
    expected = _jump_reference(x, ab[s - 1], ab[t - 1], noise)
    if not _close(out, expected):
        if _close(out, diffusion.q_sample(x, t - 1, noise)):
            return (
                "from x_s you use alpha_bar_t alone; the first s steps have already "
                "happened, so the factor is alpha_bar_t / alpha_bar_s."
            )
        return (
            f"from s = {s} to t = {t} your x_t differs from "
            "sqrt(ratio) x_s + sqrt(1 - ratio) noise (ratio = alpha_bar_t / alpha_bar_s) "
            f"by up to {(out - expected).abs().max().item():.3g}."
        )

    steps_s, steps_t = torch.tensor([1, 10, 200, 500]), torch.tensor([2, 400, 600, 1000])
    ab_s = ab[steps_s - 1].view(-1, 1, 1, 1)
    ab_t = ab[steps_t - 1].view(-1, 1, 1, 1)
    out = fn(x.clone(), ab_s, ab_t, noise.clone())
    expected = _jump_reference(x, ab_s, ab_t, noise)
    if not isinstance(out, torch.Tensor) or out.shape != x.shape or not _close(out, expected):
        return (
            "with a different step for each example (alpha_bar tensors of shape [4, 1, 1, 1]) "
            "your x_t is wrong; let the alpha_bar tensors broadcast against x_s."
        )
    return None


def _jump_mistake(x_s, alpha_bar_s, alpha_bar_t, noise):
    """The slip of Chapter 2's warning: 1 - ᾱ_t/ᾱ_s, the variance, used as the std."""
    ratio = alpha_bar_t / alpha_bar_s
    return ratio.sqrt() * x_s + (1 - ratio) * noise


EXERCISES = [Exercise("ch02.jump", "jump", _test_jump, _jump_mistake)]
