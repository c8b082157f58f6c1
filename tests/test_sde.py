"""Specification of ddpm_lib.sde: VP/VE SDEs and the reverse-time samplers (Chapter 6)."""

import math

import pytest
import torch

from ddpm_lib.diffusion import GaussianDiffusion
from ddpm_lib.schedules import get_beta_schedule
from ddpm_lib.sde import (
    VESDE,
    VPSDE,
    DiscreteVPSDE,
    divergence,
    eps_model_score_fn,
    euler_maruyama_sample,
    ode_log_likelihood,
    probability_flow_sample,
    tweedie_denoise,
)
from helpers import mc_tolerance

T = 1000
MU, S2 = 0.5, 0.09  # 1-D Gaussian data N(MU, S2): every marginal and score is known exactly


def gaussian_marginal(sde, t):
    """Mean and variance of p_t when p_0 = N(MU, S2) under a VP-SDE."""
    ab = torch.exp(-sde.integrated_beta(t))
    return ab.sqrt() * MU, ab * S2 + 1 - ab


def gaussian_score(sde):
    def score(x, t):
        m, v = gaussian_marginal(sde, t)
        return -(x - m.reshape(-1, 1)) / v.reshape(-1, 1)

    return score


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_discrete_vp_sde_marginals_equal_alphas_cumprod_at_the_grid(name):
    betas = get_beta_schedule(name, T)
    sde, d = DiscreteVPSDE(betas), GaussianDiffusion(betas)
    i = torch.arange(1, T + 1, dtype=torch.float64)
    mean, std = sde.marginal_prob(torch.ones(T, dtype=torch.float64), i / T)
    torch.testing.assert_close(mean, d.sqrt_alphas_cumprod, rtol=1e-12, atol=0)
    torch.testing.assert_close(std, d.sqrt_one_minus_alphas_cumprod, rtol=1e-12, atol=0)


def test_discrete_vp_sde_beta_is_the_log_slope_of_alpha_bar():
    sde = DiscreteVPSDE(get_beta_schedule("linear", T))
    t = torch.tensor([0.2503, 0.7771], dtype=torch.float64)  # away from the grid's kinks
    h = 1e-7
    slope = (sde.integrated_beta(t + h) - sde.integrated_beta(t - h)) / (2 * h)
    torch.testing.assert_close(slope, sde.beta(t), rtol=1e-6, atol=0)


def test_linear_vp_sde_is_the_continuum_limit_of_the_discrete_schedule():
    # β(i/T)/T = β_min/T + (i/T)(β_max-β_min)/T ≈ DDPM's β_i for β_min = Tβ_1, β_max = Tβ_T.
    d = GaussianDiffusion(get_beta_schedule("linear", T))
    sde = VPSDE(beta_min=T * 1e-4, beta_max=T * 0.02)
    i = torch.arange(1, T + 1, dtype=torch.float64)
    # -log ᾱ_i = Σ β_j + Σ β_j²/2 + ..., B(i/T) = ∫β: they differ by the quadratic terms
    # (Σ β_j²/2 ≤ T β_max²/2 = 0.2) and by the grid offset ≤ (β_max-β_min)/(2T) per unit time.
    gap = (sde.integrated_beta(i / T) + torch.log(d.alphas_cumprod)).abs()
    bound = 0.5 * (d.betas**2).cumsum(0) / (1 - 0.02) + (sde.beta_max - sde.beta_min) / (2 * T)
    assert (gap <= bound).all()


@pytest.mark.parametrize("sde", [VPSDE(), DiscreteVPSDE(get_beta_schedule("cosine", T))])
def test_vp_variance_solves_the_variance_ode(sde):
    # Var of p_t(x|x_0) solves dv/dt = β(t)(1 - v) for any VP-SDE; checked by central
    # differences away from the grid points (error O(h²) ≈ 1e-12 for h = 1e-6).
    t = torch.tensor([0.1234, 0.5011, 0.8777], dtype=torch.float64)
    h = 1e-6

    def var(s):
        return sde.marginal_prob(torch.zeros_like(s), s)[1] ** 2

    dv = (var(t + h) - var(t - h)) / (2 * h)
    torch.testing.assert_close(dv, sde.beta(t) * (1 - var(t)), rtol=1e-6, atol=0)


def test_ve_sde_variance_grows_as_g_squared_and_reaches_sigma_max():
    sde = VESDE(0.01, 50.0)
    t = torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64)
    _, std = sde.marginal_prob(torch.zeros(3, dtype=torch.float64), t)
    assert std[0].item() == pytest.approx(0.01) and std[-1].item() == pytest.approx(50.0)
    h = 1e-6
    tm = torch.tensor([0.42], dtype=torch.float64)
    dvar = (sde.sigma(tm + h) ** 2 - sde.sigma(tm - h) ** 2) / (2 * h)
    _, g = sde.sde(torch.zeros(1, dtype=torch.float64), tm)
    torch.testing.assert_close(dvar, g**2, rtol=1e-6, atol=0)


def test_eps_model_score_is_minus_eps_over_sigma_at_grid_points():
    betas = get_beta_schedule("linear", T)
    sde, d = DiscreteVPSDE(betas), GaussianDiffusion(betas)

    def model(x, t):
        return torch.cos(x) * (t.reshape(-1, 1) + 1) / T

    score = eps_model_score_fn(sde, model, T)
    x = torch.randn(3, 4, dtype=torch.float64)
    idx = torch.tensor([0, 499, 999])
    got = score(x, (idx + 1).double() / T)
    torch.testing.assert_close(got, d.eps_to_score(model(x, idx), idx), rtol=1e-6, atol=1e-9)


def test_tweedie_denoiser_gives_the_posterior_mean_for_gaussian_data():
    sde = VPSDE()
    t = torch.tensor([0.3, 0.3], dtype=torch.float64)
    x = torch.tensor([[-0.4], [1.2]], dtype=torch.float64)
    ab = torch.exp(-sde.integrated_beta(t)).reshape(-1, 1)
    # E[x_0 | x_t] for x_0 ~ N(MU, S2), x_t = √ᾱ x_0 + √(1-ᾱ) ε (Gaussian conditioning).
    expected = MU + S2 * ab.sqrt() / (ab * S2 + 1 - ab) * (x - ab.sqrt() * MU)
    got = tweedie_denoise(sde, gaussian_score(sde), x, t)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def _flow_error(method, steps):
    # Exact probability-flow map for Gaussian data: x(t) - m(t) = √(v(t)/v(1)) (x(1) - m(1)).
    sde = VPSDE()
    x1 = torch.linspace(-2, 2, 9, dtype=torch.float64).reshape(-1, 1)
    t_end = 1e-3
    got = probability_flow_sample(
        sde, gaussian_score(sde), x1, steps, t_end=t_end, method=method, denoise=False,
        progress=False,
    )  # fmt: skip
    one, end = torch.ones(1, dtype=torch.float64), torch.full((1,), t_end, dtype=torch.float64)
    (m1, v1), (me, ve) = gaussian_marginal(sde, one), gaussian_marginal(sde, end)
    exact = me + (ve / v1).sqrt() * (x1 - m1)
    return (got - exact).abs().max().item()


@pytest.mark.parametrize("method, order", [("euler", 1), ("heun", 2)])
def test_probability_flow_solver_converges_at_its_order(method, order):
    # Halving the step divides the global error by 2^order, up to O(h) corrections.
    e1, e2, e3 = (_flow_error(method, n) for n in (100, 200, 400))
    for coarse, fine in ((e1, e2), (e2, e3)):
        assert math.log2(coarse / fine) == pytest.approx(order, abs=0.15)


def test_euler_maruyama_matches_its_exact_moment_recursion_and_converges():
    # With a Gaussian score each EM step is affine: x' = A x + b + c z with
    # A = 1 + hβ(½ - 1/v), b = hβ m/v, c = √(βh) (m, v the marginal at the step's time).
    # Its mean and variance therefore follow an exact recursion, derived here by hand.
    sde = VPSDE()
    t_end = 1e-3

    def marginal(t):  # plain floats, from B(t) = β_min t + ½(β_max-β_min)t²
        ab = math.exp(-(sde.beta_min * t + 0.5 * (sde.beta_max - sde.beta_min) * t * t))
        return math.sqrt(ab) * MU, ab * S2 + 1 - ab

    def recursion(steps):
        mean, var = 0.0, 1.0
        for k in range(steps):
            t = 1.0 + k * (t_end - 1.0) / steps
            h = (1.0 - t_end) / steps
            beta = sde.beta_min + t * (sde.beta_max - sde.beta_min)
            m, v = marginal(t)
            a = 1 + h * beta * (0.5 - 1 / v)
            mean, var = a * mean + h * beta * m / v, a * a * var + beta * h
        return mean, var

    n, steps = 50_000, 200
    x_1 = torch.randn(n, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x = euler_maruyama_sample(
        sde, gaussian_score(sde), x_1, steps, t_end=t_end, denoise=False,
        generator=torch.Generator().manual_seed(0), progress=False,
    )  # fmt: skip
    mean, var = recursion(steps)
    assert abs(x.mean().item() - mean) < mc_tolerance(math.sqrt(var), n)
    assert abs(x.var().item() - var) < mc_tolerance(math.sqrt(2) * var, n - 1)
    # EM is weakly first order: the moment errors against the true marginal halve with h.
    m_true, v_true = marginal(t_end)
    errs = []
    for s in (400, 800, 1600):
        mean_s, var_s = recursion(s)
        errs.append(abs(mean_s - m_true) + abs(var_s - v_true))
    for coarse, fine in zip(errs, errs[1:], strict=False):
        assert math.log2(coarse / fine) == pytest.approx(1.0, abs=0.15)


@pytest.mark.parametrize("sampler", [euler_maruyama_sample, probability_flow_sample])
def test_oracle_eps_model_drives_sde_samplers_to_the_data_point(sampler, oracle_eps):
    betas = get_beta_schedule("linear", T)
    sde, d = DiscreteVPSDE(betas), GaussianDiffusion(betas)
    x_star = torch.tensor([[0.3, -0.7, 0.9]], dtype=torch.float64)
    oracle = oracle_eps(d, x_star)

    def model(x, t):  # the oracle is exact at fractional steps too: use ᾱ of the SDE
        tt = (t.double() + 1) / T
        mean, std = sde.marginal_prob(x_star.expand_as(x), tt)
        return (x - mean) / std.reshape(-1, 1)

    score = eps_model_score_fn(sde, model, T)
    x = sampler(
        sde, score, torch.randn(4, 3, dtype=torch.float64), 100, t_end=1 / T, progress=False
    )
    torch.testing.assert_close(x, x_star.expand(4, 3), rtol=0, atol=1e-9)
    # At grid points the SDE oracle and the discrete oracle agree.
    xt = torch.randn(2, 3, dtype=torch.float64)
    idx = torch.tensor([10, 600])
    torch.testing.assert_close(model(xt, idx.double()), oracle(xt, idx), rtol=1e-9, atol=1e-12)


def test_bad_sde_arguments_are_rejected():
    with pytest.raises(ValueError, match="beta_min ≤ beta_max"):
        VPSDE(beta_min=5.0, beta_max=1.0)
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        VESDE(1.0, 0.5)
    with pytest.raises(ValueError, match=r"t_end must lie in \(0, 1\)"):
        probability_flow_sample(VPSDE(), lambda x, t: -x, torch.zeros(2, 1), 5, t_end=0.0)
    with pytest.raises(ValueError, match="unknown ODE method"):
        probability_flow_sample(VPSDE(), lambda x, t: -x, torch.zeros(2, 1), method="rk4")


@pytest.mark.parametrize("sampler", [euler_maruyama_sample, probability_flow_sample])
def test_sde_samplers_hand_each_step_to_the_callback_with_tweedies_estimate(sampler):
    sde, seen = VPSDE(), []
    x_1 = torch.randn(3, 1, dtype=torch.float64)
    score = gaussian_score(sde)
    sampler(sde, score, x_1, 4, denoise=False, callback=seen.append, progress=False)
    assert [s.i for s in seen] == [0, 1, 2, 3] and torch.equal(seen[0].x_t, x_1)
    t = torch.ones(3, dtype=torch.float64)
    torch.testing.assert_close(seen[0].pred_x0, tweedie_denoise(sde, score, x_1, t))


def test_the_score_of_an_eps_model_refuses_time_zero_where_it_is_infinite():
    sde = DiscreteVPSDE(get_beta_schedule("linear", T))
    score = eps_model_score_fn(sde, lambda x, t: torch.ones_like(x), T)
    x = torch.zeros(2, 1, dtype=torch.float64)
    with pytest.raises(ValueError, match="marginal std σ_t is 0.*t_end > 0"):
        score(x, torch.tensor([0.5, 0.0], dtype=torch.float64))
    assert torch.isfinite(score(x, torch.tensor([0.5, 1e-3], dtype=torch.float64))).all()


def test_tweedie_refuses_time_zero():
    sde = VPSDE()
    with pytest.raises(ValueError, match="tweedie_denoise.*σ_t is 0"):
        tweedie_denoise(sde, gaussian_score(sde), torch.zeros(1, 1), torch.zeros(1))


# ----------------------------------------------------------------------------- likelihood


def test_exact_divergence_of_a_linear_map_is_its_trace():
    a = torch.randn(3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = torch.randn(4, 3, dtype=torch.float64)
    _, div = divergence(lambda y, t: y @ a.T, x, torch.zeros(4))
    torch.testing.assert_close(div, torch.full((4,), a.trace().item(), dtype=torch.float64))


def test_hutchinson_divergence_is_unbiased_within_its_standard_error():
    # For Gaussian probes, εᵀAε has mean tr A and variance 2 tr(A_s²), A_s = (A + Aᵀ)/2.
    g = torch.Generator().manual_seed(1)
    a = torch.randn(5, 5, generator=g, dtype=torch.float64)
    n = 20_000
    x = torch.randn(n, 5, generator=g, dtype=torch.float64)
    probe = torch.randn(n, 5, generator=g, dtype=torch.float64)
    _, est = divergence(lambda y, t: y @ a.T, x, torch.zeros(n), probe)
    a_s = (a + a.T) / 2
    std = math.sqrt(2 * (a_s @ a_s).trace().item())
    assert abs(est.mean().item() - a.trace().item()) <= mc_tolerance(std, n)


def _gaussian_data_sde(mu: float, s: float):
    # Data N(mu, s²) per coordinate under the VP-SDE: x(t) ~ N(m mu, m² s² + σ²) exactly.
    sde = VPSDE(0.1, 20.0)

    def var(t):
        m, std = sde.marginal_prob(torch.ones_like(t), t)
        return m, m**2 * s**2 + std**2

    def score(x, t):
        m, v = var(t)
        return -(x - m[:, None] * mu) / v[:, None]

    def log_p(x, t):
        m, v = var(t)
        z = (x - m[:, None] * mu) ** 2 / v[:, None]
        return (-0.5 * z - 0.5 * torch.log(2 * math.pi * v[:, None])).sum(1)

    return sde, score, log_p


def test_ode_likelihood_of_gaussian_data_converges_at_second_order_to_the_exact_density():
    # With the exact score and the exact marginal at t = 1 as prior, the only error left is
    # Heun's discretization, O(h²): doubling the steps must cut it by about 4 (order 2).
    sde, score, log_p = _gaussian_data_sde(mu=0.7, s=0.4)
    x = torch.tensor([[0.1, 1.2], [-0.5, 0.9], [1.5, 0.0]], dtype=torch.float64)
    t_start = 1e-3
    exact = log_p(x, torch.full((3,), t_start, dtype=torch.float64))

    def prior(y):
        return log_p(y, torch.ones(y.shape[0], dtype=torch.float64))

    errors = []
    for steps in (25, 50, 100):
        out = ode_log_likelihood(
            sde, score, x, steps, t_start=t_start, prior_logp=prior, progress=False
        )
        errors.append((out.log_likelihood - exact).abs().max().item())
    orders = [math.log2(errors[i] / errors[i + 1]) for i in range(2)]
    assert all(1.7 < p < 2.3 for p in orders), (errors, orders)


def test_ode_likelihood_refuses_a_start_time_outside_zero_one():
    sde, score, _ = _gaussian_data_sde(0.0, 1.0)
    with pytest.raises(ValueError, match="t_start"):
        ode_log_likelihood(sde, score, torch.zeros(2, 2), t_start=0.0)


def test_ode_likelihood_takes_its_prior_from_the_sde_so_a_ve_endpoint_is_scored_right():
    # Data N(MU, S2) per coordinate under the VE-SDE: dx = g dW adds σ(t)² - σ_min² of variance,
    # so p_t = N(MU, S2 + σ(t)² - σ_min²) exactly and so is its score.
    sde = VESDE(sigma_min=0.01, sigma_max=50.0)

    def var(t):
        return S2 + sde.sigma(t) ** 2 - sde.sigma_min**2

    def score(x, t):
        return -(x - MU) / var(t)[:, None]

    def log_p(x, t):
        v = var(t)[:, None]
        return (-0.5 * (x - MU) ** 2 / v - 0.5 * torch.log(2 * math.pi * v)).sum(1)

    x = torch.tensor([[0.1, 1.2], [-0.5, 0.9], [1.5, 0.0]], dtype=torch.float64)
    t_start, ones = 1e-3, torch.ones(3, dtype=torch.float64)
    exact = log_p(x, torch.full((3,), t_start, dtype=torch.float64))
    default = ode_log_likelihood(sde, score, x, 100, t_start=t_start, progress=False)
    true_prior = ode_log_likelihood(
        sde, score, x, 100, t_start=t_start, prior_logp=lambda y: log_p(y, ones), progress=False
    )
    # The default prior is the SDE's N(0, σ_max² I) ...
    mismatch = sde.prior_logp(default.x1) - log_p(default.x1, ones)
    torch.testing.assert_close(default.prior_logp, sde.prior_logp(default.x1))
    torch.testing.assert_close(default.log_likelihood - true_prior.log_likelihood, mismatch)
    # ... close to the true p_1 (mean MU and variance S2 off a variance of σ_max² = 2500), so
    # the result is off by that mismatch and Heun's discretization error (what the exact prior
    # leaves), no more.
    heun = (true_prior.log_likelihood - exact).abs()
    assert ((default.log_likelihood - exact).abs() <= heun + mismatch.abs() + 1e-12).all()
    # A standard-normal prior, the old default, scores the wide VE end point absurdly.
    vp_prior = VPSDE().prior_logp
    wrong = ode_log_likelihood(
        sde, score, x, 100, t_start=t_start, prior_logp=vp_prior, progress=False
    )
    assert ((wrong.log_likelihood - exact).abs() > 100).all()


def test_ve_prior_log_density_is_the_wide_gaussian():
    sde = VESDE(0.01, 50.0)
    z = torch.randn(4, 3, dtype=torch.float64)
    normal = torch.distributions.Normal(torch.zeros(3, dtype=torch.float64), 50.0)
    torch.testing.assert_close(sde.prior_logp(z), normal.log_prob(z).sum(1))
