"""Statistics behind the chapters' Monte Carlo checks: is a sample consistent with a law?

A chapter that claims "these draws have mean m and variance v" checks it with the z-scores of
the sample mean and the sample variance (Chapter 2): each is about N(0, 1) when the claim
holds, so |z| < 5 fails by chance about once in 1.7 million checks.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

Tensor = torch.Tensor


class MomentZScores(NamedTuple):
    """z-scores of a sample's mean and variance against the claimed ones."""

    mean: float
    variance: float


def moment_z_scores(samples: Tensor, mean: float, variance: float) -> MomentZScores:
    """z_mean = (m̂ - m)/√(v/n) and z_var = (s² - v)/(v √(2/(n-1))) (eq-ch2-z), Chapter 2.

    ``samples`` is a 1-D tensor of n independent draws claimed to have ``mean`` and
    ``variance``. The variance's standard error √(2/(n-1)) v is that of a Gaussian sample
    (its fourth moment is 3v²); for other laws use the law's own fourth moment.
    """
    x = samples.detach().double().flatten()
    n = x.numel()
    if n < 2:
        raise ValueError(f"need at least 2 samples for a variance, got {n}")
    if not variance > 0:
        raise ValueError(f"the claimed variance must be positive, got {variance}")
    z_mean = (x.mean().item() - mean) / math.sqrt(variance / n)
    z_var = (x.var().item() - variance) / (variance * math.sqrt(2 / (n - 1)))
    return MomentZScores(z_mean, z_var)


def z_tolerance(m: int, family_alpha: float = 1e-3) -> float:
    """The |z| above which one of ``m`` standardized errors is flagged (Bonferroni), Chapters 1-2.

    With m exact N(0, 1) errors, P(any |z| > z_tol) <= family_alpha when
    P(|z| > z_tol) = family_alpha / m for each: z_tol = Φ⁻¹(1 - family_alpha / (2m)).
    """
    if m < 1:
        raise ValueError(f"need at least one comparison, got m={m}")
    if not 0.0 < family_alpha < 1.0:
        raise ValueError(f"family_alpha must be in (0, 1), got {family_alpha}")
    q = torch.tensor(1 - family_alpha / (2 * m), dtype=torch.float64)
    return torch.special.ndtri(q).item()


def ks_two_sample(a: Tensor, b: Tensor) -> float:
    """Kolmogorov–Smirnov distance sup_x |F_a(x) - F_b(x)| of two 1-D samples (Chapter 2).

    Both empirical CDFs are step functions, so the supremum is reached at a sample point.
    """
    a, b = a.detach().double().flatten().sort().values, b.detach().double().flatten().sort().values
    if a.numel() == 0 or b.numel() == 0:
        raise ValueError("both samples must be non-empty")
    points = torch.cat([a, b])
    f_a = torch.searchsorted(a, points, right=True).double() / a.numel()
    f_b = torch.searchsorted(b, points, right=True).double() / b.numel()
    return (f_a - f_b).abs().max().item()


def ks_one_sample(a: Tensor, mean: float, std: float) -> float:
    """Kolmogorov–Smirnov distance sup_x |F_a(x) - Φ((x - mean)/std)| to a normal law (Chapter 2).

    Just before and at each sorted point x_(k) the empirical CDF is (k-1)/n and k/n.
    """
    a = a.detach().double().flatten().sort().values
    n = a.numel()
    if n == 0:
        raise ValueError("the sample must be non-empty")
    if not std > 0:
        raise ValueError(f"std must be positive, got {std}")
    cdf = torch.special.ndtr((a - mean) / std)
    k = torch.arange(1, n + 1, dtype=cdf.dtype)
    return torch.maximum(k / n - cdf, cdf - (k - 1) / n).max().item()


def ks_critical_value(alpha: float, n: int, m: int | None = None) -> float:
    """The distance a KS test at level ``alpha`` rejects above, for large samples (Chapter 2).

    One sample of size n: c(α)/√n with c(α) = √(-ln(α/2)/2) (the asymptotic Kolmogorov bound).
    Two samples of sizes n and m: c(α) √((n + m)/(n m)).
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if n < 1 or (m is not None and m < 1):
        raise ValueError(f"sample sizes must be positive, got n={n}, m={m}")
    c = math.sqrt(-math.log(alpha / 2) / 2)
    return c / math.sqrt(n) if m is None else c * math.sqrt((n + m) / (n * m))


def energy_distance(a: Tensor, b: Tensor, chunk: int = 2048) -> float:
    """The energy distance 2E‖X-Y‖ - E‖X-X'‖ - E‖Y-Y'‖ between the laws of two samples (Chapter 8).

    ``a`` [n, d] and ``b`` [m, d] are independent draws; each expectation is the average over
    distinct pairs (a U-statistic), so the estimate is unbiased and about 0 (either sign) when
    the two laws are equal. It is ≥ 0 for the laws themselves and 0 only when they are equal,
    so it measures how far a sampler lands from a target in any dimension; compare it with
    the value for two samples of the target itself.
    """
    a, b = a.detach().double().flatten(1), b.detach().double().flatten(1)
    if len(a) < 2 or len(b) < 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"need two samples [n ≥ 2, d] of one d, got {a.shape} and {b.shape}")

    def mean_distance(x: Tensor, y: Tensor, same: bool) -> float:
        total = 0.0
        for i in range(0, len(x), chunk):
            total += torch.cdist(x[i : i + chunk], y).sum().item()
        pairs = len(x) * (len(y) - 1) if same else len(x) * len(y)
        return total / pairs  # the diagonal of x against itself adds zeros

    return 2 * mean_distance(a, b, False) - mean_distance(a, a, True) - mean_distance(b, b, True)
