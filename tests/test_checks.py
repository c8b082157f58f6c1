"""Specification of ddpm_lib.checks: the z-scores behind the chapters' Monte Carlo checks.

eq-ch2-z: z_mean = (m̂ - m)/√(v/n) and z_var = (s² - v)/(v √(2/(n-1))), each about N(0, 1)
when n independent draws really have mean m and variance v (Chapter 2).
"""

import math
import statistics

import pytest
import torch

from ddpm_lib.checks import (
    ks_critical_value,
    ks_one_sample,
    ks_two_sample,
    moment_z_scores,
    z_tolerance,
)
from helpers import mc_tolerance

SAMPLES = [0.5, 1.5, -0.25, 2.0, 1.0, 0.75]


def test_z_scores_are_the_standardized_errors_of_the_sample_mean_and_variance():
    """eq-ch2-z: z_mean = (m̂ - m)/√(v/n), z_var = (s² - v)/(v √(2/(n-1))), s² with n - 1."""
    n, m, v = len(SAMPLES), 0.8, 0.7
    z = moment_z_scores(torch.tensor(SAMPLES, dtype=torch.float64), m, v)
    s2 = statistics.variance(SAMPLES)  # the unbiased sample variance
    expected_mean = (statistics.fmean(SAMPLES) - m) / math.sqrt(v / n)
    expected_var = (s2 - v) / (v * math.sqrt(2 / (n - 1)))
    # A handful of float64 operations on numbers of order one.
    assert z.mean == pytest.approx(expected_mean, rel=1e-12, abs=1e-14)
    assert z.variance == pytest.approx(expected_var, rel=1e-12, abs=1e-14)
    # The population variance (divisor n) would give another z: the divisor matters.
    wrong = (statistics.pvariance(SAMPLES) - v) / (v * math.sqrt(2 / (n - 1)))
    assert abs(z.variance - wrong) > 0.1


def test_z_scores_have_mean_0_and_variance_1_for_gaussian_draws_of_the_claimed_law():
    """eq-ch2-z: over many Gaussian samples of the claimed law both z-scores are standardized.

    z_mean is exactly N(0, 1). z_var = (χ²_k - k)/√(2k) with k = n - 1 has mean 0, variance 1
    and fourth moment 3 + 12/k, which sets the standard error of its sample variance.
    """
    gen = torch.Generator().manual_seed(0)
    reps, n, m, v = 4000, 25, -0.4, 2.5
    draws = m + math.sqrt(v) * torch.randn(reps, n, dtype=torch.float64, generator=gen)
    z = torch.tensor([moment_z_scores(row, m, v) for row in draws], dtype=torch.float64)
    z_mean, z_var = z[:, 0], z[:, 1]
    assert abs(z_mean.mean().item()) < mc_tolerance(1.0, reps)
    assert abs(z_mean.var().item() - 1) < mc_tolerance(math.sqrt(2.0), reps - 1)
    k = n - 1
    assert abs(z_var.mean().item()) < mc_tolerance(1.0, reps)
    assert abs(z_var.var().item() - 1) < mc_tolerance(math.sqrt(2 + 12 / k), reps - 1)


@pytest.mark.parametrize(
    "claimed_mean, claimed_var, flagged",
    [(0.3, 2.0, ()), (0.35, 2.0, ("mean",)), (0.3, 2.2, ("variance",))],
)
def test_z_scores_flag_a_wrong_claimed_mean_or_variance(claimed_mean, claimed_var, flagged):
    """eq-ch2-z: |z| < 5 for the true law of 10⁵ draws; a 0.05 shift of the mean (z ≈ 11) or a
    10% larger variance (z ≈ -20) gives |z| > 5."""
    gen = torch.Generator().manual_seed(1)
    n = 100_000
    x = 0.3 + math.sqrt(2.0) * torch.randn(n, dtype=torch.float64, generator=gen)
    z = moment_z_scores(x, claimed_mean, claimed_var)
    assert (abs(z.mean) > 5) == ("mean" in flagged)
    assert (abs(z.variance) > 5) == ("variance" in flagged)


def test_fewer_than_two_samples_are_rejected():
    with pytest.raises(ValueError, match="at least 2 samples"):
        moment_z_scores(torch.tensor([1.0]), 0.0, 1.0)


@pytest.mark.parametrize("variance", [0.0, -1.0, float("nan")])
def test_a_claimed_variance_that_is_not_positive_is_rejected(variance):
    with pytest.raises(ValueError, match="must be positive"):
        moment_z_scores(torch.tensor([1.0, 2.0, 3.0]), 0.0, variance)


def test_z_tolerance_gives_each_of_m_comparisons_the_share_alpha_over_m():
    """Bonferroni: P(|z| > z_tol) = alpha/m for a standard normal z, so the family's is <= alpha."""
    for m in (1, 8, 160):
        z_tol = z_tolerance(m, family_alpha=1e-3)
        two_sided = math.erfc(z_tol / math.sqrt(2))  # P(|z| > z_tol), computed independently
        assert two_sided == pytest.approx(1e-3 / m, rel=1e-9)


def test_z_tolerance_rejects_an_empty_family_and_a_level_outside_0_1():
    with pytest.raises(ValueError, match="at least one"):
        z_tolerance(0)
    with pytest.raises(ValueError, match="family_alpha"):
        z_tolerance(3, family_alpha=1.5)


def test_ks_two_sample_is_the_largest_gap_between_the_empirical_cdfs():
    # a's CDF jumps at 0, 1, 2; b's at 1.5, 2.5, 3.5: after x = 1, F_a = 2/3 and F_b = 0.
    a, b = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.5, 2.5, 3.5])
    assert ks_two_sample(a, b) == pytest.approx(2 / 3, abs=1e-15)
    assert ks_two_sample(a, a) == 0.0


def test_ks_one_sample_takes_the_gap_on_both_sides_of_each_step():
    # One point at the mean: F jumps from 0 to 1 where Φ = 1/2, so the distance is 1/2.
    assert ks_one_sample(torch.tensor([0.0]), 0.0, 1.0) == pytest.approx(0.5, abs=1e-15)
    # Two points at ±1: the gap just below +1 is Φ(1) - 1/2.
    phi_1 = 0.5 * math.erfc(-1 / math.sqrt(2))
    assert ks_one_sample(torch.tensor([-1.0, 1.0]), 0.0, 1.0) == pytest.approx(phi_1 - 0.5)


def test_ks_one_sample_of_normal_draws_rarely_exceeds_the_critical_value():
    """Under the null, P(D_n > c(α)/√n) ≈ α; at α = 0.5 a large sample should not pass c(0.001)."""
    gen = torch.Generator().manual_seed(0)
    x = 0.3 + 2.0 * torch.randn(20_000, generator=gen, dtype=torch.float64)
    assert ks_one_sample(x, 0.3, 2.0) < ks_critical_value(1e-3, x.numel())
    # The wrong std is caught: the CDFs differ by about 0.07 at the quartiles.
    assert ks_one_sample(x, 0.3, 2.4) > ks_critical_value(1e-3, x.numel())


def test_ks_critical_value_is_c_alpha_over_root_n_and_the_two_sample_form():
    c = math.sqrt(-math.log(1e-3 / 2) / 2)  # 1.9495
    assert ks_critical_value(1e-3, 100) == pytest.approx(c / 10)
    assert ks_critical_value(1e-3, 100, 100) == pytest.approx(c * math.sqrt(2 / 100))


def test_energy_distance_is_the_average_over_distinct_pairs():
    from ddpm_lib.checks import energy_distance

    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(7, 2, generator=gen), torch.randn(5, 2, generator=gen) + 1

    def pairs(x, y, same):
        d = [(x[i] - y[j]).norm() for i in range(len(x)) for j in range(len(y))]
        if same:
            d = [(x[i] - x[j]).norm() for i in range(len(x)) for j in range(len(x)) if i != j]
        return sum(d) / len(d)

    want = 2 * pairs(a, b, False) - pairs(a, a, True) - pairs(b, b, True)
    assert abs(energy_distance(a, b, chunk=3) - want.item()) < 1e-6


def test_energy_distance_of_two_samples_of_one_law_averages_to_zero():
    """Unbiased: over R independent pairs of samples of N(0, I), the mean estimate is within
    5 standard errors (their spread / √R) of 0."""
    from ddpm_lib.checks import energy_distance

    gen = torch.Generator().manual_seed(1)
    same = torch.tensor(
        [energy_distance(torch.randn(50, 2, generator=gen), torch.randn(50, 2, generator=gen))
         for _ in range(200)]
    )  # fmt: skip
    se = same.std() / len(same) ** 0.5
    assert abs(same.mean()) < 5 * se
