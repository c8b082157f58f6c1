"""Specification of ddpm_lib.gaussian: the Gaussian KL and the discretized decoder (Chapter 5)."""

import math

import mpmath
import numpy as np
import pytest
import torch

from ddpm_lib.gaussian import discretized_gaussian_log_likelihood, normal_kl
from helpers import mc_tolerance


@pytest.mark.parametrize("m1, v1, m2, v2", [(0.3, 0.5, -0.2, 1.7), (1.0, 2.0, 1.0, 0.25)])
def test_closed_form_kl_matches_monte_carlo(m1, v1, m2, v2):
    """eq-ch5-kl: normal_kl is E_{x~N1}[log N1(x) - log N2(x)], within 5 Monte Carlo SE."""
    # KL = E_{x~N1}[log N1(x) - log N2(x)]; the estimate's standard error is the sample
    # standard deviation of the log ratio over √n.
    gen = torch.Generator().manual_seed(0)
    n = 400_000
    x = m1 + math.sqrt(v1) * torch.randn(n, dtype=torch.float64, generator=gen)

    def log_normal(x, m, v):
        return -0.5 * (math.log(2 * math.pi * v) + (x - m) ** 2 / v)

    log_ratio = log_normal(x, m1, v1) - log_normal(x, m2, v2)
    closed = normal_kl(
        torch.tensor(m1), torch.tensor(math.log(v1)), torch.tensor(m2), torch.tensor(math.log(v2))
    ).item()
    assert abs(log_ratio.mean().item() - closed) < mc_tolerance(log_ratio.std().item(), n)


@pytest.mark.parametrize(
    "m1, v1, m2, v2", [(0.3, 0.5, -0.2, 1.7), (1.0, 2.0, 1.0, 0.25), (-2.0, 1e-4, 0.5, 3.0)]
)
def test_closed_form_kl_equals_the_expected_log_ratio_by_exact_quadrature(m1, v1, m2, v2):
    """eq-ch5-kl: log σ2/σ1 + (σ1² + (μ1-μ2)²)/(2σ2²) - ½ = E_{x~N1}[log N1(x) - log N2(x)].

    The log ratio is a quadratic in x, so Gauss-Hermite quadrature with 3 nodes gives its
    expectation exactly; the comparison is float64 rounding (rtol 1e-12).
    """
    z, w = np.polynomial.hermite.hermgauss(3)
    x = m1 + math.sqrt(2 * v1) * torch.from_numpy(z)
    weights = torch.from_numpy(w) / math.sqrt(math.pi)

    def log_normal(x, m, v):
        return -0.5 * (math.log(2 * math.pi * v) + (x - m) ** 2 / v)

    expected = (weights * (log_normal(x, m1, v1) - log_normal(x, m2, v2))).sum().item()
    f64 = dict(dtype=torch.float64)
    lv1, lv2 = torch.tensor(math.log(v1), **f64), torch.tensor(math.log(v2), **f64)
    got = normal_kl(torch.tensor(m1, **f64), lv1, torch.tensor(m2, **f64), lv2).item()
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-15)
    # Plausible slips give other numbers: the arguments swapped (the KL is not symmetric), or
    # log(σ2²/σ1²) without its ½.
    swapped = normal_kl(torch.tensor(m2, **f64), lv2, torch.tensor(m1, **f64), lv1).item()
    assert abs(swapped - expected) > 1e-3 * abs(expected)
    assert abs((got + 0.5 * math.log(v2 / v1)) - expected) > 1e-3 * abs(expected)


def test_kl_of_identical_gaussians_is_zero_and_otherwise_positive():
    """eq-ch5-kl: KL(N ‖ N) = 0, and moving the second mean makes it positive."""
    m, lv = torch.randn(100, dtype=torch.float64), torch.randn(100, dtype=torch.float64)
    assert normal_kl(m, lv, m, lv).abs().max() < 1e-15
    assert (normal_kl(m, lv, m + 0.1, lv) > 0).all()


def test_decoder_probabilities_of_all_256_levels_sum_to_one():
    """eq-ch5-decoder: the bins tile the line (end bins reach ±∞), so the 256 masses sum to 1."""
    levels = torch.arange(256, dtype=torch.float64) / 127.5 - 1
    for mean, log_scale in [(0.0, math.log(0.1)), (0.93, math.log(0.004)), (-2.0, 0.5)]:
        logp = discretized_gaussian_log_likelihood(
            levels, torch.tensor(mean, dtype=torch.float64), torch.tensor(log_scale)
        )
        assert logp.exp().sum().item() == pytest.approx(1.0, abs=1e-12)


def _reference_log_prob(x: float, mean: float, scale: float) -> float:
    """log P(level x) by 50-digit arithmetic, from the definition of the bins."""
    mpmath.mp.dps = 50
    half = mpmath.mpf(1) / 255
    lo = -mpmath.inf if x <= -1 else (mpmath.mpf(x) - half - mean) / scale
    hi = mpmath.inf if x >= 1 else (mpmath.mpf(x) + half - mean) / scale
    if lo > 0:  # Φ(b) - Φ(a) = Φ(-a) - Φ(-b): 1 - 1e-4000 does not fit in 50 digits, 1e-4000 does
        lo, hi = -hi, -lo
    return float(mpmath.log(mpmath.ncdf(hi) - mpmath.ncdf(lo)))


@pytest.mark.parametrize(
    "x, mean, scale",
    [
        (0.0, 0.01, 0.05),  # the middle
        (-1.0, -0.98, 0.02),  # the left edge bin reaches -∞
        (1.0, 0.2, 0.3),  # the right edge bin reaches +∞
        (0.6, -0.9, 0.01),  # far in the upper tail: naive Φ(b)-Φ(a) would give log 0
        (-0.6, 0.9, 0.01),  # far in the lower tail
    ],
)
def test_decoder_log_likelihood_matches_high_precision_reference(x, mean, scale):
    """eq-ch5-decoder: log ∫ N(x; mean, scale²) over the bin δ_-..δ_+, by 50-digit arithmetic."""
    got = discretized_gaussian_log_likelihood(
        torch.tensor(x, dtype=torch.float64),
        torch.tensor(mean, dtype=torch.float64),
        torch.tensor(math.log(scale), dtype=torch.float64),
    ).item()
    # log_ndtr is accurate to ~1e-14 relative even deep in the tails.
    assert got == pytest.approx(_reference_log_prob(x, mean, scale), rel=1e-10)


def test_kl_accepts_python_floats_for_the_second_gaussian():
    m, lv = (
        torch.tensor([0.3, -1.2], dtype=torch.float64),
        torch.tensor([0.1, -0.5], dtype=torch.float64),
    )
    as_floats = normal_kl(m, lv, 0.0, 0.0)
    as_tensors = normal_kl(
        m, lv, torch.zeros(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    )
    assert as_floats.dtype == torch.float64
    torch.testing.assert_close(as_floats, as_tensors, rtol=0, atol=0)


def test_kl_refuses_python_floats_for_the_first_gaussian_and_says_so():
    with pytest.raises(TypeError, match="only the second may be Python floats"):
        normal_kl(0.0, 0.0, torch.zeros(1), torch.zeros(1))
