"""Specification of ddpm_lib.sde: VP/VE SDEs and the reverse-time samplers (Chapter 6)."""

import math

import pytest
import torch

from ddpm_lib.diffusion import GaussianDiffusion
from ddpm_lib.oracles import GaussianOracle
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
    """eq-ch6-marginals: at t = i/T the mean coefficient is √ᾱ_i and the std √(1-ᾱ_i)."""
    betas = get_beta_schedule(name, T)
    sde, d = DiscreteVPSDE(betas), GaussianDiffusion(betas)
    i = torch.arange(1, T + 1, dtype=torch.float64)
    mean, std = sde.marginal_prob(torch.ones(T, dtype=torch.float64), i / T)
    torch.testing.assert_close(mean, d.sqrt_alphas_cumprod, rtol=1e-12, atol=0)
    torch.testing.assert_close(std, d.sqrt_one_minus_alphas_cumprod, rtol=1e-12, atol=0)


def test_discrete_vp_sde_beta_is_the_log_slope_of_alpha_bar():
    """eq-ch6-marginals: ᾱ(t) = e^{-B(t)} with dB/dt = β(t), between the grid points."""
    sde = DiscreteVPSDE(get_beta_schedule("linear", T))
    t = torch.tensor([0.2503, 0.7771], dtype=torch.float64)  # away from the grid's kinks
    h = 1e-7
    slope = (sde.integrated_beta(t + h) - sde.integrated_beta(t - h)) / (2 * h)
    torch.testing.assert_close(slope, sde.beta(t), rtol=1e-6, atol=0)


def test_linear_vp_sde_is_the_continuum_limit_of_the_discrete_schedule():
    """eq-ch6-marginals: the linear VP-SDE's ᾱ(i/T) = e^{-B(i/T)} is near DDPM's ᾱ_i."""
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
    """eq-ch6-moment-odes: dv/dt = β(t)(1 - v), by central differences."""
    # Var of p_t(x|x_0) solves dv/dt = β(t)(1 - v) for any VP-SDE; checked by central
    # differences away from the grid points (error O(h²) ≈ 1e-12 for h = 1e-6).
    t = torch.tensor([0.1234, 0.5011, 0.8777], dtype=torch.float64)
    h = 1e-6

    def var(s):
        return sde.marginal_prob(torch.zeros_like(s), s)[1] ** 2

    dv = (var(t + h) - var(t - h)) / (2 * h)
    torch.testing.assert_close(dv, sde.beta(t) * (1 - var(t)), rtol=1e-6, atol=0)


def test_ve_sde_variance_grows_as_g_squared_and_reaches_sigma_max():
    """eq-ch6-vesde: σ runs from σ_min to σ_max and g² = d[σ²]/dt."""
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
    """eq-ch6-score-eps: an ε-model's score is -ε̂/σ(t), Chapter 4's eps_to_score on the grid."""
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
    """eq-ch6-score-eps, eq-ch4-tweedie: (x + σ² ∇log p_t)/√ᾱ is E[x_0 | x_t] (Gaussian data)."""
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
    """eq-ch6-pf-ode, eq-ch6-flow-map: the solvers converge to the exact Gaussian flow map."""
    # Halving the step divides the global error by 2^order, up to O(h) corrections.
    e1, e2, e3 = (_flow_error(method, n) for n in (100, 200, 400))
    for coarse, fine in ((e1, e2), (e2, e3)):
        assert math.log2(coarse / fine) == pytest.approx(order, abs=0.15)


def test_euler_maruyama_matches_its_exact_moment_recursion_and_converges(one_thread):
    """eq-ch6-em, eq-ch6-reverse-sde: Euler–Maruyama on the reverse SDE has the moments of its
    exact recursion and converges weakly at first order to the marginal p_{t_end}."""
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
    """eq-ch6-cov: log p_0(x) = log p_1(x(1)) + ∫ ∇·F dt, to Heun's order on Gaussian data."""
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
    """eq-ch6-cov: the log p_1(x(1)) term is the SDE's own prior."""
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


# ----------------------------------------------------------------------------- the equations
# Exact identities of Chapter 6, checked with autograd in float64 on data N(MU, S2), whose every
# marginal is known: x(t) = c(t) x_0 + σ(t) ε, with c(t) and σ(t) from the SDE's marginal_prob.

EPS64 = torch.finfo(torch.float64).eps
TIMES = torch.tensor([0.0503, 0.3017, 0.7011, 0.9507], dtype=torch.float64)  # off T's grid
SDES = [VPSDE(), DiscreteVPSDE(get_beta_schedule("cosine", T)), VESDE(0.01, 50.0)]
SDE_IDS = ["vp", "discrete-vp-cosine", "ve"]


def data_law(sde, t):
    """Mean and variance of p_t for data N(MU, S2): c(t) MU and c(t)² S2 + σ(t)²."""
    c, std = sde.marginal_prob(torch.ones_like(t), t)
    return c * MU, c**2 * S2 + std**2


def data_density(sde, x, t):
    m, v = (u[:, None] for u in data_law(sde, t))
    return torch.exp(-((x - m) ** 2) / (2 * v)) / torch.sqrt(2 * math.pi * v)


def data_score(sde):
    def score(x, t):
        m, v = data_law(sde, t)
        return -(x - m[:, None]) / v[:, None]

    return score


def grid_points():
    """x [20, 1] and t [20]: five points x ∈ [-2, 2] at each of the TIMES."""
    x = torch.linspace(-2, 2, 5, dtype=torch.float64).repeat(len(TIMES))[:, None]
    return x, TIMES.repeat_interleave(5)


def fokker_planck_terms(sde, velocity, x, t):
    """∂_t p, ∂_x (F p) and ½ G² ∂²_x p of the data density at (x, t), for the drift F and
    diffusion G returned by ``velocity(x, t)``; and the size of the terms the sums are made of,
    p g²/v (1 + (x-m)²/v), against which their rounding is measured."""
    x, t = x.clone().requires_grad_(True), t.clone().requires_grad_(True)
    p = data_density(sde, x, t)
    (dp_dt,) = torch.autograd.grad(p.sum(), t, retain_graph=True)
    drift, g = velocity(x, t)
    (flux,) = torch.autograd.grad((drift * p).sum(), x, retain_graph=True)
    (dp_dx,) = torch.autograd.grad(p.sum(), x, create_graph=True)
    (d2p,) = torch.autograd.grad(dp_dx.sum(), x)
    m, v = (u[:, None] for u in data_law(sde, t.detach()))
    g2 = sde.sde(x.detach(), t.detach())[1][:, None] ** 2
    size = p.detach() * g2 / v * (1 + (x.detach() - m) ** 2 / v)
    return dp_dt[:, None], flux, 0.5 * g[:, None] ** 2 * d2p, size


def d_dt(y, t):
    """dy/dt per item by autograd, for y [B] a function of t [B]; zero if y does not use t."""
    if not y.requires_grad:
        return torch.zeros_like(y)
    return torch.autograd.grad(y.sum(), t, retain_graph=True)[0]


@pytest.mark.parametrize("sde", SDES, ids=SDE_IDS)
def test_marginals_follow_the_moment_equations_of_the_sdes_drift_and_diffusion(sde):
    """eq-ch6-sde, eq-ch6-moment-odes: each SDE has a linear drift f(x, t) = a(t) x and
    diffusion g(t); its marginal p(x(t) | x_0) then has mean m and variance v with
    dm/dt = a m and dv/dt = 2 a v + g² (for VP, a = -½β: dv/dt = β(1 - v)), from m(0) = x_0 and
    v(0) = 0 (VP) or σ_min² (VE, whose x(0) is data blurred at σ_min). Derivatives by autograd."""
    x0 = torch.full((len(TIMES),), 1.7, dtype=torch.float64)
    t = TIMES.clone().requires_grad_(True)
    mean, std = sde.marginal_prob(x0, t)
    var = std**2
    dm, dv = d_dt(mean, t), d_dt(var, t)
    x = torch.randn(len(TIMES), 3, dtype=torch.float64)
    drift, g = sde.sde(x, TIMES)
    a = sde.sde(torch.ones(len(TIMES), 1, dtype=torch.float64), TIMES)[0][:, 0]
    torch.testing.assert_close(drift, a[:, None] * x, rtol=4 * EPS64, atol=0)
    mean, var = mean.detach(), var.detach()
    torch.testing.assert_close(dm, a * mean, rtol=1e-12, atol=0)
    size = (2 * a * var).abs() + g**2  # dv/dt is a difference of these
    assert ((dv - (2 * a * var + g**2)).abs() <= 1e-12 * size).all()
    zero = torch.zeros(1, dtype=torch.float64)
    m0, s0 = sde.marginal_prob(torch.full((1,), 1.7, dtype=torch.float64), zero)
    assert m0.item() == 1.7
    assert s0.item() == (sde.sigma_min if isinstance(sde, VESDE) else 0.0)


@pytest.mark.parametrize("sde", SDES[:2], ids=SDE_IDS[:2])
def test_vp_sde_drift_is_minus_half_beta_x_and_its_diffusion_root_beta(sde):
    """eq-ch6-vpsde: f(x, t) = -½ β(t) x and g(t) = √β(t); for the linear VPSDE
    β(t) = β_min + t (β_max - β_min)."""
    x = torch.randn(len(TIMES), 2, dtype=torch.float64)
    beta = sde.beta(TIMES)
    drift, g = sde.sde(x, TIMES)
    torch.testing.assert_close(drift, -0.5 * beta[:, None] * x, rtol=0, atol=0)
    torch.testing.assert_close(g, beta.sqrt(), rtol=0, atol=0)
    if type(sde) is VPSDE:
        want = sde.beta_min + TIMES * (sde.beta_max - sde.beta_min)
        torch.testing.assert_close(beta, want, rtol=2 * EPS64, atol=0)


def test_ddpm_forward_step_is_an_euler_maruyama_step_of_the_vp_sde_up_to_beta_squared():
    """eq-ch6-em, eq-ch6-vpsde (Proposition "DDPM's recurrence is Euler–Maruyama"): with
    β_i = β(t_i)/T, the EM step x + f h + g √h z (h = 1/T, coefficients at t_i) and DDPM's
    x_i = √(1-β_i) x + √β_i z share the noise term and differ in the factor of x by
    1 - β_i/2 - √(1-β_i) = β_i²/(4(1 - β_i/2 + √(1-β_i))), in [β_i²/8, β_i²/(8(1-β_i))]."""
    sde = VPSDE(beta_min=T * 1e-4, beta_max=T * 0.02)
    i = torch.arange(1, T + 1, dtype=torch.float64)
    d = GaussianDiffusion(sde.beta(i / T) / T)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(T, 2, dtype=torch.float64, generator=gen)
    z = torch.randn(T, 2, dtype=torch.float64, generator=gen)
    drift, g = sde.sde(x, i / T)
    em = x + drift / T + g[:, None] * math.sqrt(1 / T) * z
    ddpm = d.q_step(x, torch.arange(T), z)
    b = d.betas[:, None]
    gap = b**2 / (4 * (1 - b / 2 + (1 - b).sqrt()))  # = 1 - b/2 - √(1-b), without cancellation
    rounding = 8 * EPS64 * (x.abs() + b.sqrt() * z.abs())  # a few ulps of the terms
    assert ((em - ddpm - gap * x).abs() <= rounding).all()
    assert (b**2 / 8 <= gap).all() and (gap <= b**2 / (8 * (1 - b))).all()


@pytest.mark.parametrize("sde", SDES[:2], ids=SDE_IDS[:2])
def test_vp_marginals_are_exp_of_minus_the_integrated_beta(sde):
    """eq-ch6-marginals: mean e^{-B(t)/2} x_0 and variance 1 - e^{-B(t)} with B(t) = ∫_0^t β,
    here integrated independently by the midpoint rule on the cells of T's grid (exact for a
    linear β and for the piecewise constant β of DiscreteVPSDE); ᾱ(t) = e^{-B(t)}."""
    for t in TIMES.tolist():
        edges = torch.cat([torch.arange(0, math.floor(t * T) + 1, dtype=torch.float64) / T,
                           torch.tensor([t], dtype=torch.float64)])  # fmt: skip
        mids, widths = (edges[1:] + edges[:-1]) / 2, edges[1:] - edges[:-1]
        big_b = (sde.beta(mids) * widths).sum().item()
        tt = torch.tensor([t], dtype=torch.float64)
        mean, std = sde.marginal_prob(torch.full((1,), 1.7, dtype=torch.float64), tt)
        assert mean.item() == pytest.approx(math.exp(-big_b / 2) * 1.7, rel=1e-12)
        assert std.item() ** 2 == pytest.approx(-math.expm1(-big_b), rel=1e-12)
        assert sde.alpha_bar(tt).item() == pytest.approx(math.exp(-big_b), rel=1e-12)


@pytest.mark.parametrize("sde", SDES, ids=SDE_IDS)
def test_the_data_density_solves_the_fokker_planck_equation(sde):
    """eq-ch6-fp: ∂_t p_t = -∂_x (f p_t) + ½ g² ∂²_x p_t for the SDE's own f and g, with
    p_t = N(c MU, c² S2 + σ²) from its marginal_prob (float64, autograd). With ½ g² replaced by
    g² the equation fails."""
    x, t = grid_points()
    dp_dt, flux, diffusion, size = fokker_planck_terms(sde, sde.sde, x, t)
    assert ((dp_dt + flux - diffusion).abs() <= 1e-12 * size).all()
    assert ((dp_dt + flux - 2 * diffusion).abs() > 1e-3 * size).any()


@pytest.mark.parametrize("sde", SDES, ids=SDE_IDS)
def test_probability_flow_velocity_carries_the_marginals(sde):
    """eq-ch6-pf-ode, eq-ch6-fp: the ODE's velocity F = f - ½ g² ∇log p_t (ReverseSDE with
    probability_flow, no noise) solves the continuity equation ∂_t p_t + ∂_x (F p_t) = 0 of the
    exact marginals. The reverse SDE's drift f - g² ∇log p_t, without its noise, does not."""
    x, t = grid_points()
    ode = sde.reverse(data_score(sde), probability_flow=True)
    assert (ode.sde(x, t)[1] == 0).all()
    dp_dt, flux, _, size = fokker_planck_terms(sde, ode.sde, x, t)
    assert ((dp_dt + flux).abs() <= 1e-12 * size).all()
    wrong = sde.reverse(data_score(sde), probability_flow=False)
    dp_dt, flux, _, size = fokker_planck_terms(sde, wrong.sde, x, t)
    assert ((dp_dt + flux).abs() > 1e-3 * size).any()


@pytest.mark.parametrize("sde", SDES, ids=SDE_IDS)
def test_reverse_sde_run_backwards_has_the_forward_marginals(sde):
    """eq-ch6-reverse-sde, eq-ch6-fp: dx = [f - g² ∇log p_t] dt + g dW̄ run from t = 1 down has
    the Fokker–Planck equation ∂_t p = -∂_x (F p) - ½ g² ∂²_x p (time reversed), which the exact
    marginals p_t solve. With ½ g² in the drift (the ODE's) and the noise kept, they do not."""
    x, t = grid_points()
    rev = sde.reverse(data_score(sde), probability_flow=False)
    drift, g = rev.sde(x, t)
    f, g_forward = sde.sde(x, t)
    score = data_score(sde)(x, t)
    torch.testing.assert_close(drift, f - g_forward[:, None] ** 2 * score, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(g, g_forward, rtol=0, atol=0)
    dp_dt, flux, diffusion, size = fokker_planck_terms(sde, rev.sde, x, t)
    assert ((dp_dt + flux + diffusion).abs() <= 1e-12 * size).all()

    def half_drift_with_noise(y, s):
        return sde.reverse(data_score(sde), probability_flow=True).sde(y, s)[0], sde.sde(y, s)[1]

    dp_dt, flux, diffusion, size = fokker_planck_terms(sde, half_drift_with_noise, x, t)
    assert ((dp_dt + flux + diffusion).abs() > 1e-3 * size).any()


def test_euler_maruyama_steps_are_x_minus_reverse_drift_h_plus_g_root_h_z():
    """eq-ch6-em, eq-ch6-reverse-sde: each step of euler_maruyama_sample is
    x ← x - [f - g² s](x, t) h + g(t) √h z on the grid 1 = t_0 > ... > t_N = t_end, with
    f = -½βx, g = √β written here from β(t) = β_min + t (β_max - β_min)."""
    sde = VPSDE(0.1, 20.0)
    score = gaussian_score(sde)
    x_1 = torch.linspace(-2, 2, 5, dtype=torch.float64)[:, None]
    got = euler_maruyama_sample(
        sde, score, x_1, 2, t_end=0.2, denoise=False,
        generator=torch.Generator().manual_seed(4), progress=False,
    )  # fmt: skip
    gen, x = torch.Generator().manual_seed(4), x_1.clone()
    for t, h in ((1.0, 0.4), (0.6, 0.4)):
        beta = 0.1 + t * (20.0 - 0.1)
        s = score(x, torch.full((5,), t, dtype=torch.float64))
        z = torch.randn(x.shape, dtype=x.dtype, generator=gen)
        x = x - (-0.5 * beta * x - beta * s) * h + math.sqrt(beta * h) * z
    torch.testing.assert_close(got, x, rtol=1e-13, atol=1e-13)


def test_eps_model_score_of_the_exact_eps_is_the_exact_score():
    """eq-ch6-score-eps: ∇ log p_t = -E[ε | x(t)]/σ(t). The exact E[ε | x_t] of Gaussian data
    (GaussianOracle, by Gaussian conditioning, no score involved) through eps_model_score_fn
    is the autograd score of the exact marginal density at the grid times t = i/T."""
    betas = get_beta_schedule("linear", T)
    sde, d = DiscreteVPSDE(betas), GaussianDiffusion(betas)
    oracle = GaussianOracle(d, S2, mean=MU)
    score = eps_model_score_fn(sde, lambda x, tf: oracle(x, tf.round().long()), T)
    i = torch.tensor([1, 10, 500, 1000, 1, 10, 500, 1000])
    t = i.double() / T
    x = torch.linspace(-2, 2, 8, dtype=torch.float64)[:, None].requires_grad_(True)
    (want,) = torch.autograd.grad(torch.log(data_density(sde, x, t)).sum(), x)
    torch.testing.assert_close(score(x.detach(), t), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("sde", SDES, ids=SDE_IDS)
def test_gaussian_flow_map_solves_the_probability_flow_ode(sde):
    """eq-ch6-flow-map: x(t) = m(t) + √(v(t)/v(1)) (x(1) - m(1)) has dx/dt equal to the
    library's probability-flow velocity f - ½ g² ∇log p_t at (x(t), t) (autograd in t)."""
    x1 = torch.linspace(-2, 2, 5, dtype=torch.float64).repeat(len(TIMES))[:, None]
    t = TIMES.repeat_interleave(5).requires_grad_(True)
    (m1, v1), (m, v) = data_law(sde, torch.ones_like(t)), data_law(sde, t)
    x = m[:, None] + (v / v1).sqrt()[:, None] * (x1 - m1[:, None])
    (dx_dt,) = torch.autograd.grad(x.sum(), t)
    velocity = sde.reverse(data_score(sde), probability_flow=True).sde(x.detach(), t.detach())[0]
    torch.testing.assert_close(dx_dt[:, None], velocity, rtol=1e-12, atol=1e-12)


def test_ve_sde_is_driftless_with_g_squared_the_rate_of_sigma_squared():
    """eq-ch6-vesde: f = 0, σ(t) = σ_min (σ_max/σ_min)^t, g² = d[σ²]/dt (autograd), and
    p(x(t) | x_0) has mean x_0 and std σ(t)."""
    sde = VESDE(0.01, 50.0)
    t = TIMES.clone().requires_grad_(True)
    sigma = sde.sigma(t)
    (dsigma2,) = torch.autograd.grad((sigma**2).sum(), t)
    x = torch.randn(len(TIMES), 3, dtype=torch.float64)
    drift, g = sde.sde(x, TIMES)
    assert (drift == 0).all()
    torch.testing.assert_close(g**2, dsigma2, rtol=1e-13, atol=0)
    torch.testing.assert_close(sigma.detach(), 0.01 * 5000.0**TIMES, rtol=1e-13, atol=0)
    mean, std = sde.marginal_prob(x, TIMES)
    assert torch.equal(mean, x) and torch.equal(std, sigma.detach())


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_ve_noise_level_of_ddpm_is_one_over_its_snr(name):
    """eq-ch6-ve-vp: y = x/√ᾱ ~ N(x_0, σ_VE² I) with σ_VE² = (1-ᾱ)/ᾱ = 1/SNR, at every step of
    DDPM's grid (DiscreteVPSDE's marginals at t = i/T against GaussianDiffusion.snr)."""
    betas = get_beta_schedule(name, T)
    sde, d = DiscreteVPSDE(betas), GaussianDiffusion(betas)
    t = torch.arange(1, T + 1, dtype=torch.float64) / T
    x0 = torch.full((T,), 0.8, dtype=torch.float64)
    mean, std = sde.marginal_prob(x0, t)
    c = sde.mean_coeff(t)
    torch.testing.assert_close(mean / c, x0, rtol=1e-15, atol=0)
    torch.testing.assert_close((std / c) ** 2, 1 / d.snr(), rtol=1e-12, atol=0)


@pytest.mark.parametrize("sde", SDES[:2], ids=SDE_IDS[:2])
def test_vp_sde_in_ve_coordinates_is_driftless_with_diffusion_the_rate_of_one_over_snr(sde):
    """eq-ch6-ve-vp (Proposition "VP in VE coordinates"): for y = x/√ᾱ(t) the product rule
    gives the drift x d(ᾱ^{-1/2})/dt + ᾱ^{-1/2} f(x, t) = 0 and the diffusion² g²/ᾱ, which equals
    d[(1-ᾱ)/ᾱ]/dt (autograd in t of the library's mean coefficient and std)."""
    t = TIMES.clone().requires_grad_(True)
    c = sde.mean_coeff(t)  # √ᾱ(t)
    _, std = sde.marginal_prob(torch.ones_like(t), t)
    (d_inv_c,) = torch.autograd.grad((1 / c).sum(), t, retain_graph=True)
    (d_sigma_ve2,) = torch.autograd.grad(((std / c) ** 2).sum(), t)
    x = torch.randn(len(TIMES), 3, dtype=torch.float64)
    f, g = sde.sde(x, TIMES)
    c = c.detach()[:, None]
    drift_y = x * d_inv_c[:, None] + f / c
    assert (drift_y.abs() <= 1e-13 * (f / c).abs()).all()
    torch.testing.assert_close(g**2 / c[:, 0] ** 2, d_sigma_ve2, rtol=1e-12, atol=0)


def test_log_density_along_the_exact_flow_changes_at_minus_the_divergence():
    """eq-ch6-cov: along the exact flow map x(t) of 2-D Gaussian data,
    d/dt log p_t(x(t)) = -∇·F(x(t), t), with F the library's probability-flow velocity and
    ∇·F from its exact ``divergence``; the time derivative by autograd."""
    sde = VPSDE()
    x1 = torch.tensor([[0.1, 1.2], [-0.5, 0.9], [1.5, 0.0], [-2.0, -1.0]], dtype=torch.float64)
    x1 = x1.repeat(len(TIMES), 1)
    t = TIMES.repeat_interleave(4).requires_grad_(True)
    (m1, v1), (m, v) = data_law(sde, torch.ones_like(t)), data_law(sde, t)
    x = m[:, None] + (v / v1).sqrt()[:, None] * (x1 - m1[:, None])
    log_p = -((x - m[:, None]) ** 2) / (2 * v[:, None]) - 0.5 * torch.log(2 * math.pi * v)[:, None]
    (dlogp_dt,) = torch.autograd.grad(log_p.sum(), t)
    ode = sde.reverse(data_score(sde), probability_flow=True)
    _, div = divergence(lambda y, s: ode.sde(y, s)[0], x.detach(), t.detach())
    torch.testing.assert_close(dlogp_dt, -div, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------- the exact score of a mixture


def _mixture_1d():
    from ddpm_lib.mixture import GaussianMixture2D

    means = torch.tensor([[-1.5], [1.0]], dtype=torch.float64)
    return GaussianMixture2D(means, 0.25, torch.tensor([0.4, 0.6]))


@pytest.mark.parametrize("sde", SDES, ids=SDE_IDS)
def test_mixture_marginal_is_the_mixture_pushed_through_the_sdes_marginal(sde):
    """eq-ch6-marginals: x(t) = c(t) x(0) + σ_t z sends N(μ_k, s²) to N(c μ_k, c² s² + σ_t²)
    with the same weights; for the VP-SDE this is the mixture noised with ᾱ(t)."""
    from ddpm_lib.sde import mixture_marginal

    mix = _mixture_1d()
    for t in TIMES.tolist():
        q_t = mixture_marginal(sde, mix, t)
        c, std = sde.marginal_prob(
            torch.ones(1, dtype=torch.float64), torch.tensor([t], dtype=torch.float64)
        )
        torch.testing.assert_close(q_t.means, c.item() * mix.means, rtol=1e-15, atol=0)
        assert q_t.std == pytest.approx(math.sqrt(c.item() ** 2 * 0.25**2 + std.item() ** 2))
        torch.testing.assert_close(q_t.weights, mix.weights, rtol=0, atol=0)
        if isinstance(sde, VPSDE):
            noised = mix.noised(sde.alpha_bar(torch.tensor(t, dtype=torch.float64)).item())
            assert q_t.std == pytest.approx(noised.std, rel=1e-14)


@pytest.mark.parametrize("sde", SDES, ids=SDE_IDS)
def test_mixture_score_is_the_gradient_of_the_exact_log_density_at_mixed_times(sde):
    """eq-ch6-reverse-sde: mixture_score_fn(x, t) = ∇_x log q_t(x) (autograd of the exact
    log-density), row by row, for a batch whose rows have different times."""
    from ddpm_lib.sde import mixture_marginal, mixture_score_fn

    mix = _mixture_1d()
    x, t = grid_points()
    got = mixture_score_fn(sde, mix)(x, t)
    for k in range(len(t)):
        xk = x[k : k + 1].clone().requires_grad_(True)
        logp = mixture_marginal(sde, mix, t[k].item()).log_prob(xk).sum()
        (want,) = torch.autograd.grad(logp, xk)
        torch.testing.assert_close(got[k : k + 1], want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["sde", "ode"])
def test_reverse_samplers_with_the_exact_mixture_score_reach_the_data_law(kind, one_thread):
    """eq-ch6-reverse-sde, eq-ch6-pf-ode: from x(1) ~ N(0, 1), Euler–Maruyama on the reverse SDE
    (1000 steps) and Heun on the ODE (100 steps), driven by the exact score of a 1-D two-bump
    mixture, end at t_end with samples whose law is q_{t_end}: the two-sample KS distance to
    exact draws stays below the 1e-4 critical value. The prior mismatch N(0, 1) vs q_1 moves
    the mean by √ᾱ(1) |E x_0| < 0.01 (KS effect < 0.004), and the solver's bias is O(h)."""
    from ddpm_lib.checks import ks_critical_value, ks_two_sample
    from ddpm_lib.sde import mixture_marginal, mixture_score_fn

    sde, mix, n, t_end = VPSDE(), _mixture_1d(), 4000, 1e-3
    gen = torch.Generator().manual_seed(11)
    x1 = torch.randn(n, 1, dtype=torch.float64, generator=gen)
    score = mixture_score_fn(sde, mix)
    if kind == "sde":
        out = euler_maruyama_sample(
            sde, score, x1, 1000, t_end=t_end, denoise=False, generator=gen, progress=False
        )
    else:
        out = probability_flow_sample(sde, score, x1, 100, t_end=t_end, denoise=False,
                                      progress=False)  # fmt: skip
    exact = mixture_marginal(sde, mix, t_end).sample(n, generator=gen)
    assert ks_two_sample(out, exact) < ks_critical_value(1e-4, n, n)
    # and not the law of a single Gaussian with the same mean and variance: the bumps are there
    lump = exact.mean() + exact.std() * torch.randn(n, 1, dtype=torch.float64, generator=gen)
    assert ks_two_sample(out, lump) > ks_critical_value(1e-4, n, n)
