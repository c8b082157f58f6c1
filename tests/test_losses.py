"""Specification of ddpm_lib.losses: KL, discretized decoder, ELBO (Chapter 5)."""

import math

import mpmath
import pytest
import torch

from ddpm_lib.diffusion import GaussianDiffusion
from ddpm_lib.losses import (
    discretized_gaussian_log_likelihood,
    elbo_bpd,
    normal_kl,
    prior_bpd,
    vb_term_bpd,
)
from ddpm_lib.schedules import linear_beta_schedule
from helpers import mc_tolerance


@pytest.mark.parametrize("m1, v1, m2, v2", [(0.3, 0.5, -0.2, 1.7), (1.0, 2.0, 1.0, 0.25)])
def test_closed_form_kl_matches_monte_carlo(m1, v1, m2, v2):
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


def test_kl_of_identical_gaussians_is_zero_and_otherwise_positive():
    m, lv = torch.randn(100, dtype=torch.float64), torch.randn(100, dtype=torch.float64)
    assert normal_kl(m, lv, m, lv).abs().max() < 1e-15
    assert (normal_kl(m, lv, m + 0.1, lv) > 0).all()


def test_decoder_probabilities_of_all_256_levels_sum_to_one():
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
    got = discretized_gaussian_log_likelihood(
        torch.tensor(x, dtype=torch.float64),
        torch.tensor(mean, dtype=torch.float64),
        torch.tensor(math.log(scale), dtype=torch.float64),
    ).item()
    # log_ndtr is accurate to ~1e-14 relative even deep in the tails.
    assert got == pytest.approx(_reference_log_prob(x, mean, scale), rel=1e-10)


def test_decoder_rejects_data_outside_minus_one_one():
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        discretized_gaussian_log_likelihood(torch.tensor([1.5]), torch.zeros(1), torch.zeros(1))


def test_prior_term_equals_the_gaussian_kl_to_standard_normal():
    d = GaussianDiffusion(linear_beta_schedule(1000))
    x0 = torch.tensor([[0.5, -1.0, 1.0]], dtype=torch.float64)
    ab = d.alphas_cumprod[-1].item()
    # KL(N(√ᾱ x, 1-ᾱ) || N(0, 1)) = ½ (ᾱ x² + (1-ᾱ) - 1 - log(1-ᾱ)) per dimension.
    per_dim = 0.5 * (ab * x0**2 - ab - math.log(1 - ab))
    assert prior_bpd(d, x0).item() == pytest.approx(per_dim.mean().item() / math.log(2), rel=1e-12)


@pytest.fixture
def small_diffusion():
    # T = 100 with the linear schedule's end points scaled so that ᾱ_T stays near zero.
    return GaussianDiffusion(linear_beta_schedule(100, 1e-3, 0.2))


def _eight_bit_point(shape=(1, 1, 4, 4), seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, shape, generator=gen).double() / 127.5 - 1


def test_kl_terms_vanish_for_the_true_posterior_mean_model(small_diffusion, oracle_eps):
    # For data that is a single point x*, x̂_0 = x* makes μ_θ the true posterior mean and,
    # with σ_t² = β̃_t, p_θ(x_{t-1}|x_t) = q(x_{t-1}|x_t,x_0): every KL is zero.
    d = small_diffusion
    x_star = _eight_bit_point()
    model = oracle_eps(d, x_star)
    t = torch.tensor([1, 50, 99])
    x0 = x_star.expand(3, -1, -1, -1)
    x_t = d.q_sample(x0, t)
    assert vb_term_bpd(d, model, x0, x_t, t).abs().max() < 1e-9


def test_elbo_of_true_posterior_mean_model_is_tighter_than_zero_model(small_diffusion, oracle_eps):
    d = small_diffusion
    x_star = _eight_bit_point()
    x0 = x_star.expand(2, -1, -1, -1)
    gen = torch.Generator().manual_seed(0)
    good = elbo_bpd(d, oracle_eps(d, x_star), x0, generator=gen, progress=False)
    bad = elbo_bpd(d, lambda x, t: torch.zeros_like(x), x0, generator=gen, progress=False)
    assert (good["total"] < bad["total"]).all()
    assert good["terms"][:, 1:].abs().max() < 1e-9
    assert torch.isfinite(good["total"]).all() and (good["total"] > 0).all()


def test_elbo_total_is_prior_plus_every_term(small_diffusion):
    d = small_diffusion
    x0 = _eight_bit_point((3, 1, 4, 4), seed=1)
    out = elbo_bpd(d, lambda x, t: 0.3 * x, x0, progress=False)
    assert out["terms"].shape == (3, 100) and out["mse"].shape == (3, 100)
    torch.testing.assert_close(out["total"], out["prior"] + out["terms"].sum(1))
