"""Specification of ddpm_lib.elbo: the bound over the chain in bits/dim (Chapter 5)."""

import math

import pytest
import torch

from ddpm_lib.diffusion import GaussianDiffusion
from ddpm_lib.elbo import elbo_bpd, prior_bpd, vb_term_bpd
from ddpm_lib.schedules import linear_beta_schedule


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
    assert (good.total < bad.total).all()
    assert good.terms[:, 1:].abs().max() < 1e-9
    assert torch.isfinite(good.total).all() and (good.total > 0).all()


def test_elbo_total_is_prior_plus_every_term(small_diffusion):
    d = small_diffusion
    x0 = _eight_bit_point((3, 1, 4, 4), seed=1)
    out = elbo_bpd(d, lambda x, t: 0.3 * x, x0, progress=False)
    assert out.terms.shape == (3, 100) and out.mse.shape == (3, 100)
    torch.testing.assert_close(out.total, out.prior + out.terms.sum(1))


def test_elbo_refuses_images_outside_minus_one_one(small_diffusion):
    x0 = torch.full((1, 1, 2, 2), 1.5, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        elbo_bpd(small_diffusion, lambda x, t: torch.zeros_like(x), x0, progress=False)
