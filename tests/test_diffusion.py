"""Specification of ddpm_lib.diffusion.GaussianDiffusion (Chapters 1-4)."""

import math

import pytest
import torch

from ddpm_lib.diffusion import GaussianDiffusion
from ddpm_lib.schedules import get_beta_schedule
from helpers import mc_tolerance

T = 1000


@pytest.fixture(params=["linear", "cosine"])
def diffusion(request):
    return GaussianDiffusion(get_beta_schedule(request.param, T))


def test_lineage_tensors_have_shape_T_and_float64():
    d = GaussianDiffusion(get_beta_schedule("linear", T))
    for name in (
        "betas",
        "alphas",
        "alphas_cumprod",
        "alphas_cumprod_prev",
        "sqrt_alphas_cumprod",
        "sqrt_one_minus_alphas_cumprod",
        "sqrt_recip_alphas_cumprod",
        "sqrt_recipm1_alphas_cumprod",
        "posterior_variance",
        "posterior_log_variance_clipped",
        "posterior_mean_coef1",
        "posterior_mean_coef2",
    ):
        tensor = getattr(d, name)
        assert tensor.shape == (T,) and tensor.dtype == torch.float64, name
    assert d.num_timesteps == T


def test_recurrence_moments_by_induction_equal_closed_form(diffusion):
    # Mean and variance of x_t | x_0 through the recurrence: m_t = √α_t m_{t-1},
    # v_t = α_t v_{t-1} + β_t. Chapter 2 proves these equal √ᾱ_t and 1-ᾱ_t.
    m, v = 1.0, 0.0
    means, variances = [], []
    for beta in diffusion.betas.tolist():
        m, v = math.sqrt(1 - beta) * m, (1 - beta) * v + beta
        means.append(m)
        variances.append(v)
    x0 = torch.ones(T, 1, dtype=torch.float64)
    mean, var, _ = diffusion.q_mean_variance(x0, torch.arange(T))
    torch.testing.assert_close(mean[:, 0], torch.tensor(means, dtype=torch.float64))
    torch.testing.assert_close(var[:, 0], torch.tensor(variances, dtype=torch.float64))


def test_iterated_q_step_matches_q_sample_in_mean_and_variance(diffusion):
    torch.manual_seed(0)
    n = 20_000
    x0 = torch.tensor([-1.0, 0.3, 0.9], dtype=torch.float64).expand(n, 3)
    x = x0.clone()
    checked = 0
    for i in range(T):
        x = diffusion.q_step(x, i)
        steps = i + 1
        if steps not in (1, 50, 400, T):
            continue
        checked += 1
        jump = diffusion.q_sample(x0, i)
        ab = diffusion.alphas_cumprod[i].item()
        var = 1 - ab
        # Two independent samples of n draws: the difference of their means has standard
        # deviation √(2 var/n); that of their variances √(2 · 2 var²/(n-1)) for Gaussians.
        assert (x.mean(0) - jump.mean(0)).abs().max() < mc_tolerance(math.sqrt(2 * var), n)
        assert (x.var(0) - jump.var(0)).abs().max() < mc_tolerance(2 * var, n - 1)
        # And the iterated chain against the closed form √ᾱ_t x_0 and 1-ᾱ_t.
        assert (x.mean(0) - math.sqrt(ab) * x0[0]).abs().max() < mc_tolerance(math.sqrt(var), n)
        assert (x.var(0) - var).abs().max() < mc_tolerance(math.sqrt(2) * var, n - 1)
    assert checked == 4


def test_q_step_from_x0_at_index_0_is_the_book_step_1():
    d = GaussianDiffusion(get_beta_schedule("linear", T))
    x0, eps = torch.randn(4, 2, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    torch.testing.assert_close(d.q_step(x0, 0, eps), d.q_sample(x0, 0, eps))


def test_posterior_equals_gaussian_conditioning_of_the_joint(diffusion):
    # Given x_0, (x_{t-1}, x_t) is jointly Gaussian: x_{t-1} ~ N(√ᾱ_{t-1} x_0, a) with
    # a = 1-ᾱ_{t-1}, x_t = √α_t x_{t-1} + √β_t ε, so Cov = √α_t a and Var(x_t) = α_t a + β_t.
    # Conditioning x_{t-1} on x_t gives the posterior, independently of completing the square.
    torch.manual_seed(1)
    t = torch.arange(1, T)
    x0 = torch.rand(T - 1, 1, dtype=torch.float64) * 2 - 1
    x_t = torch.randn(T - 1, 1, dtype=torch.float64)
    ab = diffusion.alphas_cumprod[t].unsqueeze(1)
    ab_prev = diffusion.alphas_cumprod[t - 1].unsqueeze(1)
    alpha = diffusion.alphas[t].unsqueeze(1)
    beta = diffusion.betas[t].unsqueeze(1)
    a = 1 - ab_prev
    var_t = alpha * a + beta
    cov = alpha.sqrt() * a
    cond_mean = ab_prev.sqrt() * x0 + cov / var_t * (x_t - ab.sqrt() * x0)
    cond_var = a - cov**2 / var_t
    mean, var, _ = diffusion.q_posterior_mean_variance(x0, x_t, t)
    torch.testing.assert_close(mean, cond_mean, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(var, cond_var, rtol=1e-10, atol=1e-15)


def test_posterior_at_book_step_1_is_x0_with_zero_variance():
    d = GaussianDiffusion(get_beta_schedule("linear", T))
    x0, x1 = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    mean, var, _ = d.q_posterior_mean_variance(x0, x1, 0)
    torch.testing.assert_close(mean, x0)
    assert (var == 0).all()


def test_posterior_variance_never_exceeds_beta(diffusion):
    assert (diffusion.posterior_variance <= diffusion.betas).all()


def test_x0_eps_v_and_score_conversions_round_trip():
    d = GaussianDiffusion(get_beta_schedule("linear", T))
    torch.manual_seed(2)
    t = torch.arange(0, T, 37)
    x0 = torch.rand(len(t), 6, dtype=torch.float64) * 2 - 1
    eps = torch.randn_like(x0)
    x_t = d.q_sample(x0, t, eps)
    # Conditioning grows like 1/√ᾱ_T ≈ 160, so float64 round trips keep about 1e-12.
    close = dict(rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(d.predict_x0_from_eps(x_t, t, eps), x0, **close)
    torch.testing.assert_close(d.predict_eps_from_x0(x_t, t, x0), eps, **close)
    v = d.get_v(x0, eps, t)
    torch.testing.assert_close(d.predict_x0_from_v(x_t, t, v), x0, **close)
    torch.testing.assert_close(d.predict_eps_from_v(x_t, t, v), eps, **close)
    torch.testing.assert_close(d.score_to_eps(d.eps_to_score(eps, t), t), eps, **close)


def test_score_of_the_eps_form_is_the_gradient_of_log_q_xt_given_x0():
    d = GaussianDiffusion(get_beta_schedule("linear", T))
    t = torch.tensor([10, 500])
    x0 = torch.tensor([[0.2, -0.4], [0.9, 0.1]], dtype=torch.float64)
    x_t = d.q_sample(x0, t).requires_grad_(True)
    mean, var, _ = d.q_mean_variance(x0, t)
    log_q = (-0.5 * (x_t - mean) ** 2 / var).sum()
    (grad,) = torch.autograd.grad(log_q, x_t)
    eps = d.predict_eps_from_x0(x_t.detach(), t, x0)
    torch.testing.assert_close(d.eps_to_score(eps, t), grad, rtol=1e-10, atol=1e-12)


def test_unclipped_model_mean_equals_the_eps_form_of_mu():
    # μ_θ = (x_t - β_t/√(1-ᾱ_t) ε̂)/√α_t when x̂_0 is not clipped (Chapter 4).
    d = GaussianDiffusion(get_beta_schedule("cosine", T))
    torch.manual_seed(3)
    x_t = torch.randn(8, 3, dtype=torch.float64)
    t = torch.tensor([0, 1, 5, 100, 400, 700, 998, 999])

    def model(x, t):
        return torch.tanh(x) * (t[:, None] + 1) / T

    eps = model(x_t, t)
    out = d.p_mean_variance(model, x_t, t, clip_denoised=False)
    beta, ab = d.betas[t][:, None], d.alphas_cumprod[t][:, None]
    expected = (x_t - beta / (1 - ab).sqrt() * eps) / (1 - beta).sqrt()
    torch.testing.assert_close(out.mean, expected, rtol=1e-9, atol=1e-9)


def test_the_two_variance_choices_give_posterior_variance_and_beta():
    d = GaussianDiffusion(get_beta_schedule("linear", T))
    x_t = torch.zeros(3, 2, dtype=torch.float64)
    t = torch.tensor([1, 500, 999])

    def model(x, t):
        return torch.zeros_like(x)

    small = d.p_mean_variance(model, x_t, t, variance="fixed_small").variance[:, 0]
    large = d.p_mean_variance(model, x_t, t, variance="fixed_large").variance[:, 0]
    torch.testing.assert_close(small, d.posterior_variance[t])
    torch.testing.assert_close(large, d.betas[t])


def test_p_sample_adds_no_noise_at_the_last_step():
    d = GaussianDiffusion(get_beta_schedule("linear", T))
    x1 = torch.randn(4, 2, dtype=torch.float64)

    def model(x, t):
        return 0.5 * x

    out = d.p_sample(model, x1, 0, noise=torch.randn_like(x1))
    torch.testing.assert_close(out.sample, d.p_mean_variance(model, x1, 0).mean)


def test_clipping_keeps_predicted_x0_in_data_range():
    d = GaussianDiffusion(get_beta_schedule("linear", T))
    x_t = torch.full((2, 4), 5.0)

    def model(x, t):
        return -x

    out = d.p_mean_variance(model, x_t, torch.tensor([10, 900]), clip_denoised=True)
    assert out.pred_x0.abs().max() <= 1.0


@pytest.mark.parametrize("mean_type", ["eps", "x0", "v"])
def test_training_loss_targets_the_chosen_parameterization(mean_type):
    d = GaussianDiffusion(get_beta_schedule("linear", T), model_mean_type=mean_type)
    x_star = torch.tensor([[0.5, -0.25]], dtype=torch.float64)
    x0 = x_star.expand(16, 2)

    def oracle(x_t, t):
        eps = d.predict_eps_from_x0(x_t, t, x0)
        return {"eps": eps, "x0": x0, "v": d.get_v(x0, eps, t)}[mean_type]

    def wrong(x_t, t):
        return torch.zeros_like(x_t)

    generator = torch.Generator().manual_seed(0)
    loss = d.training_loss(oracle, x0, generator=generator)
    assert loss.shape == (16,)
    assert loss.max() < 1e-12
    assert d.training_loss(wrong, x0, generator=generator).mean() > 1e-3


def test_training_loss_is_reproducible_with_a_generator():
    d = GaussianDiffusion(get_beta_schedule("linear", 100))
    x0 = torch.rand(8, 3) * 2 - 1

    def model(x, t):
        return 0.1 * x

    a = d.training_loss(model, x0, generator=torch.Generator().manual_seed(5))
    b = d.training_loss(model, x0, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("t", [-1, T, 5000])
def test_t_out_of_range_names_the_valid_range(t):
    d = GaussianDiffusion(get_beta_schedule("linear", T))
    with pytest.raises(ValueError, match=r"\[0, 999\].*book steps 1\.\.1000"):
        d.q_sample(torch.zeros(2, 3), torch.tensor([0, t]))


def test_t_with_wrong_batch_size_is_rejected():
    d = GaussianDiffusion(get_beta_schedule("linear", T))
    with pytest.raises(ValueError, match=r"shape \[B\] = \[2\]"):
        d.q_sample(torch.zeros(2, 3), torch.tensor([1, 2, 3]))


def test_float_t_is_rejected_with_a_pointer_to_the_sde_module():
    d = GaussianDiffusion(get_beta_schedule("linear", T))
    with pytest.raises(ValueError, match="integer step indices.*ddpm_lib.sde"):
        d.q_sample(torch.zeros(2, 3), torch.tensor([1.5, 2.0]))


def test_betas_outside_unit_interval_are_rejected():
    with pytest.raises(ValueError, match=r"strictly inside \(0, 1\).*betas\[1\]"):
        GaussianDiffusion(torch.tensor([0.1, 1.5]))


@pytest.mark.parametrize(
    "kwargs, match",
    [({"model_mean_type": "score"}, "model_mean_type"), ({"model_var_type": "learned"}, "β̃_t")],
)
def test_unknown_parameterization_is_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GaussianDiffusion(get_beta_schedule("linear", 10), **kwargs)


def test_model_with_wrong_output_shape_is_reported():
    d = GaussianDiffusion(get_beta_schedule("linear", 10))
    with pytest.raises(ValueError, match="shaped like x_t"):
        d.p_mean_variance(lambda x, t: x[:, :1], torch.zeros(2, 3), 1)


def test_float32_data_gets_float32_coefficients():
    d = GaussianDiffusion(get_beta_schedule("linear", T))
    x0 = torch.zeros(2, 3)
    assert d.q_sample(x0, 5).dtype == torch.float32
