"""Specification of ddpm_lib.diffusion.GaussianDiffusion (Chapters 1-4).

Book step t is code index t - 1. Identities are checked in float64 against bounds on their
rounding error (``rounding_tol`` below); Monte Carlo checks use z = 5 standard errors
(tests/helpers.py: mc_tolerance, and ddpm_lib.checks.moment_z_scores).
"""

import itertools
import math
import operator

import pytest
import torch

from ddpm_lib.checks import moment_z_scores
from ddpm_lib.diffusion import GaussianDiffusion, variance_recurrence
from ddpm_lib.schedules import get_beta_schedule
from helpers import mc_tolerance

# Small tensors: on a shared 2-core machine, thread contention costs more than it saves.
pytestmark = pytest.mark.usefixtures("one_thread")

T = 1000
EPS = torch.finfo(torch.float64).eps
F64 = dict(dtype=torch.float64)


@pytest.fixture(params=["linear", "cosine"])
def diffusion(request):
    return GaussianDiffusion(get_beta_schedule(request.param, T))


def rounding_tol(d):
    """Relative float64 error of identities between the schedule tables: 8 eps/min β_t.

    α_t = 1 - β_t is rounded, so 1 - α_t (and 1 - ᾱ_1) differs from β_t by up to eps/2, which is
    eps/(2 β_t) relative; an identity that trades α_t for 1 - β_t, or divides by 1 - ᾱ_t,
    inherits a few of these. β_1 is 1e-4 (linear) and 4.1e-5 (cosine): 1.8e-11 and 4.3e-11.
    """
    return 8 * EPS / d.betas.min().item()


def col(table, t):
    """Schedule entries at code indices ``t`` as a column [len(t), 1], to broadcast over data."""
    return table[t].unsqueeze(1)


def assert_within(actual, expected, bound):
    """|actual - expected| ≤ bound, elementwise (``bound`` broadcasts; 0 asks for equality)."""
    err = (actual - expected).abs()
    bad = err > bound
    assert not bad.any(), f"{int(bad.sum())} entries exceed their bound, by up to " + (
        f"{(err - bound)[bad].max().item():.3g}"
    )


def log_normal(x, mean, var):
    return -0.5 * (torch.log(2 * math.pi * var) + (x - mean) ** 2 / var)


def randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), **F64)


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


# ---------------------------------------------------------------- Chapter 1: the forward step


def test_variance_recurrence_applies_one_step_per_entry():
    """variance_recurrence: v_t = a_t² v_{t-1} + b_t² from v_0, one float64 entry per step."""
    out = variance_recurrence(3.0, torch.tensor([2.0, 0.5, 1.0]), torch.tensor([1.0, 1.0, 0.0]))
    assert out.dtype == torch.float64 and out.shape == (3,)
    assert out.tolist() == [13.0, 4.25, 4.25]  # every step is exact in binary floating point


def test_variance_recurrence_broadcasts_a_constant_coefficient():
    b = torch.tensor([0.1, 0.2, 0.3, 0.4], **F64)
    full = variance_recurrence(2.0, torch.full((4,), 0.5, **F64), b)
    assert torch.equal(variance_recurrence(2.0, 0.5, b), full)


@pytest.mark.parametrize("lam", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("v", [0.0, 0.01, 1.0, 4.0])
def test_naive_blend_variance_approaches_lambda_over_two_minus_lambda(lam, v):
    """eq-ch1-naive-iterate: v_k = v* + (1-λ)^{2k} (v - v*) with v* = λ/(2-λ), not 1."""
    K = 200
    out = variance_recurrence(v, 1 - lam, torch.full((K,), lam, **F64))
    v_star = lam / (2 - lam)
    k = torch.arange(1, K + 1, **F64)
    expected = v_star + (1 - lam) ** (2 * k) * (v - v_star)
    # Each step rounds twice at the scale max(v, v*), and the map contracts errors by (1-λ)²,
    # so they add up to at most 2/(1 - (1-λ)²) ≤ 11 roundings.
    assert_within(out, expected, 32 * EPS * max(v, v_star))


def test_naive_blend_has_the_variance_of_the_recurrence():
    """eq-ch1-naive: x' = (1-λ) x + λ ε, repeated with fresh ε, has after k blends the variance
    of variance_recurrence with a = 1-λ, b = λ (Monte Carlo, z < 5), near v* rather than 1."""
    gen = torch.Generator().manual_seed(3)
    n, lam, v = 100_000, 0.1, 4.0
    predicted = variance_recurrence(v, 1 - lam, torch.full((30,), lam, **F64))
    x = math.sqrt(v) * torch.randn(n, generator=gen, **F64)
    for k in range(1, 31):
        x = (1 - lam) * x + lam * torch.randn(n, generator=gen, **F64)
        if k in (1, 5, 30):
            z = moment_z_scores(x, 0.0, predicted[k - 1].item())
            assert abs(z.mean) < 5 and abs(z.variance) < 5
    assert abs(moment_z_scores(x, 0.0, 1.0).variance) > 5  # the blend does not keep variance 1


def test_q_step_is_the_variance_preserving_affine_step(diffusion):
    """eq-ch1-forward-step, eq-ch2-step, eq-ch3-forward-step: q_step(x_{t-1}, ε) is
    √α_t x_{t-1} + √β_t ε with α_t = 1 - β_t at every step: weights whose squares sum to one."""
    t = torch.arange(T)
    x_prev, eps = randn(T, 4, seed=0), randn(T, 4, seed=1)
    terms = ((1 - col(diffusion.betas, t)).sqrt() * x_prev, col(diffusion.betas, t).sqrt() * eps)
    got = diffusion.q_step(x_prev, t, eps)
    assert_within(got, terms[0] + terms[1], 4 * EPS * (terms[0].abs() + terms[1].abs()))
    assert_within(diffusion.alphas + diffusion.betas, torch.ones(T, **F64), EPS)


def test_q_step_draws_from_the_forward_kernel(diffusion):
    """eq-ch1-forward-step: q_step draws from a fixed x_{t-1} have mean √(1-β_t) x_{t-1} and
    variance β_t (z < 5, book steps 1, 500, 1000); the variance β_t² (std β_t) is rejected."""
    torch.manual_seed(4)
    n, x_prev = 100_000, 0.7
    t = torch.tensor([0, 499, 999])
    x = diffusion.q_step(torch.full((3, n), x_prev, **F64), t)
    for row, i in zip(x, t.tolist(), strict=True):
        beta = diffusion.betas[i].item()
        z = moment_z_scores(row, math.sqrt(1 - beta) * x_prev, beta)
        assert abs(z.mean) < 5 and abs(z.variance) < 5
    beta = diffusion.betas[499].item()
    assert abs(moment_z_scores(x[1], math.sqrt(1 - beta) * x_prev, beta**2).variance) > 5


@pytest.mark.parametrize("v", [0.0, 0.04, 1.0, 4.0])
def test_forward_moments_solve_the_variance_recurrence(diffusion, v):
    """eq-ch1-var-recurrence, eq-ch1-var-solution: v_t = α_t v_{t-1} + β_t from v_0 = v is
    1 - (1-v) ᾱ_t, and E[x_t] = √ᾱ_t m is m times the running product of the √α_s."""
    m = -0.6
    mean, var = diffusion.forward_moments(m, v)
    assert mean.dtype == var.dtype == torch.float64 and mean.shape == var.shape == (T,)
    recurrence = variance_recurrence(v, diffusion.alphas.sqrt(), diffusion.betas.sqrt())
    # The recurrence's (√α_t)² + (√β_t)² is 1 only to rounding, which moves its fixed point 1
    # by about eps/β_t relative: rounding_tol. The means differ by T roundings of a product.
    assert_within(var, recurrence, rounding_tol(diffusion) * max(v, 1.0))
    running = m * torch.cumprod(diffusion.alphas.sqrt(), 0)
    assert_within(mean, running, 2 * T * EPS * abs(m))


def test_snr_is_the_squared_signal_scale_over_the_noise_variance(diffusion):
    """eq-ch1-snr: SNR(t) = ᾱ_t/(1-ᾱ_t): the squared factor of x_0 in the mean of q(x_t | x_0)
    over its variance, a float64 [T] table."""
    snr = diffusion.snr()
    assert snr.dtype == torch.float64 and snr.shape == (T,)
    mean, var, _ = diffusion.q_mean_variance(torch.ones(T, 1, **F64), torch.arange(T))
    assert_within(snr, mean[:, 0] ** 2 / var[:, 0], 8 * EPS * snr)


def test_snr_of_the_linear_schedule_at_its_midpoint():
    """eq-ch1-snr: SNR at t = 500 of DDPM's linear schedule, from the 30-digit ᾱ_500 of
    test_schedules (float64 keeps ᾱ_500 to 1e-13, and a/(1-a) has condition number 1.1)."""
    d = GaussianDiffusion(get_beta_schedule("linear", T))
    ab = 0.0785872428817782373
    assert d.snr()[499].item() == pytest.approx(ab / (1 - ab), rel=1e-12)


def test_snr_decreases_strictly_in_t(diffusion):
    """eq-ch1-snr: ᾱ_t falls with t and a/(1-a) rises with a, so SNR(t) falls strictly
    (Chapter 1, Exercise 2)."""
    snr = diffusion.snr()
    assert (snr[1:] < snr[:-1]).all()


# ---------------------------------------------------------------- Chapter 2: the closed form


def test_alpha_bar_is_the_running_product_of_the_alphas(diffusion):
    """eq-ch3-jump: ᾱ_t = Π_{s≤t} α_s with α_t = 1 - β_t, and ᾱ_0 = 1 (the empty product)
    heads alphas_cumprod_prev."""
    assert torch.equal(diffusion.alphas, 1 - diffusion.betas)
    products = list(itertools.accumulate(diffusion.alphas.tolist(), operator.mul))
    # t products, each rounded once: t eps/2 relative at most.
    assert_within(diffusion.alphas_cumprod, torch.tensor(products, **F64), T * EPS * 1.0)
    assert diffusion.alphas_cumprod_prev[0].item() == 1.0
    assert torch.equal(diffusion.alphas_cumprod_prev[1:], diffusion.alphas_cumprod[:-1])


def test_recurrence_moments_by_induction_equal_closed_form(diffusion):
    """eq-ch1-moments, eq-ch2-closed-form, eq-ch3-jump: the moments of x_t | x_0 by the
    recurrence (m_t = √α_t m_{t-1}, v_t = α_t v_{t-1} + β_t, v_0 = 0) are q_mean_variance's
    √ᾱ_t x_0 and (1 - ᾱ_t), with log variance log(1 - ᾱ_t), at every t."""
    m, v = 1.0, 0.0
    means, variances = [], []
    for beta in diffusion.betas.tolist():
        m, v = math.sqrt(1 - beta) * m, (1 - beta) * v + beta
        means.append(m)
        variances.append(v)
    x0 = torch.ones(T, 1, dtype=torch.float64)
    mean, var, log_var = diffusion.q_mean_variance(x0, torch.arange(T))
    tol = rounding_tol(diffusion)
    assert_within(mean[:, 0], torch.tensor(means, **F64), tol * mean[:, 0])
    assert_within(var[:, 0], torch.tensor(variances, **F64), tol * var[:, 0])
    assert_within(log_var, var.log(), tol)


def test_iterated_q_step_matches_q_sample_and_the_forward_moments(diffusion):
    """eq-ch2-closed-form, eq-ch1-var-solution, eq-ch1-var-recurrence: t calls of q_step and
    one jump by q_sample give the same mean and variance, √ᾱ_t m and 1 - (1-v) ᾱ_t, for data
    x_0 of mean m and variance v: fixed pixels (v = 0) and two laws (Monte Carlo, z < 5)."""
    torch.manual_seed(0)
    n = 10_000
    laws = [(-1.0, 0.0), (0.3, 0.0), (0.9, 0.0), (0.0, 4.0), (0.5, 0.04)]

    def draw_x0():
        return torch.stack([m + math.sqrt(v) * torch.randn(n, **F64) for m, v in laws])

    moments = [diffusion.forward_moments(m, v) for m, v in laws]
    # Rows are pixels, columns independent draws: one index per row keeps each step cheap.
    x = draw_x0()
    checked = 0
    for i in range(T):
        x = diffusion.q_step(x, i)
        if i + 1 not in (1, 50, 400, T):
            continue
        checked += 1
        jump = diffusion.q_sample(draw_x0(), i)
        for chain_row, jump_row, (mean, var) in zip(x, jump, moments, strict=True):
            m, v = mean[i].item(), var[i].item()
            # Two independent samples: their means differ by √(2v/n) standard deviations,
            # their (Gaussian) sample variances by √(2 · 2v²/(n-1)).
            assert abs(chain_row.mean() - jump_row.mean()) < mc_tolerance(math.sqrt(2 * v), n)
            assert abs(chain_row.var() - jump_row.var()) < mc_tolerance(2 * v, n - 1)
            for row in (chain_row, jump_row):
                z = moment_z_scores(row, m, v)
                assert abs(z.mean) < 5 and abs(z.variance) < 5
    assert checked == 4


def test_q_step_chain_is_normal_with_the_closed_form_moments():
    """eq-ch2-closed-form: after 100 steps from x_0 = 1 the chain's law is N(√ᾱ_t x_0, 1-ᾱ_t)
    by the one-sample Kolmogorov-Smirnov test; the two slips of Chapter 2 (standard deviation
    1-ᾱ_t, mean ᾱ_t x_0) are rejected."""
    d = GaussianDiffusion(get_beta_schedule("linear", T))
    torch.manual_seed(6)
    n, steps, x0 = 20_000, 100, 1.0
    x = torch.full((1, n), x0, **F64)
    for i in range(steps):
        x = d.q_step(x, i)
    ab = d.alphas_cumprod[steps - 1].item()
    # Kolmogorov's limit law P(√n D > c) ≈ 2 exp(-2c²), at the false-alarm rate of |z| > 5.
    c = math.sqrt(-math.log(math.erfc(5 / math.sqrt(2)) / 2) / 2)
    sorted_x = x[0].sort().values
    i = torch.arange(1, n + 1, **F64)

    def ks(mean, std):
        cdf = torch.special.ndtr((sorted_x - mean) / std)
        return torch.maximum(i / n - cdf, cdf - (i - 1) / n).max().item()

    assert ks(math.sqrt(ab) * x0, math.sqrt(1 - ab)) < c / math.sqrt(n)
    assert ks(math.sqrt(ab) * x0, 1 - ab) > c / math.sqrt(n)
    assert ks(ab * x0, math.sqrt(1 - ab)) > c / math.sqrt(n)


def test_q_step_chain_has_the_path_covariance_of_the_joint():
    """eq-ch2-joint: steps with fresh noise chain into q(x_{1:T} | x_0) = Π q(x_t | x_{t-1}), so
    Cov(x_s, x_t | x_0) = √(ᾱ_t/ᾱ_s) (1-ᾱ_s) (Chapter 2, Exercise 4; s = 100, t = 300). Two
    independent jumps, with the right marginals, have covariance 0 and fail the same check."""
    d = GaussianDiffusion(get_beta_schedule("linear", T))
    torch.manual_seed(7)
    n, s, t = 20_000, 100, 300
    x0 = torch.full((1, n), 0.5, **F64)
    x, x_s = x0, None
    for i in range(t):
        x = d.q_step(x, i)
        if i + 1 == s:
            x_s = x
    ab_s, ab_t = d.alphas_cumprod[s - 1].item(), d.alphas_cumprod[t - 1].item()
    cov = math.sqrt(ab_t / ab_s) * (1 - ab_s)
    # The sample covariance of a Gaussian pair has standard error √((S_ss S_tt + S_st²)/n).
    tol = mc_tolerance(math.sqrt((1 - ab_s) * (1 - ab_t) + cov**2), n)

    def sample_cov(a, b):
        return ((a - a.mean()) * (b - b.mean())).sum().item() / (n - 1)

    assert abs(sample_cov(x_s, x) - cov) < tol
    assert abs(sample_cov(d.q_sample(x0, s - 1), d.q_sample(x0, t - 1)) - cov) > tol


def test_one_step_after_the_jump_is_the_induction_step(diffusion):
    """eq-ch2-induction: x_t = √α_t x_{t-1} + √β_t ε with x_{t-1} = √ᾱ_{t-1} x_0 + √(1-ᾱ_{t-1}) ε'
    is √ᾱ_t x_0 + √(α_t (1-ᾱ_{t-1})) ε' + √β_t ε, at every t = 2..T."""
    t = torch.arange(1, T)
    x0 = randn(T - 1, 4, seed=2)
    e1, e2 = randn(T - 1, 4, seed=3), randn(T - 1, 4, seed=4)
    x_t = diffusion.q_step(diffusion.q_sample(x0, t - 1, e1), t, e2)
    ab, ab_prev = col(diffusion.alphas_cumprod, t), col(diffusion.alphas_cumprod, t - 1)
    alpha, beta = col(diffusion.alphas, t), col(diffusion.betas, t)
    terms = (ab.sqrt() * x0, (alpha * (1 - ab_prev)).sqrt() * e1, beta.sqrt() * e2)
    # ᾱ_t = α_t ᾱ_{t-1} holds in the tables to one rounding; each side adds a few more.
    assert_within(x_t, sum(terms), 8 * EPS * sum(term.abs() for term in terms))


def test_the_induction_steps_noise_variances_sum_to_one_minus_alpha_bar(diffusion):
    """eq-ch2-variance-sum: α_t (1-ᾱ_{t-1}) + β_t = 1 - ᾱ_t at every t; with √α_t left
    unsquared (a standard deviation used as a variance) it fails."""
    a, b = diffusion.alphas, diffusion.betas
    ab, ab_prev = diffusion.alphas_cumprod, diffusion.alphas_cumprod_prev
    # Terms of order one; α_t + β_t = 1 and ᾱ_t = α_t ᾱ_{t-1} hold to one rounding each.
    assert_within(a * (1 - ab_prev) + b, 1 - ab, 4 * EPS)
    assert (a.sqrt() * (1 - ab_prev) + b - (1 - ab)).abs().max() > 1e-4


def test_the_chain_lands_on_the_unrolled_sum_path_by_path(diffusion):
    """eq-ch2-unrolled: t calls of q_step with noises ε_1..ε_t give exactly (to rounding)
    √ᾱ_t x_0 + Σ_{s≤t} √(ᾱ_t/ᾱ_s β_s) ε_s, for every t = 1..T."""
    x0 = torch.tensor([[-1.0, 0.2, 0.9]], **F64)
    noise = randn(T, 3, seed=5)
    x, path = x0, []
    for i in range(T):
        x = diffusion.q_step(x, i, noise[i : i + 1])
        path.append(x[0])
    ab, b = diffusion.alphas_cumprod, diffusion.betas
    coef = (ab[:, None] / ab[None, :] * b[None, :]).sqrt().tril()  # [t, s], zero for s > t
    signal = ab.sqrt()[:, None] * x0
    # Up to T roundings on either side, each at most eps times the sum of the terms' sizes.
    bound = 2 * T * EPS * (signal.abs() + coef @ noise.abs())
    assert_within(torch.stack(path), signal + coef @ noise, bound)


def test_the_unrolled_noise_variances_telescope_to_one_minus_alpha_bar(diffusion):
    """eq-ch2-unrolled: β_s/ᾱ_s = 1/ᾱ_s - 1/ᾱ_{s-1}, so Σ_{s≤t} (ᾱ_t/ᾱ_s) β_s = 1 - ᾱ_t."""
    ab, ab_prev, b = diffusion.alphas_cumprod, diffusion.alphas_cumprod_prev, diffusion.betas
    # Terms of size 1/ᾱ_s; 1 - α_s is β_s to eps/2.
    assert_within(b / ab, 1 / ab - 1 / ab_prev, 4 * EPS / ab)
    # A sum of up to T positive terms (T eps relative), each off by rounding_tol as above.
    total = ab * torch.cumsum(b / ab, 0)
    assert_within(total, 1 - ab, (T * EPS + rounding_tol(diffusion)) * (1 - ab))


def test_q_sample_is_the_reparameterized_jump(diffusion):
    """eq-ch2-reparam, eq-ch4-jump: q_sample(x_0, t, ε) = √ᾱ_t x_0 + √(1-ᾱ_t) ε at every t."""
    t = torch.arange(T)
    x0, eps = randn(T, 4, seed=6), randn(T, 4, seed=7)
    ab = col(diffusion.alphas_cumprod, t)
    terms = (ab.sqrt() * x0, (1 - ab).sqrt() * eps)
    bound = 4 * EPS * (terms[0].abs() + terms[1].abs())
    assert_within(diffusion.q_sample(x0, t, eps), terms[0] + terms[1], bound)


def test_q_sample_draws_have_the_closed_form_moments_and_the_slips_do_not(diffusion):
    """eq-ch2-reparam, eq-ch2-closed-form: q_sample draws at book steps 1, 100, 500, 1000 have
    mean √ᾱ_t x_0 and variance 1-ᾱ_t (z < 5); the same check rejects, at t = 500, the slips
    of Chapter 2: 1-ᾱ_t as the standard deviation, or ᾱ_t x_0 as the mean."""
    torch.manual_seed(8)
    n, x0 = 100_000, 0.8
    t = torch.tensor([0, 99, 499, 999])
    x = diffusion.q_sample(torch.full((4, n), x0, **F64), t)
    for row, i in zip(x, t.tolist(), strict=True):
        ab = diffusion.alphas_cumprod[i].item()
        z = moment_z_scores(row, math.sqrt(ab) * x0, 1 - ab)
        assert abs(z.mean) < 5 and abs(z.variance) < 5
    ab = diffusion.alphas_cumprod[499].item()
    eps = torch.randn(n, **F64)
    std_slip = math.sqrt(ab) * x0 + (1 - ab) * eps
    mean_slip = ab * x0 + math.sqrt(1 - ab) * eps
    assert abs(moment_z_scores(std_slip, math.sqrt(ab) * x0, 1 - ab).variance) > 5
    assert abs(moment_z_scores(mean_slip, math.sqrt(ab) * x0, 1 - ab).mean) > 5


# ---------------------------------------------------------------- Chapter 3: the posterior


def posterior_grid(d, width, points):
    """For book steps t = 2..T: x_0, a draw x_t of q(x_t | x_0), the posterior, and a grid
    x_{t-1} = μ̃_t + √β̃_t u with u evenly spaced in [-width, width] ([T-1, points])."""
    t = torch.arange(1, T)
    x0 = torch.rand(T - 1, 1, generator=torch.Generator().manual_seed(8), **F64) * 2 - 1
    eps = randn(T - 1, 1, seed=9)
    assert eps.abs().max() < width  # x_t lies within ``width`` standard deviations of its mean
    x_t = d.q_sample(x0, t, eps)
    post = d.q_posterior_mean_variance(x0, x_t, t)
    u = torch.linspace(-width, width, points, **F64)
    return t, x0, x_t, post, u, post.mean + post.variance.sqrt() * u


def bayes_log_terms(d, t, x0, x_t, x):
    """log q(x_t | x_{t-1}), log q(x_{t-1} | x_0) and log q(x_t | x_0) at x_{t-1} = x: the three
    factors of Bayes' rule for the posterior (eq-ch3-bayes)."""
    alpha, beta = col(d.alphas, t), col(d.betas, t)
    ab, ab_prev = col(d.alphas_cumprod, t), col(d.alphas_cumprod, t - 1)
    return (
        log_normal(x_t, alpha.sqrt() * x, beta),
        log_normal(x, ab_prev.sqrt() * x0, 1 - ab_prev),
        log_normal(x_t, ab.sqrt() * x0, 1 - ab),
    )


def log_density_tol(d, t, x0, x_t, post, width, *terms):
    """Float64 error of a sum of Gaussian log densities ``terms`` on posterior_grid's points.

    Each term carries a few eps of its size. The tables carry a relative error δ = rounding_tol:
    it moves μ̃_t by δ (|c_1 x_0| + |c_2 x_t|), which a log density of width √β̃_t sees as that
    shift times width/√β̃_t; and a variance off by δ moves a log density at ≤ width standard
    deviations by δ (1 + width²)/2.
    """
    delta = rounding_tol(d)
    shift = delta * (
        (col(d.posterior_mean_coef1, t) * x0).abs() + (col(d.posterior_mean_coef2, t) * x_t).abs()
    )
    return (
        8 * EPS * sum(term.abs() for term in terms)
        + width * shift / post.variance.sqrt()
        + len(terms) * delta * (1 + width**2) / 2
    )


def test_posterior_mean_and_variance_are_the_closed_forms(diffusion):
    """eq-ch3-mu-tilde, eq-ch3-beta-tilde, eq-ch4-mu-x0: μ̃_t = √ᾱ_{t-1} β_t/(1-ᾱ_t) x_0 +
    √α_t (1-ᾱ_{t-1})/(1-ᾱ_t) x_t and β̃_t = (1-ᾱ_{t-1})/(1-ᾱ_t) β_t, at every t = 1..T."""
    t = torch.arange(T)
    x0, x_t = randn(T, 4, seed=10), randn(T, 4, seed=11)
    ab, ab_prev = col(diffusion.alphas_cumprod, t), col(diffusion.alphas_cumprod_prev, t)
    alpha, beta = col(diffusion.alphas, t), col(diffusion.betas, t)
    c1 = ab_prev.sqrt() * beta / (1 - ab)
    c2 = alpha.sqrt() * (1 - ab_prev) / (1 - ab)
    mean, var, _ = diffusion.q_posterior_mean_variance(x0, x_t, t)
    # The same formulas in another order: a few roundings of each term.
    assert_within(mean, c1 * x0 + c2 * x_t, 8 * EPS * ((c1 * x0).abs() + (c2 * x_t).abs()))
    beta_tilde = (1 - ab_prev) / (1 - ab) * beta
    assert_within(var, beta_tilde.expand_as(var), 8 * EPS * beta_tilde)


def test_posterior_precision_is_the_sum_of_the_two_precisions(diffusion):
    """eq-ch3-precision: 1/β̃_t = α_t/β_t + 1/(1-ᾱ_{t-1}) for t = 2..T; without α_t it fails."""
    a, b = diffusion.alphas[1:], diffusion.betas[1:]
    ab_prev = diffusion.alphas_cumprod_prev[1:]
    precision = 1 / diffusion.posterior_variance[1:]
    tol = rounding_tol(diffusion) * precision
    assert_within(precision, a / b + 1 / (1 - ab_prev), tol)
    assert ((precision - (1 / b + 1 / (1 - ab_prev))).abs() > tol).all()


def test_posterior_log_density_is_the_exponent_of_bayes_rule_up_to_a_constant(diffusion):
    """eq-ch3-exponent: log N(x_{t-1}; μ̃_t, β̃_t) + ½[(x_t - √α_t x_{t-1})²/β_t +
    (x_{t-1} - √ᾱ_{t-1} x_0)²/(1-ᾱ_{t-1})] does not depend on x_{t-1}, t = 2..T. With √α_{t-1}
    for √ᾱ_{t-1} (the unbarred slip) it does, from t = 3 on."""
    width = 6
    t, x0, x_t, post, u, x = posterior_grid(diffusion, width, 201)
    alpha, beta = col(diffusion.alphas, t), col(diffusion.betas, t)
    ab_prev = col(diffusion.alphas_cumprod, t - 1)

    def spread(coef_x0):
        step = (x_t - alpha.sqrt() * x) ** 2 / beta
        jump = (x - coef_x0 * x0) ** 2 / (1 - ab_prev)
        log_post = log_normal(x, post.mean, post.variance)
        total = log_post + 0.5 * (step + jump)
        tol = log_density_tol(diffusion, t, x0, x_t, post, width, log_post, step, jump)
        middle = total[:, u.numel() // 2 :][:, :1]  # u = 0
        return (total - middle).abs() / (2 * tol)

    assert spread(ab_prev.sqrt()).max() <= 1
    unbarred = spread(col(diffusion.alphas, t - 1).sqrt()).amax(dim=1)
    assert unbarred[0] <= 1  # t = 2: α_1 = ᾱ_1
    assert (unbarred[1:] > 1).all()


def test_completing_the_square_leaves_log_q_xt_given_x0(diffusion):
    """eq-ch3-bayes-log: log q(x_t | x_{t-1}) + log q(x_{t-1} | x_0) - log N(x_{t-1}; μ̃_t, β̃_t)
    = log q(x_t | x_0) at each of 201 points x_{t-1}, for every t = 2..T."""
    width = 6
    t, x0, x_t, post, u, x = posterior_grid(diffusion, width, 201)
    forward, prior, evidence = bayes_log_terms(diffusion, t, x0, x_t, x)
    terms = (forward, prior, -log_normal(x, post.mean, post.variance), -evidence)
    bound = log_density_tol(diffusion, t, x0, x_t, post, width, *terms)
    assert_within(sum(terms), torch.zeros_like(x), bound)


def test_bayes_rule_normalizes_to_a_gaussian_with_the_posterior_moments(diffusion):
    """eq-ch3-bayes: q(x_t | x_{t-1}) q(x_{t-1} | x_0)/q(x_t | x_0), integrated over x_{t-1}, has
    mass 1, mean μ̃_t and variance β̃_t (trapezoid rule, every t = 2..T)."""
    width = 12
    t, x0, x_t, post, u, x = posterior_grid(diffusion, width, 2401)
    forward, prior, evidence = bayes_log_terms(diffusion, t, x0, x_t, x)
    terms = (forward, prior, -evidence)
    density_u = torch.exp(sum(terms)) * post.variance.sqrt()  # the density of u = (x - μ̃)/√β̃
    h = (u[1] - u[0]).item()

    def integral(f):
        return h * (f.sum(dim=1) - (f[:, 0] + f[:, -1]) / 2)

    # For a Gaussian the trapezoid rule's error is of order exp(-2π²/h²) and the cut at
    # 12 standard deviations exp(-72): what is left is rounding, the log density's error
    # (times E[1], E|u|, E[u²] ≤ 1) plus the sum's 2401 eps.
    tol = log_density_tol(diffusion, t, x0, x_t, post, width, *terms).amax(dim=1)
    tol = tol + u.numel() * EPS
    assert_within(integral(density_u), torch.ones(T - 1, **F64), tol)
    assert_within(integral(u * density_u), torch.zeros(T - 1, **F64), tol)
    assert_within(integral(u**2 * density_u), torch.ones(T - 1, **F64), tol)


def test_averaging_the_posterior_mean_over_x_t_gives_the_mean_of_x_prev(diffusion):
    """eq-ch3-consistency-mean: c_1 + c_2 √ᾱ_t = √ᾱ_{t-1} at every t. The unbarred slip
    √α_{t-1} in c_1 fails from t = 3 on (at t = 2, α_1 = ᾱ_1)."""
    c1, c2 = diffusion.posterior_mean_coef1, diffusion.posterior_mean_coef2
    ab, ab_prev = diffusion.alphas_cumprod, diffusion.alphas_cumprod_prev
    tol = rounding_tol(diffusion)  # terms of order one
    assert_within(c1 + c2 * ab.sqrt(), ab_prev.sqrt(), tol)
    b = diffusion.betas
    unbarred_c1 = torch.cat([c1[:1], diffusion.alphas[:-1].sqrt() * b[1:] / (1 - ab[1:])])
    gap = (unbarred_c1 + c2 * ab.sqrt() - ab_prev.sqrt()).abs()
    assert gap[1] <= tol
    assert (gap[2:] > tol).all()


def test_averaging_the_posterior_variance_over_x_t_gives_the_variance_of_x_prev(diffusion):
    """eq-ch3-consistency-var: β̃_t + c_2² (1-ᾱ_t) = 1 - ᾱ_{t-1} at every t (law of total
    variance); β_t in place of β̃_t fails it for every t ≥ 2."""
    c2 = diffusion.posterior_mean_coef2
    ab, ab_prev = diffusion.alphas_cumprod, diffusion.alphas_cumprod_prev
    tol = rounding_tol(diffusion)  # terms of order one
    assert_within(diffusion.posterior_variance + c2**2 * (1 - ab), 1 - ab_prev, tol)
    wrong = diffusion.betas + c2**2 * (1 - ab)
    assert ((wrong - (1 - ab_prev)).abs() > tol)[1:].all()


def test_the_pair_x_prev_x_t_has_the_joint_gaussian_moments(diffusion):
    """eq-ch3-joint: given x_0, x_{t-1} from q_sample and x_t from q_step have means √ᾱ_{t-1} x_0
    and √ᾱ_t x_0, variances 1-ᾱ_{t-1} and 1-ᾱ_t, covariance √α_t (1-ᾱ_{t-1}) (z < 5; book
    steps 2, 10, 100, 500, 1000)."""
    torch.manual_seed(9)
    n, x0 = 100_000, 0.6
    t = torch.tensor([1, 9, 99, 499, 999])
    prev = diffusion.q_sample(torch.full((len(t), n), x0, **F64), t - 1)
    cur = diffusion.q_step(prev, t)
    for i, a, b in zip(t.tolist(), prev, cur, strict=True):
        ab_prev, ab = diffusion.alphas_cumprod[i - 1].item(), diffusion.alphas_cumprod[i].item()
        s_aa, s_bb = 1 - ab_prev, 1 - ab
        s_ab = math.sqrt(diffusion.alphas[i].item()) * s_aa
        za = moment_z_scores(a, math.sqrt(ab_prev) * x0, s_aa)
        zb = moment_z_scores(b, math.sqrt(ab) * x0, s_bb)
        assert max(abs(z) for z in (*za, *zb)) < 5
        cov = ((a - a.mean()) * (b - b.mean())).sum().item() / (n - 1)
        assert abs(cov - s_ab) < mc_tolerance(math.sqrt(s_aa * s_bb + s_ab**2), n)


def test_posterior_equals_gaussian_conditioning_of_the_joint(diffusion):
    """eq-ch3-joint, eq-ch3-conditioning: conditioning the joint Gaussian of (x_{t-1}, x_t) | x_0
    on x_t, a | b ~ N(m_a + S_ab/S_bb (b - m_b), S_aa - S_ab²/S_bb), gives
    q_posterior_mean_variance at every t = 2..T, without completing a square."""
    # Given x_0, (x_{t-1}, x_t) is jointly Gaussian: x_{t-1} ~ N(√ᾱ_{t-1} x_0, a) with
    # a = 1-ᾱ_{t-1}, x_t = √α_t x_{t-1} + √β_t ε, so Cov = √α_t a and Var(x_t) = α_t a + β_t.
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
    tol = rounding_tol(diffusion)  # the two routes trade α_t for 1 - β_t differently
    assert_within(mean, cond_mean, tol * (x0.abs() + x_t.abs()))
    assert_within(var, cond_var, tol * var)


def test_posterior_at_book_step_1_is_x0_with_zero_variance():
    """eq-ch3-t1: β̃_1 = 0 and μ̃_1(x_1, x_0) = x_0 (ᾱ_0 = 1)."""
    d = GaussianDiffusion(get_beta_schedule("linear", T))
    x0, x1 = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    mean, var, _ = d.q_posterior_mean_variance(x0, x1, 0)
    # c_1 = β_1/(1 - ᾱ_1) is 1 only to rounding_tol: 1 - ᾱ_1 is β_1 to eps/2.
    assert_within(mean, x0, rounding_tol(d) * x0.abs())
    assert (var == 0).all()


def test_posterior_log_variance_at_book_step_1_is_that_of_step_2(diffusion):
    """eq-ch3-t1: β̃_1 = 0 has no logarithm; the clipped log variance there is log β̃_2."""
    x = torch.zeros(2, 3, **F64)
    log_var = diffusion.q_posterior_mean_variance(x, x, torch.tensor([0, 1])).log_variance
    expected = diffusion.posterior_variance[1].log().item()
    assert (log_var == expected).all()


def test_posterior_variance_never_exceeds_beta(diffusion):
    assert (diffusion.posterior_variance <= diffusion.betas).all()


@pytest.mark.parametrize("scale, inside", [(1.0, True), (2.0, False)])
def test_reverse_variance_of_two_point_data_lies_between_beta_tilde_and_beta(
    diffusion, scale, inside
):
    """eq-ch3-bracket: for data x_0 = ±1 (unit variance), E_{x_t} Var[x_{t-1} | x_t] =
    β̃_t + c_1² E Var[x_0 | x_t] lies between fixed_small (β̃_t) and fixed_large (β_t) at every
    t = 2..T. The upper bound needs unit variance: data x_0 = ±2 exceeds it.

    For x_0 = ±a, Var[x_0 | x_t] = a² sech²(a √ᾱ_t x_t/(1-ᾱ_t)); by symmetry its mean over x_t
    is a² E_z sech²(a² SNR + a √SNR z), z ~ N(0, 1), integrated by the trapezoid rule.
    """
    t = torch.arange(1, T)
    x = torch.zeros(T - 1, 1, **F64)

    def zero_model(x, t):
        return torch.zeros_like(x)

    small, large = (
        diffusion.p_mean_variance(zero_model, x, t, variance=v).variance[:, 0]
        for v in ("fixed_small", "fixed_large")
    )
    snr = col(diffusion.snr(), t)
    z = torch.linspace(-12, 12, 4801, **F64)  # h = 0.005 resolves sech² wherever it matters
    f = (
        torch.exp(-0.5 * z**2)
        / math.sqrt(2 * math.pi)
        / torch.cosh(scale**2 * snr + scale * snr.sqrt() * z) ** 2
    )
    h = (z[1] - z[0]).item()
    mmse = scale**2 * h * (f.sum(dim=1) - (f[:, 0] + f[:, -1]) / 2)
    total = small + diffusion.posterior_mean_coef1[t] ** 2 * mmse
    tol = rounding_tol(diffusion) * large
    assert (total >= small - tol).all()
    assert (total <= large + tol).all() == inside


def test_posterior_variance_plus_the_spread_of_its_mean_is_beta(diffusion):
    """eq-ch3-total-variance: β̃_t + c_1² (1-ᾱ_t) = (β_t (1-ᾱ_{t-1}) + ᾱ_{t-1} β_t²)/(1-ᾱ_t) = β_t
    at every t: for N(0, I) data the reverse variance is fixed_large's β_t. c_2 for c_1 fails."""
    b, bt = diffusion.betas, diffusion.posterior_variance
    c1, c2 = diffusion.posterior_mean_coef1, diffusion.posterior_mean_coef2
    ab, ab_prev = diffusion.alphas_cumprod, diffusion.alphas_cumprod_prev
    tol = rounding_tol(diffusion) * b
    middle = (b * (1 - ab_prev) + ab_prev * b**2) / (1 - ab)
    assert_within(bt + c1**2 * (1 - ab), middle, tol)
    assert_within(middle, b, tol)
    assert ((bt + c2**2 * (1 - ab) - b).abs() > tol).all()


# ---------------------------------------------------------------- Chapter 4: ε and training


def eps_form_terms(d, t, x_t, eps):
    """The two terms of (x_t - β_t/√(1-ᾱ_t) ε)/√α_t, each shaped like x_t."""
    a, b, ab = col(d.alphas, t), col(d.betas, t), col(d.alphas_cumprod, t)
    return x_t / a.sqrt(), b / (a * (1 - ab)).sqrt() * eps


def test_predict_x0_from_eps_solves_the_jump_for_x0(diffusion):
    """eq-ch4-x0-from-eps: x_0 = (x_t - √(1-ᾱ_t) ε)/√ᾱ_t for any x_t and ε, at every t."""
    t = torch.arange(T)
    x_t, eps = randn(T, 4, seed=12), randn(T, 4, seed=13)
    ab = col(diffusion.alphas_cumprod, t)
    signal, noise = x_t / ab.sqrt(), (1 - ab).sqrt() / ab.sqrt() * eps
    # The library's √(1/ᾱ_t - 1) loses what 1 - ᾱ_t does to cancellation: rounding_tol.
    bound = 8 * EPS * signal.abs() + rounding_tol(diffusion) * noise.abs()
    assert_within(diffusion.predict_x0_from_eps(x_t, t, eps), signal - noise, bound)


def test_x0_eps_v_and_score_conversions_round_trip():
    """eq-ch4-x0-from-eps, eq-ch4-v: on x_t = q_sample(x_0, ε), each conversion of Chapter 4's
    table gives back the x_0, ε or v that x_t came from."""
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


def test_posterior_mean_in_terms_of_the_noise(diffusion):
    """eq-ch4-mu-eps: μ̃_t(x_t, x_0) = (x_t - β_t/√(1-ᾱ_t) ε)/√α_t whenever
    x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε, at every t = 1..T."""
    t = torch.arange(T)
    x0, eps = randn(T, 4, seed=14), randn(T, 4, seed=15)
    x_t = diffusion.q_sample(x0, t, eps)
    mean = diffusion.q_posterior_mean_variance(x0, x_t, t).mean
    signal, noise = eps_form_terms(diffusion, t, x_t, eps)
    # The coefficients on both sides carry rounding_tol; no term exceeds these sizes.
    bound = rounding_tol(diffusion) * (x0.abs() + signal.abs() + noise.abs())
    assert_within(mean, signal - noise, bound)


def test_unclipped_model_mean_equals_the_eps_form_of_mu(diffusion):
    """eq-ch4-mu-theta: μ_θ = (x_t - β_t/√(1-ᾱ_t) ε_θ)/√α_t for any network when x̂_0 is not
    clipped, though p_mean_variance goes through x̂_0 and μ̃_t (Chapter 4)."""
    torch.manual_seed(3)
    x_t = torch.randn(8, 3, dtype=torch.float64)
    t = torch.tensor([0, 1, 5, 100, 400, 700, 998, 999])

    def model(x, t):
        return torch.tanh(x) * (t[:, None] + 1) / T

    out = diffusion.p_mean_variance(model, x_t, t, clip_denoised=False)
    signal, noise = eps_form_terms(diffusion, t, x_t, model(x_t, t))
    # Through x̂_0 the terms are c_1 x_t/√ᾱ_t ≤ x_t/√α_t, c_1 √(1/ᾱ_t - 1) ε_θ (the ε-form's
    # own term) and c_2 x_t: no larger than these, each off by rounding_tol at most.
    bound = rounding_tol(diffusion) * 2 * (signal.abs() + noise.abs())
    assert_within(out.mean, signal - noise, bound)


def test_score_of_the_eps_form_is_the_gradient_of_log_q_xt_given_x0():
    """eq-ch4-score-cond: -(x_t - √ᾱ_t x_0)/(1-ᾱ_t), the autograd gradient of log q(x_t | x_0),
    is eps_to_score of the ε behind x_t, -ε/√(1-ᾱ_t)."""
    d = GaussianDiffusion(get_beta_schedule("linear", T))
    t = torch.tensor([10, 500])
    x0 = torch.tensor([[0.2, -0.4], [0.9, 0.1]], dtype=torch.float64)
    x_t = d.q_sample(x0, t).requires_grad_(True)
    mean, var, _ = d.q_mean_variance(x0, t)
    log_q = (-0.5 * (x_t - mean) ** 2 / var).sum()
    (grad,) = torch.autograd.grad(log_q, x_t)
    eps = d.predict_eps_from_x0(x_t.detach(), t, x0)
    torch.testing.assert_close(d.eps_to_score(eps, t), grad, rtol=1e-10, atol=1e-12)


def test_get_v_is_the_velocity_that_turns_with_x_t(diffusion):
    """eq-ch4-v: v = √ᾱ_t ε - √(1-ᾱ_t) x_0, so (x_t, v) is (x_0, ε) turned by the angle φ_t
    with cos φ_t = √ᾱ_t: x_t² + v² = x_0² + ε² in every coordinate, at every t. ᾱ_t in place
    of √ᾱ_t breaks the rotation."""
    t = torch.arange(T)
    x0, eps = randn(T, 4, seed=16), randn(T, 4, seed=17)
    ab = col(diffusion.alphas_cumprod, t)
    v = diffusion.get_v(x0, eps, t)
    terms = (ab.sqrt() * eps, (1 - ab).sqrt() * x0)
    assert_within(v, terms[0] - terms[1], 4 * EPS * (terms[0].abs() + terms[1].abs()))
    x_t = diffusion.q_sample(x0, t, eps)
    norm = x0**2 + eps**2
    # cos² + sin² = 1 to three roundings; each square is off by 2 eps of (|x_0| + |ε|)².
    assert_within(x_t**2 + v**2, norm, 16 * EPS * norm)
    wrong = ab * eps - (1 - ab).sqrt() * x0
    assert ((x_t**2 + wrong**2 - norm).abs() > 16 * EPS * norm).any()


def test_mean_gap_is_the_noise_error_scaled_by_beta_over_sqrt_alpha_one_minus_alpha_bar(
    diffusion,
):
    """eq-ch4-mean-gap: μ̃_t(x_t, x_0) - μ_θ(x_t, t) = β_t/(√α_t √(1-ᾱ_t)) (ε_θ - ε) for any
    network (unclipped), at every t; without the √α_t the factor is wrong."""
    t = torch.arange(T)
    x0, eps = randn(T, 4, seed=18), randn(T, 4, seed=19)
    x_t = diffusion.q_sample(x0, t, eps)

    def model(x, t):
        return torch.sin(3 * x) + t[:, None] / T

    eps_hat = model(x_t, t)
    gap = (
        diffusion.q_posterior_mean_variance(x0, x_t, t).mean
        - diffusion.p_mean_variance(model, x_t, t, clip_denoised=False).mean
    )
    alpha, beta = col(diffusion.alphas, t), col(diffusion.betas, t)
    ab = col(diffusion.alphas_cumprod, t)
    factor = beta / (alpha.sqrt() * (1 - ab).sqrt())
    signal = x_t / alpha.sqrt()
    # Both means have terms no larger than |x_0|, |x_t|/√α_t and the factor times |ε|, |ε_θ|.
    bound = rounding_tol(diffusion) * (
        x0.abs() + 2 * signal.abs() + factor * (eps.abs() + eps_hat.abs())
    )
    assert_within(gap, factor * (eps_hat - eps), bound)
    wrong = beta / (1 - ab).sqrt() * (eps_hat - eps)
    assert ((gap - wrong).abs() > bound).any()


def test_noise_error_is_snr_times_the_clean_data_error(diffusion):
    """eq-ch4-snr-weight: ‖ε - ε̂‖² = SNR(t) ‖x_0 - x̂_0‖² when x̂_0 comes from ε̂ by
    predict_x0_from_eps, at every t; the weight 1/SNR(t) fails."""
    t = torch.arange(T)
    x0, eps, eps_hat = randn(T, 4, seed=20), randn(T, 4, seed=21), randn(T, 4, seed=22)
    x_t = diffusion.q_sample(x0, t, eps)
    x0_hat = diffusion.predict_x0_from_eps(x_t, t, eps_hat)
    snr = diffusion.snr()[t]
    lhs = ((eps - eps_hat) ** 2).sum(dim=1)
    rhs = snr * ((x0 - x0_hat) ** 2).sum(dim=1)
    # x̂_0 is off by 8 eps |x_t|/√ᾱ_t + rounding_tol √(1/ᾱ_t - 1) |ε̂| (as predict_x0_from_eps
    # above); times √SNR(t) that is an error e in ε̂ - ε, and ‖a‖² - ‖a + e‖² ≤ 2‖a‖‖e‖ + ‖e‖².
    ab = col(diffusion.alphas_cumprod, t)
    e = torch.linalg.vector_norm(
        8 * EPS * x_t.abs() / (1 - ab).sqrt() + rounding_tol(diffusion) * eps_hat.abs(), dim=1
    )
    bound = 2 * lhs.sqrt() * e + e**2 + 4 * EPS * lhs
    assert_within(rhs, lhs, bound)
    assert ((((x0 - x0_hat) ** 2).sum(dim=1) / snr - lhs).abs() > bound).all()


def test_training_loss_is_the_noise_regression_on_the_jump():
    """eq-ch4-lsimple: with t and ε given, training_loss is the mean over coordinates of
    (ε - ε_θ(√ᾱ_t x_0 + √(1-ᾱ_t) ε, t))², returned in float32."""
    d = GaussianDiffusion(get_beta_schedule("linear", T))
    t = torch.arange(0, T, 7)
    x0, eps = randn(len(t), 2, 3, seed=23), randn(len(t), 2, 3, seed=24)
    seen = {}

    def model(x, t):
        seen.update(x_t=x, t=t)
        return 0.5 * x + torch.cos(x)

    loss = d.training_loss(model, x0, t=t, noise=eps)
    assert loss.dtype == torch.float32 and loss.shape == (len(t),)
    assert torch.equal(seen["t"], t)
    ab = d.alphas_cumprod[t].reshape(-1, 1, 1)
    terms = (ab.sqrt() * x0, (1 - ab).sqrt() * eps)
    assert_within(seen["x_t"], terms[0] + terms[1], 4 * EPS * (terms[0].abs() + terms[1].abs()))
    pred = model(terms[0] + terms[1], t)
    expected = ((eps - pred) ** 2).flatten(1).mean(dim=1)
    # The loss casts ε and ε_θ to float32 (2^-24 relative each) before squaring their gap.
    f32 = torch.finfo(torch.float32).eps
    per_coord = 2 * f32 * (eps.abs() + pred.abs()) * (eps - pred).abs()
    bound = per_coord.flatten(1).mean(dim=1) + 4 * f32 * expected
    assert_within(loss.double(), expected, bound)


def test_training_loss_averages_to_l_simple_over_uniform_t_and_gaussian_noise():
    """eq-ch4-lsimple: with t and ε drawn by training_loss, t is uniform on all T steps and the
    mean loss estimates E_t E_ε (ε - ε_θ(x_t, t))², here exact: for ε_θ = c x_t and a point
    x_0 it is (1 - c √(1-ᾱ_t))² + c² ᾱ_t x_0² averaged over t (Monte Carlo, z < 5)."""
    d = GaussianDiffusion(get_beta_schedule("linear", T))
    n, c, x_star = 200_000, 0.5, 0.8
    seen = {}

    def model(x, t):
        seen["t"] = t
        return c * x

    x0 = torch.full((n, 1), x_star, **F64)
    loss = d.training_loss(model, x0, generator=torch.Generator().manual_seed(10)).double()
    steps = seen["t"].double()
    assert steps.min() == 0 and steps.max() == T - 1
    uniform_std = math.sqrt((T**2 - 1) / 12)  # of the uniform law on T consecutive integers
    assert abs(steps.mean().item() - (T - 1) / 2) < mc_tolerance(uniform_std, n)
    ab = d.alphas_cumprod
    per_step = (1 - c * (1 - ab).sqrt()) ** 2 + c**2 * ab * x_star**2
    tol = mc_tolerance(loss.std().item(), n)
    assert abs(loss.mean().item() - per_step.mean().item()) < tol
    # Steps drawn from the first half only would give another expectation.
    assert abs(per_step[: T // 2].mean().item() - per_step.mean().item()) > tol


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
