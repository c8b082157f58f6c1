"""Regression tests for the errata page (book/errata.ipynb): one test per mistake.

Each test pins the correct behaviour of ddpm_lib and shows that the wrong formula found in a
popular write-up gives a measurably different answer, so the test would fail if the library
made the mistake. Monte Carlo checks use tolerances of z = 5 standard errors computed from the
maths (tests/helpers.py: mc_tolerance), never tuned to the draws.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ddpm_lib.diffusion import GaussianDiffusion
from ddpm_lib.elbo import mse_weights, vb_term_bpd
from ddpm_lib.gaussian import LN2
from ddpm_lib.nets import UNet, UNetConfig
from ddpm_lib.oracles import GaussianOracle, PointOracle
from ddpm_lib.samplers import ddpm_sample
from ddpm_lib.schedules import cosine_alpha_bar, cosine_beta_schedule, linear_beta_schedule
from helpers import mc_tolerance

T = 1000
F64 = torch.float64


@pytest.fixture(scope="module")
def diffusion() -> GaussianDiffusion:
    return GaussianDiffusion(linear_beta_schedule(T))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These tests run long loops of tiny tensor operations: one thread is several times faster
    than two on a busy 2-core machine, where threads wait for each other at every operation."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def code_index_where_alpha_bar_is(d: GaussianDiffusion, value: float) -> int:
    return int((d.alphas_cumprod - value).abs().argmin())


# E1 (write-up 000) ------------------------------------------------------------------------------
def test_e01_linear_schedule_ends_at_0_02_not_0_002():
    betas = linear_beta_schedule(T)
    assert betas[0].item() == pytest.approx(1e-4, rel=1e-12)
    assert betas[-1].item() == pytest.approx(0.02, rel=1e-12)
    alpha_bar_T = torch.cumprod(1 - betas, 0)[-1].item()
    # ᾱ_T = Π(1-β_t) ≈ exp(-Σβ_t) = exp(-10.05) ≈ 4e-5: x_T keeps √ᾱ_T ≈ 0.006 of x_0.
    assert alpha_bar_T < 1e-4
    # The written end point 0.002: Σβ_t = 1.05, so ᾱ_T ≈ e^-1.05 ≈ 0.35 and x_T keeps 59 % of x_0.
    wrong = torch.cumprod(1 - torch.linspace(1e-4, 2e-3, T, dtype=F64), 0)[-1].item()
    assert wrong > 0.3
    assert wrong == pytest.approx(math.exp(-1.05), rel=0.01)


# E2 (write-up 000) ------------------------------------------------------------------------------
def test_e02_one_minus_alpha_bar_is_the_variance_of_q_xt_given_x0(diffusion):
    i = code_index_where_alpha_bar_is(diffusion, 0.5)
    var = 1 - diffusion.alphas_cumprod[i].item()
    n = 200_000
    x0 = torch.full((n, 1), 0.5, dtype=F64)
    x_t = diffusion.q_sample(x0, i, noise=torch.randn(n, 1, dtype=F64, generator=gen(2)))
    _, q_var, _ = diffusion.q_mean_variance(x0[:1], i)
    assert q_var.item() == pytest.approx(var, rel=1e-12)
    # The sample variance of n Gaussian draws has standard deviation var·√(2/(n-1)).
    tol = mc_tolerance(var * math.sqrt(2.0), n - 1)
    assert abs(x_t.var().item() - var) < tol
    # Reading 1-ᾱ_t as the standard deviation would give variance (1-ᾱ_t)² = 0.25 here.
    assert abs(x_t.var().item() - var**2) > 10 * tol
    assert abs(x_t.std().item() - math.sqrt(var)) < tol


# E3 (write-up 000) ------------------------------------------------------------------------------
def test_e03_posterior_mean_uses_sqrt_alpha_bar_prev(diffusion):
    d = diffusion
    for i in (1, 10, 100, 499, 999):  # code index i is book step t = i + 1 ≥ 2
        ab_prev, ab, a, b = (
            d.alphas_cumprod[i - 1],
            d.alphas_cumprod[i],
            d.alphas[i],
            d.betas[i],
        )
        # Gaussian conditioning of the joint of (x_{t-1}, x_t) given x_0:
        # x_{t-1} = √ᾱ_{t-1} x_0 + √(1-ᾱ_{t-1}) ε_1,  x_t = √α_t x_{t-1} + √β_t ε_2.
        cov12, var2 = a.sqrt() * (1 - ab_prev), 1 - ab
        slope = cov12 / var2  # coefficient of x_t
        intercept = ab_prev.sqrt() - slope * ab.sqrt()  # coefficient of x_0
        cond_var = (1 - ab_prev) - cov12**2 / var2
        torch.testing.assert_close(d.posterior_mean_coef2[i], slope, rtol=1e-12, atol=0)
        torch.testing.assert_close(d.posterior_mean_coef1[i], intercept, rtol=1e-10, atol=1e-15)
        torch.testing.assert_close(d.posterior_variance[i], cond_var, rtol=1e-10, atol=1e-18)
        # Completing the square with √α_{t-1} x_0 in the exponent gives coefficient
        # √α_{t-1} β_t/(1-ᾱ_t). It disagrees with conditioning as soon as ᾱ_{t-1} and α_{t-1}
        # part (by more than 5 % from t = 101 on; by a factor 3.5 at t = 500).
        wrong = d.alphas[i - 1].sqrt() * b / (1 - ab)
        if i >= 100:
            assert abs(wrong - intercept) > 0.05 * intercept


def test_e03_posterior_mean_matches_monte_carlo(diffusion):
    d, i, n = diffusion, 499, 400_000
    x0 = torch.full((n, 1), 1.0, dtype=F64)
    x_prev = d.q_sample(x0, i - 1, noise=torch.randn(n, 1, dtype=F64, generator=gen(3)))
    x_t = d.q_step(x_prev, i, noise=torch.randn(n, 1, dtype=F64, generator=gen(4)))
    mean, var, _ = d.q_posterior_mean_variance(x0, x_t, i)
    # If q(x_{t-1} | x_t, x_0) is right, x_{t-1} minus its mean has mean 0 and variance β̃_t,
    # and it is uncorrelated with x_t.
    resid = x_prev - mean
    sd = var[0].sqrt().item()
    tol = mc_tolerance(sd, n)
    assert abs(resid.mean().item()) < tol
    assert abs(resid.var().item() / var[0].item() - 1) < mc_tolerance(math.sqrt(2.0), n - 1)
    corr = torch.corrcoef(torch.stack([resid[:, 0], x_t[:, 0]]))[0, 1].item()
    assert abs(corr) < mc_tolerance(1.0, n)
    # The √α_{t-1} version moves the x_0 coefficient; the same check rejects it.
    wrong_coef1 = d.alphas[i - 1].sqrt() * d.betas[i] / (1 - d.alphas_cumprod[i])
    wrong_mean = wrong_coef1 * x0 + d.posterior_mean_coef2[i] * x_t
    assert abs((x_prev - wrong_mean).mean().item()) > 5 * tol


# E4 (write-up 001) ------------------------------------------------------------------------------
def test_e04_mean_of_q_xt_given_x0_has_x0_not_x_prev(diffusion):
    d, t, n, x0_value = diffusion, 300, 50_000, 1.0
    x = torch.full((n, 1), x0_value, dtype=F64)
    g = gen(5)
    for i in range(t):  # iterate the recurrence: x_1, ..., x_t (code indices 0..t-1)
        x = d.q_step(x, i, noise=torch.randn(n, 1, dtype=F64, generator=g))
    ab_t, ab_prev = d.alphas_cumprod[t - 1].item(), d.alphas_cumprod[t - 2].item()
    right = math.sqrt(ab_t) * x0_value
    mean, _, _ = d.q_mean_variance(torch.full((1, 1), x0_value, dtype=F64), t - 1)
    assert mean.item() == pytest.approx(right, rel=1e-12)
    tol = mc_tolerance(math.sqrt(1 - ab_t), n)
    assert abs(x.mean().item() - right) < tol
    # With x_{t-1} in place of x_0 the mean would be √ᾱ_t E[x_{t-1}] = √ᾱ_t √ᾱ_{t-1} x_0.
    wrong = math.sqrt(ab_t) * math.sqrt(ab_prev) * x0_value
    assert abs(x.mean().item() - wrong) > 5 * tol


# E5 (write-up 001) ------------------------------------------------------------------------------
class Spy:
    """Wraps a model and records the code indices it is called with."""

    def __init__(self, model):
        self.model, self.calls = model, []

    def __call__(self, x, t):
        self.calls.append(int(t[0]))
        return self.model(x, t)


def seed_001_reverse_loop(d: GaussianDiffusion, model, x: torch.Tensor, g) -> torch.Tensor:
    """The write-up's loop: code indices T-1 .. 1 only, and no noise at index 1."""
    for i in reversed(range(1, d.num_timesteps)):
        z = torch.zeros_like(x) if i == 1 else torch.randn(x.shape, dtype=x.dtype, generator=g)
        x = d.p_sample(model, x, i, noise=z, clip_denoised=False).sample
    return x


def test_e05_reverse_loop_visits_every_step_and_ends_noise_free(diffusion):
    d, n = diffusion, 4096
    x_star = torch.full((1, 1), 0.3, dtype=F64)
    spy = Spy(PointOracle(d, x_star))
    x_T = torch.randn(n, 1, dtype=F64, generator=gen(6))
    out = ddpm_sample(d, spy, x_T, clip_denoised=False, generator=gen(7), progress=False)
    assert spy.calls == list(range(T - 1, -1, -1))  # T calls, the last one at index 0 (t = 1)
    # With the oracle x̂_0 = x*, the last step (coef1 = 1, coef2 = 0, no noise) returns x*.
    assert (out - x_star).abs().max().item() < 1e-9

    spy_seed = Spy(PointOracle(d, x_star))
    out_seed = seed_001_reverse_loop(d, spy_seed, x_T, gen(7))
    assert spy_seed.calls == list(range(T - 1, 0, -1))  # T-1 calls: book step 1 never runs
    # It stops at x_1 = μ̃_2(x*, x_2), whose spread around √ᾱ_1 x* is coef2·√(1-ᾱ_2) (x_2 drawn
    # from q(x_2 | x*) by the exact reverse chain): about 0.0067, not 0.
    pred_var = (d.posterior_mean_coef2[1] ** 2 * (1 - d.alphas_cumprod[1])).item()
    resid = out_seed - d.alphas_cumprod[0].sqrt() * x_star
    emp_var = resid.pow(2).mean().item()
    assert abs(emp_var / pred_var - 1) < mc_tolerance(math.sqrt(2.0), n)


def test_e05_p_sample_ignores_the_noise_only_at_code_index_0(diffusion):
    d = diffusion
    x = torch.randn(5, 3, dtype=F64, generator=gen(8))
    model = PointOracle(d, torch.zeros(1, 3, dtype=F64))
    z1, z2 = torch.randn(2, 5, 3, dtype=F64, generator=gen(9))
    last = [d.p_sample(model, x, 0, noise=z).sample for z in (z1, z2)]
    assert torch.equal(last[0], last[1])
    second_last = [d.p_sample(model, x, 1, noise=z).sample for z in (z1, z2)]
    assert not torch.allclose(second_last[0], second_last[1])


# E6 (write-up 001, the missing loss section) ------------------------------------------------
@pytest.mark.parametrize("var_type", ["fixed_small", "fixed_large"])
def test_e06_elbo_term_is_l_simple_weighted_by_beta2_over_2sigma2_alpha_1m_alphabar(var_type):
    """eq-errata-elbo-weights: the KL term is β_t²/(2σ_t² α_t (1-ᾱ_t)) ‖ε - ε_θ‖² + C_t."""
    d = GaussianDiffusion(linear_beta_schedule(T), model_var_type=var_type)
    lam, const_lib = mse_weights(d)  # the library's table of the same weights and constants
    g = gen(10)
    x0 = torch.rand(4, 1, 4, 4, dtype=F64, generator=g) * 2 - 1
    eps = torch.randn(x0.shape, dtype=F64, generator=g)
    eps_hat = eps + 0.3 * torch.randn(x0.shape, dtype=F64, generator=g)

    def model(x_t, t):
        return eps_hat

    weights = []
    for i in (1, 2, 10, 100, 500, 999):  # book steps t = i + 1 ≥ 2: the KL terms L_{t-1}
        t = torch.full((4,), i)
        x_t = d.q_sample(x0, t, eps)
        kl_nats = vb_term_bpd(d, model, x0, x_t, t) * LN2  # per dimension
        beta_tilde = d.posterior_variance[i]
        sigma2 = beta_tilde if var_type == "fixed_small" else d.betas[i]
        w = d.betas[i] ** 2 / (2 * sigma2 * d.alphas[i] * (1 - d.alphas_cumprod[i]))
        # The KL's variance part does not depend on θ: ½(log σ² - log β̃ + β̃/σ² - 1), zero when
        # σ² = β̃ (Ho et al.'s constant C).
        const = 0.5 * (torch.log(sigma2 / beta_tilde) + beta_tilde / sigma2 - 1)
        mse = (eps - eps_hat).pow(2).flatten(1).mean(1)
        torch.testing.assert_close(kl_nats - const, w * mse, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(lam[i], w, rtol=1e-12, atol=0)
        torch.testing.assert_close(const_lib[i], const, rtol=0, atol=1e-15)
        weights.append(w.item())
    # L_simple weights every step equally; the bound does not: its weights span a factor > 10.
    assert max(weights) / min(weights) > 10


# E7 (write-up 003) ------------------------------------------------------------------------------
class TimeBlindNet(nn.Module):
    """The write-up's 'UNet' in small: convolutions and dense layers that never read t."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 64)

    def forward(self, x, t):
        return self.fc(torch.relu(self.conv(x)).flatten(1)).view(-1, 1, 8, 8)


def test_e07_unet_output_depends_on_t():
    torch.manual_seed(11)
    config = UNetConfig(
        image_size=8,
        in_channels=1,
        ch=8,
        ch_mult=(1, 2),
        num_res_blocks=1,
        attn_resolutions=(),
        dropout=0.0,
        num_groups=4,
    )
    net = UNet(config).double().eval()
    with torch.no_grad():  # replace the zero initialisation so the output is not trivially 0
        for p in net.parameters():
            p.normal_(0.0, 0.2, generator=gen(12))
    x = torch.randn(2, 1, 8, 8, dtype=F64, generator=gen(13))
    with torch.no_grad():
        outs = [net(x, torch.full((2,), i)) for i in (0, 500, 999)]
    assert (outs[0] - outs[1]).abs().max() > 1e-3 * outs[1].abs().max()
    assert (outs[1] - outs[2]).abs().max() > 1e-3 * outs[1].abs().max()

    blind = TimeBlindNet().double()
    with torch.no_grad():
        same = [blind(x, torch.full((2,), i)) for i in (0, 500, 999)]
    assert torch.equal(same[0], same[1]) and torch.equal(same[1], same[2])


def test_e07_the_optimal_noise_prediction_depends_on_t(diffusion):
    # For data that is one point x*, ε*(x, t) = (x - √ᾱ_t x*)/√(1-ᾱ_t): at the same input x it
    # changes with t, so no network that ignores t can reach zero loss.
    d, x_star = diffusion, torch.full((1, 1), 0.5, dtype=F64)
    x = torch.zeros(1, 1, dtype=F64)
    eps = [d.predict_eps_from_x0(x, i, x_star).item() for i in (9, 499, 999)]
    expected = [
        -(d.alphas_cumprod[i].sqrt() * 0.5 / (1 - d.alphas_cumprod[i]).sqrt()).item()
        for i in (9, 499, 999)
    ]
    assert eps == pytest.approx(expected, rel=1e-12)
    assert abs(eps[0] - eps[2]) > 1.0


# E8 (write-up 003) ------------------------------------------------------------------------------
def test_e08_q_sample_scales_x0_by_sqrt_alpha_bar(diffusion):
    d, n = diffusion, 200_000
    i = code_index_where_alpha_bar_is(d, 0.5)
    ab = d.alphas_cumprod[i].item()
    g = gen(14)
    x0 = torch.randint(0, 2, (n, 1), generator=g).to(F64) * 2 - 1  # ±1: mean 0, variance 1
    x_t = d.q_sample(x0, i, noise=torch.randn(n, 1, dtype=F64, generator=g))
    # Variance preservation: Var(x_t) = ᾱ_t·1 + (1-ᾱ_t) = 1. The sample variance's standard
    # deviation is √((μ4 - 1)/n) with μ4 = E[x_t⁴] = ᾱ² + 6ᾱ(1-ᾱ) + 3(1-ᾱ)².
    mu4 = ab**2 + 6 * ab * (1 - ab) + 3 * (1 - ab) ** 2
    tol = mc_tolerance(math.sqrt(mu4 - 1), n)
    assert abs(x_t.var().item() - 1) < tol
    # With ᾱ_t in place of √ᾱ_t: Var = ᾱ² + 1 - ᾱ = 0.75 at ᾱ = 0.5.
    assert abs((ab**2 + 1 - ab) - 1) > 10 * tol
    # The regression slope of x_t on x_0 is the signal coefficient: √ᾱ_t ≈ 0.71, not ᾱ_t = 0.5.
    slope = (x_t * x0).mean().item() / (x0 * x0).mean().item()
    assert abs(slope - math.sqrt(ab)) < mc_tolerance(math.sqrt(1 - ab), n)
    assert abs(slope - ab) > 10 * mc_tolerance(math.sqrt(1 - ab), n)


# E9 (write-up 003) ------------------------------------------------------------------------------
def renoising_sampler(d: GaussianDiffusion, oracle: GaussianOracle, x, g):
    """The write-up's sampler: x_{t-1} = √ᾱ_{t-1} x̂_0 + √(1-ᾱ_{t-1}) z (a fresh marginal draw)."""
    for i in reversed(range(d.num_timesteps)):
        t = torch.full((x.shape[0],), i)
        x0_hat = d.predict_x0_from_eps(x, t, oracle(x, t))
        ab_prev = d.alphas_cumprod_prev[i]
        z = torch.randn(x.shape, dtype=x.dtype, generator=g) if i > 0 else torch.zeros_like(x)
        x = ab_prev.sqrt() * x0_hat + (1 - ab_prev).sqrt() * z
    return x


def predicted_variances(d: GaussianDiffusion, oracle: GaussianOracle) -> tuple[float, float]:
    """Var(x_0) after each sampler, exactly: both chains are linear-Gaussian, x_T ~ N(0, 1)."""
    v_post = v_renoise = 1.0
    for i in reversed(range(d.num_timesteps)):
        k = oracle.gain[i]
        a = d.posterior_mean_coef1[i] * k + d.posterior_mean_coef2[i]
        v_post = a**2 * v_post + (d.posterior_variance[i] if i > 0 else 0.0)
        v_renoise = d.alphas_cumprod_prev[i] * k**2 * v_renoise + (1 - d.alphas_cumprod_prev[i])
    return float(v_post), float(v_renoise)


def test_e09_sampler_draws_the_posterior_not_a_renoised_x0_hat(diffusion):
    d, s2, n = diffusion, 0.25, 20_000
    oracle = GaussianOracle(d, s2)
    # v_post is Var(x_0) under the model's chain p(x_T) Π p_θ(x_{t-1} | x_t) (eq-ch5-reverse),
    # propagated exactly; the ancestral sampler must draw from that marginal.
    v_post, v_renoise = predicted_variances(d, oracle)
    # The ancestral sampler with the exact model nearly recovers the data variance s² = 0.25
    # (the 1.6 % gap is the discretization of the chain); re-noising x̂_0 halves it.
    assert abs(v_post / s2 - 1) < 0.02
    assert v_renoise < 0.6 * s2

    x_T = torch.randn(n, 1, dtype=F64, generator=gen(15))
    ours = ddpm_sample(d, oracle, x_T, clip_denoised=False, generator=gen(16), progress=False)
    theirs = renoising_sampler(d, oracle, x_T.clone(), gen(17))
    # Each output is N(0, v) exactly; the sample variance has standard deviation v·√(2/(n-1)).
    assert abs(ours.var().item() - v_post) < mc_tolerance(v_post * math.sqrt(2), n - 1)
    assert abs(theirs.var().item() - v_renoise) < mc_tolerance(v_renoise * math.sqrt(2), n - 1)
    assert abs(ours.var().item() - theirs.var().item()) > 10 * mc_tolerance(
        v_post * math.sqrt(2), n - 1
    )


# E10 (write-up 004) -----------------------------------------------------------------------------
def test_e10_cosine_schedule_squares_the_cosine_not_its_argument():
    """eq-errata-cosine: f(t) = cos²((t/T + s)/(1 + s) · π/2), not cos of the squared angle."""
    s = 0.008

    def right(u: float) -> float:
        return (
            math.cos((u + s) / (1 + s) * math.pi / 2) ** 2
            / math.cos(s / (1 + s) * math.pi / 2) ** 2
        )

    def misplaced(u: float) -> float:
        return math.cos(((u + s) / (1 + s) * math.pi / 2) ** 2) / math.cos(
            (s / (1 + s) * math.pi / 2) ** 2
        )

    assert cosine_alpha_bar(torch.tensor(0.5, dtype=F64), s).item() == pytest.approx(
        right(0.5), rel=1e-12
    )
    assert right(0.5) == pytest.approx(0.4938, abs=1e-4)
    assert misplaced(0.5) == pytest.approx(0.8100, abs=1e-4)
    # The schedule's own ᾱ at t = T/2 (before the max_beta clip matters) is the right one.
    alpha_bar = torch.cumprod(1 - cosine_beta_schedule(T), 0)
    assert alpha_bar[T // 2 - 1].item() == pytest.approx(right(0.5), rel=1e-9)
    # The misplaced square is not even a schedule: it turns negative before t = T.
    assert misplaced(0.85) < 0 < right(0.85)


def test_e10_cosine_schedule_has_alpha_bar_f_t_over_f_0_at_every_step():
    """eq-errata-cosine: Π_{s≤t}(1 - β_s) = f(t)/f(0) at every t < T; β_T is clipped.

    Tolerance, relative, from float64 rounding (u = 2^-53): cos near π/2 turns an error u·x in
    its angle x into a relative error of about x·tan(x)·u (twice that for cos²), and each factor
    1 - β_s = ᾱ_s/ᾱ_{s-1}, formed by two subtractions, carries about 2u/α_s, summed along the
    product. At t = T, f(1) = 0 would give β_T = 1: the schedule clips it at max_beta.
    """
    s, u = 0.008, 2.0**-53
    betas = cosine_beta_schedule(T, s, max_beta=0.999)
    alpha_bar = torch.cumprod(1 - betas, 0)[:-1]
    angle = (torch.arange(1, T, dtype=F64) / T + s) / (1 + s) * math.pi / 2
    right = torch.cos(angle) ** 2 / math.cos(s / (1 + s) * math.pi / 2) ** 2
    tol = u * (8 * (1 + angle * torch.tan(angle)) + torch.cumsum(4 / (1 - betas[:-1]) + 4, 0))
    assert ((alpha_bar / right - 1).abs() <= tol).all()
    assert betas[-1].item() == 0.999 and (betas[:-1] < 0.999).all()
    # The misplaced square gives another ᾱ at every step, not only where it turns negative.
    misplaced = torch.cos(angle**2) / math.cos((s / (1 + s) * math.pi / 2) ** 2)
    assert ((alpha_bar / misplaced - 1).abs() > tol).all()


# E11 (write-up 004) -----------------------------------------------------------------------------
def test_e11_forward_step_draws_noise_shaped_like_its_own_input(diffusion):
    d, n, i = diffusion, 50_000, 499
    x_prev = torch.ones(n, 4, dtype=F64)  # a batch of identical inputs
    torch.manual_seed(18)
    x_t = d.q_step(x_prev, i)
    assert x_t.shape == x_prev.shape
    beta = d.betas[i].item()
    # Independent noise per example: the spread across the batch is β_t in every coordinate.
    tol = mc_tolerance(beta * math.sqrt(2), n - 1)
    assert (x_t.var(dim=0) - beta).abs().max().item() < tol
    # The write-up draws the noise with randn_like of a global image `img` (one example), so the
    # same noise is broadcast to the whole batch and the spread across the batch is zero.
    img = torch.zeros(1, 4, dtype=F64)
    wrong = d.alphas[i].sqrt() * x_prev + d.betas[i].sqrt() * torch.randn_like(img)
    assert wrong.var(dim=0).max().item() == 0.0
    assert (x_t.var(dim=0) - wrong.var(dim=0)).min().item() > 10 * tol
    with pytest.raises(ValueError, match="noise has shape"):
        d.q_step(x_prev, i, noise=torch.randn_like(img))
