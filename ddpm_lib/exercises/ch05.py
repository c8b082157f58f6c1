"""Chapter 5's coding exercises (ddpm_lib.exercises)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ddpm_lib.exercises import Exercise
from ddpm_lib.gaussian import normal_kl

Tensor = torch.Tensor


def _kl_cases() -> list[tuple[Tensor, Tensor, Tensor, Tensor]]:
    """(mean1, var1, mean2, var2) float64 [5, 3] batches: equal variances, a narrow first
    Gaussian, a wide one, and the posterior-vs-reverse-step widths of Chapter 5."""
    gen = torch.Generator().manual_seed(0)
    cases = []
    for scale1, scale2 in [(1.0, 1.0), (0.1, 2.0), (3.0, 0.5), (1e-2, 1.1e-2)]:
        m1 = torch.randn(5, 3, dtype=torch.float64, generator=gen)
        m2 = torch.randn(5, 3, dtype=torch.float64, generator=gen)
        u1 = torch.rand(5, 3, dtype=torch.float64, generator=gen) + 0.5
        u2 = torch.rand(5, 3, dtype=torch.float64, generator=gen) + 0.5
        v1 = scale1**2 * u1
        v2 = v1 if scale1 == scale2 else scale2**2 * u2
        cases.append((m1, v1, m2, v2))
    return cases


def _test_gaussian_kl(fn: Callable) -> str | None:
    """KL(N(mean1, var1) ‖ N(mean2, var2)) per element, in nats (eq-ch5-kl).

    Compared with ``ddpm_lib.gaussian.normal_kl`` (which takes log variances) on float64
    batches [5, 3], elementwise, to rtol 1e-9.
    """
    for m1, v1, m2, v2 in _kl_cases():
        want = normal_kl(m1, v1.log(), m2, v2.log())
        got = fn(m1.clone(), v1.clone(), m2.clone(), v2.clone())
        if not isinstance(got, Tensor) or got.shape != want.shape:
            shape = tuple(got.shape) if isinstance(got, Tensor) else type(got).__name__
            return f"you return {shape}; the KL is elementwise, shaped like the means [5, 3]."
        if torch.allclose(got, want, rtol=1e-9, atol=1e-12):
            continue
        if torch.allclose(got, 2 * want, rtol=1e-9, atol=1e-12):
            return "your KL is twice the right one: every term of eq-ch5-kl carries a 1/2."
        swapped = normal_kl(m2, v2.log(), m1, v1.log())
        if torch.allclose(got, swapped, rtol=1e-9, atol=1e-12):
            return (
                "you computed KL(N(mean2, var2) || N(mean1, var1)); the KL is not symmetric: "
                "the expectation is under the first Gaussian."
            )
        if torch.allclose(got, normal_kl(m1, 2 * v1.log(), m2, 2 * v2.log()), rtol=1e-9):
            return "you treated var1 and var2 as standard deviations; they are variances."
        if torch.allclose(got, want + 0.5 * (v2 / v1).log(), rtol=1e-9, atol=1e-12):
            return (
                "your log term is log(var2/var1); eq-ch5-kl has log(sigma2/sigma1), "
                "which is half of that."
            )
        if (got < -1e-12).any():
            return "your KL is negative somewhere; a KL divergence is never below 0."
        k = int((got - want).abs().argmax())
        return (
            f"for mean1 = {m1.flatten()[k]:.3g}, var1 = {v1.flatten()[k]:.3g}, mean2 = "
            f"{m2.flatten()[k]:.3g}, var2 = {v2.flatten()[k]:.3g} you return "
            f"{got.flatten()[k]:.6g}; eq-ch5-kl gives {want.flatten()[k]:.6g}."
        )
    return None


def _gaussian_kl_mistake(mean1: Tensor, var1: Tensor, mean2: Tensor, var2: Tensor) -> Tensor:
    """A plausible slip: the log ratio of standard deviations written with variances."""
    return torch.log(var2 / var1) + (var1 + (mean1 - mean2) ** 2) / (2 * var2) - 0.5


EXERCISES = [
    Exercise("ch05.gaussian_kl", "gaussian_kl", _test_gaussian_kl, _gaussian_kl_mistake),
]
