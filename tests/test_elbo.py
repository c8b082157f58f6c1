"""Specification of ddpm_lib.elbo: the bound over the chain in bits/dim (Chapter 5).

Identities are checked in float64 against bounds on their rounding error; Monte Carlo checks
use z = 5 standard errors (tests/helpers.py: mc_tolerance). The Jensen checks use a chain short
enough (T = 4) for log p_θ(x_0) to be exact: with an ε-model linear in x_t every reverse step is
linear-Gaussian, so the marginal of x_0 is a Gaussian in closed form.
"""

import math

import numpy as np
import pytest
import torch

from ddpm_lib.diffusion import GaussianDiffusion
from ddpm_lib.elbo import (
    elbo_bpd,
    gaussian_continuous_bound,
    gaussian_step_terms_sum,
    mse_weights,
    prior_bpd,
    snr_form_kl,
    snr_mse_weights,
    vb_term_bpd,
)
from ddpm_lib.gaussian import LN2, discretized_gaussian_log_likelihood
from ddpm_lib.learned_variance import LearnedRangeDiffusion
from ddpm_lib.oracles import GaussianOracle, PointOracle
from ddpm_lib.schedules import cosine_beta_schedule, linear_beta_schedule
from helpers import mc_tolerance

F64 = torch.float64
U = 2.0**-53  # float64 unit roundoff
U32 = 2.0**-24  # float32 unit roundoff
pytestmark = pytest.mark.usefixtures("one_thread")


def test_prior_term_equals_the_gaussian_kl_to_standard_normal():
    """L_T of eq-ch5-decomposition is eq-ch5-kl between q(x_T | x_0) and N(0, 1), per dimension."""
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
    """eq-ch5-decomposition: the total is L_T plus the T step terms (decoder in column 0)."""
    d = small_diffusion
    x0 = _eight_bit_point((3, 1, 4, 4), seed=1)
    out = elbo_bpd(d, lambda x, t: 0.3 * x, x0, progress=False)
    assert out.terms.shape == (3, 100) and out.mse.shape == (3, 100)
    torch.testing.assert_close(out.total, out.prior + out.terms.sum(1))


def test_elbo_refuses_images_outside_minus_one_one(small_diffusion):
    x0 = torch.full((1, 1, 2, 2), 1.5, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        elbo_bpd(small_diffusion, lambda x, t: torch.zeros_like(x), x0, progress=False)


# ---------------------------------------------------------------------------------------------
# Exact likelihoods of a short linear-Gaussian chain (eq-ch5-reverse, eq-ch5-jensen)
# ---------------------------------------------------------------------------------------------
# T = 4 large steps: every term of the bound matters, and 10^4 paths cost milliseconds.
BETAS4 = torch.tensor([0.02, 0.1, 0.3, 0.6], dtype=F64)


def log_normal(x, mean, var):
    """log N(x; mean, var) per element."""
    return -0.5 * (torch.log(2 * math.pi * var) + (x - mean) ** 2 / var)


def linear_eps(*gains):
    """ε_θ(x, t) = k_t x: its reverse steps are linear-Gaussian."""
    k = torch.tensor(gains, dtype=F64)
    return lambda x, t: k[t].reshape(-1, *[1] * (x.ndim - 1)) * x


def reverse_steps(d, model):
    """(A, b, σ²), each [T]: the model's p_θ(x_{t-1} | x_t) = N(A_t x_t + b_t, σ_t²) for 1-D x.

    Read off p_mean_variance at x_t = 0 and 1 (and checked to be affine at x_t = 2). σ_t² is
    exp(log_variance), the variance the ELBO uses (at book step 1 the decoder's √β̃_2 scale).
    """
    t = torch.arange(d.num_timesteps)
    steps = [
        d.p_mean_variance(model, torch.full((len(t), 1), v, dtype=F64), t, clip_denoised=False)
        for v in (0.0, 1.0, 2.0)
    ]
    b = steps[0].mean[:, 0]
    a = steps[1].mean[:, 0] - b
    torch.testing.assert_close(steps[2].mean[:, 0], b + 2 * a, rtol=1e-12, atol=1e-12)
    return a, b, steps[0].log_variance[:, 0].exp()


def reverse_marginal(d, model):
    """Mean and variance of x_0 (before the decoder bins it) under p_θ(x_{0:T}) (eq-ch5-reverse):
    x_T ~ N(0, 1), then x_{t-1} = A_t x_t + b_t + σ_t z for t = T, ..., 1."""
    a, b, s2 = reverse_steps(d, model)
    m, v = torch.zeros((), dtype=F64), torch.ones((), dtype=F64)
    for i in reversed(range(d.num_timesteps)):
        m, v = a[i] * m + b[i], a[i] ** 2 * v + s2[i]
    return m, v


def exact_log_prob_of_level(d, model, x0: float) -> float:
    """log P_θ(x_0) of an 8-bit level x_0: the mass of its decoder bin (eq-ch5-decoder) under the
    Gaussian marginal, written out with Φ (the bins here are far from the tails)."""
    m, v = reverse_marginal(d, model)
    sd = v.sqrt()
    hi = torch.tensor(math.inf, dtype=F64) if x0 >= 1 else (x0 + 1 / 255 - m) / sd
    lo = torch.tensor(-math.inf, dtype=F64) if x0 <= -1 else (x0 - 1 / 255 - m) / sd
    return math.log((torch.special.ndtr(hi) - torch.special.ndtr(lo)).item())


def bound_by_quadrature(d, model, x0: float, nodes: int = 80) -> tuple[float, float]:
    """The bound L in nats for one 1-D 8-bit x_0, and a bound on its error.

    L is prior_bpd plus, for every step, the mean of vb_term_bpd over x_t ~ q(x_t | x_0) by
    Gauss-Hermite quadrature: exact for the KL terms (quadratic in x_t); for the smooth decoder
    term the error is estimated by the change from nodes/2 nodes, plus float64 rounding.
    """
    values = []
    for n in (nodes // 2, nodes):
        z, w = np.polynomial.hermite.hermgauss(n)
        z, w = torch.from_numpy(z) * math.sqrt(2), torch.from_numpy(w) / math.sqrt(math.pi)
        x0s = torch.full((n, 1), x0, dtype=F64)
        total = prior_bpd(d, x0s[:1]).item()
        for i in range(d.num_timesteps):
            x_t = d.sqrt_alphas_cumprod[i] * x0s + d.sqrt_one_minus_alphas_cumprod[i] * z[:, None]
            total += (w * vb_term_bpd(d, model, x0s, x_t, i)).sum().item()
        values.append(total * LN2)  # D = 1
    return values[1], abs(values[1] - values[0]) + 64 * U * abs(values[1])


def forward_paths(d, x0: torch.Tensor, generator: torch.Generator) -> list[torch.Tensor]:
    """[x_0, x_1, ..., x_T]: the forward chain from x0, one q_step at a time."""
    xs = [x0]
    for i in range(d.num_timesteps):
        noise = torch.randn(x0.shape, dtype=F64, generator=generator)
        xs.append(d.q_step(xs[-1], i, noise))
    return xs


def log_ratio_of_the_bound(d, model, xs, decoder: str) -> torch.Tensor:
    """log p_θ(x_{0:T}) - log q(x_{1:T} | x_0) per path, the integrand of eq-ch5-jensen.

    p_θ is the product of eq-ch5-reverse with the factors of p_mean_variance; its last factor
    p_θ(x_0 | x_1) is the binned decoder ("discrete", as in elbo_bpd) or its Gaussian density.
    """
    total = log_normal(xs[-1], 0.0, torch.ones((), dtype=F64))  # p(x_T) = N(0, 1)
    for i in range(d.num_timesteps):
        step = d.p_mean_variance(model, xs[i + 1], i, clip_denoised=False)
        if i == 0 and decoder == "discrete":
            log_p = discretized_gaussian_log_likelihood(xs[0], step.mean, 0.5 * step.log_variance)
        else:
            log_p = log_normal(xs[i], step.mean, step.log_variance.exp())
        log_q = log_normal(xs[i + 1], d.alphas[i].sqrt() * xs[i], d.betas[i])
        total = total + log_p - log_q
    return total.flatten(1).sum(1)


@pytest.mark.parametrize("level", [0, 40, 128, 255])
def test_bound_lies_above_the_exact_negative_log_likelihood(level):
    """eq-ch5-jensen: -log P_θ(x_0) ≤ L, with P_θ(x_0) exact and L from the library's terms.

    P_θ(x_0) is the marginal of the reverse chain eq-ch5-reverse (linear-Gaussian here), binned
    by the decoder; L is prior_bpd plus the expectation of every vb_term_bpd, by quadrature.
    The gap must exceed the quadrature's error bound (about 1e-12 against gaps of 0.01 to 7).
    """
    d = GaussianDiffusion(BETAS4)
    x0 = level / 127.5 - 1
    models = [
        lambda x, t: torch.zeros_like(x),
        linear_eps(0.2, 0.4, 0.6, 0.8),
        linear_eps(-1.0, 0.5, 2.0, 0.3),
        PointOracle(d, torch.full((1, 1), x0, dtype=F64)),
    ]
    for model in models:
        bound, err = bound_by_quadrature(d, model, x0)
        assert bound + exact_log_prob_of_level(d, model, x0) > err


@pytest.mark.parametrize("level", [0, 40, 128, 255])
def test_jensen_gap_of_the_point_oracle_is_the_kl_of_the_two_path_laws(level):
    """eq-ch5-jensen: the gap L + log p_θ(x_0) is KL(q(x_{1:T} | x_0) ‖ p_θ(x_{1:T} | x_0)).

    For the point oracle at x* = x_0 with σ_t² = β̃_t, p_θ(x_{t-1} | x_t) = q(x_{t-1} | x_t, x_0)
    for t ≥ 2 and the decoder ignores x_1, so the two path laws differ only in x_T:
    N(0, 1) against q(x_T | x_0). The gap must be that KL, L_T, and nothing else (a bound
    that dropped L_T would sit exactly on -log p_θ(x_0) here).
    """
    d = GaussianDiffusion(BETAS4)
    x0 = level / 127.5 - 1
    oracle = PointOracle(d, torch.full((1, 1), x0, dtype=F64))
    bound, err = bound_by_quadrature(d, oracle, x0)
    gap = bound + exact_log_prob_of_level(d, oracle, x0)
    prior = prior_bpd(d, torch.full((1, 1), x0, dtype=F64)).item() * LN2
    assert prior > 0.01
    assert abs(gap - prior) <= err


def test_bound_is_tight_exactly_when_the_reverse_steps_are_the_true_ones():
    """eq-ch5-jensen: equality iff p_θ(x_{1:T} | x_0) = q(x_{1:T} | x_0); here per path.

    Data N(0, 1) keeps every x_t ~ N(0, 1), and its true reverse step is N(√α_t x_t, β_t): the
    Gaussian oracle with s² = 1 and a learned variance at ν = 1 (σ_t² = β_t at every step, book
    step 1 included) is that chain, so the log ratio of eq-ch5-jensen is log N(x_0; 0, 1) on
    every path (to rounding). Any other variance or data variance leaves a gap: the mean log
    ratio falls below the exact log p_θ(x_0) by more than 5 standard errors.
    """
    d = LearnedRangeDiffusion(BETAS4)
    g = torch.Generator().manual_seed(0)
    n = 20_000

    def net(s2: float, nu: float):
        oracle = GaussianOracle(d, s2)
        return lambda x, t: torch.cat([oracle(x, t), torch.full_like(x, nu)], dim=1)

    for x0 in (-1.3, 0.2, 0.9):
        xs = forward_paths(d, torch.full((n, 1), x0, dtype=F64), g)
        exact = log_ratio_of_the_bound(d, net(1.0, 1.0), xs, decoder="density")
        log_p = log_normal(torch.tensor(x0, dtype=F64), 0.0, torch.ones((), dtype=F64))
        torch.testing.assert_close(exact, log_p.expand(n), rtol=0, atol=1e-12)
        for s2, nu in ((1.0, -1.0), (1.0, 0.0), (0.5, 1.0), (2.0, 1.0)):
            model = net(s2, nu)
            m, v = reverse_marginal(d, model)
            log_p = log_normal(torch.tensor(x0, dtype=F64), m, v).item()
            ratio = log_ratio_of_the_bound(d, model, xs, decoder="density")
            assert ratio.mean().item() < log_p - mc_tolerance(ratio.std().item(), n)


def test_closed_form_terms_have_the_mean_of_the_sampled_log_ratio():
    """eq-ch5-decomposition: L_T + Σ E[KL] + L_0 is the mean of -log(p_θ(x_{0:T})/q(x_{1:T}|x_0)).

    Three estimates of one bound (T = 4, linear ε-model, 8-bit x_0): the closed-form terms with
    exact expectations (quadrature), the sampled log ratio of eq-ch5-jensen averaged over
    forward paths, and elbo_bpd (one x_t per term) averaged over repeats. The two Monte Carlo
    means must match the exact value within 5 standard errors.
    """
    d = GaussianDiffusion(BETAS4)
    model = linear_eps(0.2, 0.4, 0.6, 0.8)
    x0, n = 100 / 127.5 - 1, 20_000
    exact, _ = bound_by_quadrature(d, model, x0)  # its error (1e-12) is far below the SEs
    g = torch.Generator().manual_seed(1)
    sampled = -log_ratio_of_the_bound(
        d, model, forward_paths(d, torch.full((n, 1), x0, dtype=F64), g), decoder="discrete"
    )
    assert abs(sampled.mean().item() - exact) < mc_tolerance(sampled.std().item(), n)
    x0s = torch.full((n, 1, 1, 1), x0, dtype=F64)
    elbo = elbo_bpd(d, model, x0s, generator=g, progress=False).total * LN2  # D = 1
    assert abs(elbo.mean().item() - exact) < mc_tolerance(elbo.std().item(), n)


# ---------------------------------------------------------------------------------------------
# Rounding of the schedule's tables (for the float64 identities below)
# ---------------------------------------------------------------------------------------------
def table_error(d, i: torch.Tensor) -> torch.Tensor:
    """Relative error bound of the tables at code indices i ≥ 1 (book step t = i + 1).

    ᾱ_s is a product of s factors (relative error ≤ s u) and 1 - ᾱ_s is formed by subtraction,
    so it carries up to (s + 1) u / (1 - ᾱ_s); the posterior at step t divides by 1 - ᾱ_{t-1}.
    """
    return (i.to(F64) + 2) * U / (1 - d.alphas_cumprod_prev[i])


def rows(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """A [B] tensor shaped [B, 1, ...] to broadcast against [B, ...] of ``ndim`` dimensions."""
    return v.reshape(-1, *[1] * (ndim - 1))


def column(v: torch.Tensor, i: torch.Tensor, ndim: int) -> torch.Tensor:
    """Schedule table ``v`` at code indices ``i``, shaped by :func:`rows`."""
    return rows(v[i], ndim)


def kl_term_tolerance(d, i, x0, x_t, post, rev) -> torch.Tensor:
    """First-order bound on the rounding error of D ln2 · vb_term_bpd (nats) at steps i ≥ 1.

    μ̃_t - μ_θ is a difference of terms of size |coef1| (|x_0| + |x̂_0|) + |coef2| |x_t|, each
    with relative error ≤ 8e (e from :func:`table_error`); each term of the Gaussian KL adds a
    few roundings and the table errors of σ_t² and β̃_t.
    """
    e = rows(table_error(d, i), x0.ndim)
    coef1 = column(d.posterior_mean_coef1, i, x0.ndim)
    coef2 = column(d.posterior_mean_coef2, i, x0.ndim)
    delta = 8 * e * (coef1 * (x0.abs() + rev.pred_x0.abs()) + coef2 * x_t.abs())
    gap, var, tilde = post.mean - rev.mean, rev.variance, post.variance
    terms = var.log().abs() + tilde.log().abs() + tilde / var + 1 + gap**2 / var
    per_pixel = (2 * gap.abs() * delta + delta**2) / (2 * var) + (16 * U + 4 * e) * terms
    return per_pixel.flatten(1).sum(1)


def smooth_eps(x, t):
    """A made-up smooth ε-network: the identities below hold for any θ."""
    wiggle = torch.sin(t.to(x.dtype) / 100).reshape(-1, *[1] * (x.ndim - 1))
    return 0.8 * torch.tanh(x) + 0.1 * wiggle


SCHEDULES_1000 = {"linear": linear_beta_schedule(1000), "cosine": cosine_beta_schedule(1000)}


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_forward_step_is_the_posterior_flipped_by_bayes_rule_at_every_step(schedule):
    """eq-ch5-bayes-flip: q(x_t | x_{t-1}) = q(x_{t-1} | x_t, x_0) q(x_t | x_0) / q(x_{t-1} | x_0).

    Log densities at 8 points of the joint per step, every t = 2..T, from q_posterior_mean_variance,
    q_mean_variance and the forward step N(√α_t x_{t-1}, β_t); the tolerance is the tables'
    error (table_error) times the size of the terms. The posterior mean with √α_{t-1} in place
    of √ᾱ_{t-1} (errata E3) breaks the identity.
    """
    d = GaussianDiffusion(SCHEDULES_1000[schedule])
    g = torch.Generator().manual_seed(2)
    i = torch.arange(1, d.num_timesteps).repeat_interleave(8)
    x0 = torch.rand(len(i), 1, dtype=F64, generator=g) * 2 - 1
    x_prev = d.q_sample(x0, i - 1, torch.randn(x0.shape, dtype=F64, generator=g))
    x_t = d.q_step(x_prev, i, torch.randn(x0.shape, dtype=F64, generator=g))
    forward = log_normal(x_t, column(d.alphas, i, 2).sqrt() * x_prev, column(d.betas, i, 2))
    post = d.q_posterior_mean_variance(x0, x_t, i)
    marginal_t, marginal_prev = d.q_mean_variance(x0, i), d.q_mean_variance(x0, i - 1)
    terms = [
        log_normal(x_prev, post.mean, post.variance),
        log_normal(x_t, marginal_t.mean, marginal_t.variance),
        -log_normal(x_prev, marginal_prev.mean, marginal_prev.variance),
    ]
    scale = forward.abs() + sum(term.abs() for term in terms)
    tol = 8 * rows(table_error(d, i), 2) * scale
    assert ((forward - sum(terms)).abs() <= tol).all()
    coef1_e3 = column(d.alphas, i - 1, 2).sqrt() * column(d.betas, i, 2)
    wrong_mean = coef1_e3 / (1 - column(d.alphas_cumprod, i, 2)) * x0
    wrong_mean = wrong_mean + column(d.posterior_mean_coef2, i, 2) * x_t
    wrong = log_normal(x_prev, wrong_mean, post.variance) + terms[1] + terms[2]
    assert ((forward - wrong).abs() > tol).float().mean() > 0.9


def test_pathwise_form_equals_the_log_ratio_on_every_path():
    """eq-ch5-pathwise: L's integrand rearranged by eq-ch5-bayes-flip, path by path.

    -log(p_θ(x_{0:T}) / q(x_{1:T} | x_0)) = log q(x_T|x_0)/p(x_T) + Σ_{t≥2} log q(x_{t-1}|x_t,x_0)
    / p_θ(x_{t-1}|x_t) - log p_θ(x_0|x_1), on 64 forward paths of the linear schedule (T = 1000)
    with a made-up network; the tolerance sums the terms' rounding bounds. With the errata E3
    posterior mean the two sides part.
    """
    d = GaussianDiffusion(linear_beta_schedule(1000))
    g = torch.Generator().manual_seed(3)
    n = 64
    x0 = (torch.randint(0, 256, (n, 1), generator=g) / 127.5 - 1).to(F64)
    xs = forward_paths(d, x0, g)
    ratio = log_ratio_of_the_bound(d, smooth_eps, xs, decoder="discrete")

    T = d.num_timesteps
    i = torch.arange(1, T).repeat_interleave(n)  # every step t ≥ 2, all paths in one batch
    x_prev, x_t = torch.cat(xs[1:T]), torch.cat(xs[2:])
    x0_rep = x0.repeat(T - 1, 1)
    rev = d.p_mean_variance(smooth_eps, x_t, i, clip_denoised=False)
    post = d.q_posterior_mean_variance(x0_rep, x_t, i)
    log_rev = log_normal(x_prev, rev.mean, rev.variance)
    log_post = log_normal(x_prev, post.mean, post.variance)
    marginal_T = d.q_mean_variance(x0, T - 1)
    log_prior = log_normal(xs[T], marginal_T.mean, marginal_T.variance) - log_normal(
        xs[T], 0.0, torch.ones((), dtype=F64)
    )
    step_1 = d.p_mean_variance(smooth_eps, xs[1], 0, clip_denoised=False)
    decoder = discretized_gaussian_log_likelihood(x0, step_1.mean, 0.5 * step_1.log_variance)
    steps = (log_post - log_rev).reshape(T - 1, n, 1).sum(0)
    pathwise = (log_prior + steps - decoder)[:, 0]

    e = rows(table_error(d, i), 2)
    step_scale = (8 * e * (log_post.abs() + log_rev.abs())).reshape(T - 1, n).sum(0)
    tol = step_scale + 64 * T * U * (ratio.abs() + log_prior[:, 0].abs() + decoder[:, 0].abs())
    assert ((pathwise + ratio).abs() <= tol).all()
    coef1_e3 = column(d.alphas, i - 1, 2).sqrt() * column(d.betas, i, 2)
    coef1_e3 = coef1_e3 / (1 - column(d.alphas_cumprod, i, 2))
    wrong_mean = coef1_e3 * x0_rep + column(d.posterior_mean_coef2, i, 2) * x_t
    wrong_steps = (log_normal(x_prev, wrong_mean, post.variance) - log_rev).reshape(T - 1, n)
    wrong = log_prior[:, 0] + wrong_steps.sum(0) - decoder[:, 0]
    assert ((wrong + ratio).abs() > tol).all()


# ---------------------------------------------------------------------------------------------
# The step terms: mean gap, weighted ε-MSE, and L_simple (eq-ch5-Lt-mean ... eq-ch5-simple)
# ---------------------------------------------------------------------------------------------
def every_step_batch(d, seed: int):
    """One random 2x2 image x_0 in [-1, 1] per code index i = 1..T-1 (book steps 2..T), a noise
    draw ε and x_t = q_sample(x_0, i, ε)."""
    g = torch.Generator().manual_seed(seed)
    i = torch.arange(1, d.num_timesteps)
    x0 = torch.rand(len(i), 1, 2, 2, dtype=F64, generator=g) * 2 - 1
    eps = torch.randn(x0.shape, dtype=F64, generator=g)
    return i, x0, eps, d.q_sample(x0, i, eps)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_step_term_is_the_mean_gap_over_two_sigma2_plus_a_constant(schedule, variance):
    """eq-ch5-Lt-mean: L_{t-1} = ‖μ̃_t - μ_θ‖²/(2σ_t²) + D c_t per draw of x_t.

    With c_t = ½(log(σ_t²/β̃_t) + β̃_t/σ_t² - 1), at every step t = 2..T, in float64, against
    the rounding bound kl_term_tolerance. c_t is 0 for σ_t² = β̃_t and positive for σ_t² = β_t
    (Exercise 4), and mse_weights returns it.
    """
    d = GaussianDiffusion(SCHEDULES_1000[schedule], model_var_type=variance)
    i, x0, _, x_t = every_step_batch(d, seed=4)
    D = x0[0].numel()
    post = d.q_posterior_mean_variance(x0, x_t, i)
    rev = d.p_mean_variance(smooth_eps, x_t, i, clip_denoised=False)
    sigma2 = d.posterior_variance if variance == "fixed_small" else d.betas
    tilde = d.posterior_variance
    c = 0.5 * (torch.log(sigma2 / tilde) + tilde / sigma2 - 1)
    mean_gap = ((post.mean - rev.mean) ** 2 / (2 * column(sigma2, i, 4))).flatten(1).sum(1)
    kl_nats = vb_term_bpd(d, smooth_eps, x0, x_t, i) * D * LN2
    tol = kl_term_tolerance(d, i, x0, x_t, post, rev)
    assert ((kl_nats - (mean_gap + D * c[i])).abs() <= tol).all()
    if variance == "fixed_small":
        assert (c[1:] == 0).all()
    else:
        assert (c[1:] > 0).all()
    _, c_lib = mse_weights(d)
    torch.testing.assert_close(c_lib[1:], c[1:], rtol=0, atol=16 * U)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_mse_weights_turn_every_step_term_into_a_weighted_noise_error(schedule, variance):
    """eq-ch5-weighted-mse: D ln2 · vb_term_bpd = λ_t ‖ε - ε_θ(x_t, t)‖² + D c_t, per draw.

    λ_t and c_t from mse_weights, at every step t = 2..T, in float64 against the rounding bound
    kl_term_tolerance. The per-draw identity gives eq-ch5-weighted-mse's expectation over ε.
    A weight without the α_t of eq-ch5-lambda, β_t²/(2σ_t²(1-ᾱ_t)), fails the same check.
    """
    d = GaussianDiffusion(SCHEDULES_1000[schedule], model_var_type=variance)
    i, x0, eps, x_t = every_step_batch(d, seed=5)
    D = x0[0].numel()
    lam, c = mse_weights(d)
    sq_error = (eps - smooth_eps(x_t, i)).pow(2).flatten(1).sum(1)
    kl_nats = vb_term_bpd(d, smooth_eps, x0, x_t, i) * D * LN2
    post = d.q_posterior_mean_variance(x0, x_t, i)
    rev = d.p_mean_variance(smooth_eps, x_t, i, clip_denoised=False)
    tol = kl_term_tolerance(d, i, x0, x_t, post, rev)
    assert ((kl_nats - (lam[i] * sq_error + D * c[i])).abs() <= tol).all()
    without_alpha = lam * d.alphas
    assert ((kl_nats - (without_alpha[i] * sq_error + D * c[i])).abs() > tol).all()


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_mse_weights_are_beta2_over_2_sigma2_alpha_one_minus_alpha_bar(schedule, variance):
    """eq-ch5-lambda: λ_t = β_t²/(2σ_t² α_t (1-ᾱ_t)), written from β alone (float64, rtol 1e-12).

    Also eq-errata-elbo-weights, the same weight on the errata page: shape [T], float64, and
    NaN at book step 1, whose term is the decoder, not a KL.
    """
    betas = SCHEDULES_1000[schedule]
    lam, c = mse_weights(GaussianDiffusion(betas, model_var_type=variance))
    alphas = 1 - betas
    alpha_bar = torch.cumprod(alphas, 0)
    alpha_bar_prev = torch.cat([torch.ones(1, dtype=F64), alpha_bar[:-1]])
    tilde = betas * (1 - alpha_bar_prev) / (1 - alpha_bar)
    sigma2 = tilde if variance == "fixed_small" else betas
    want = betas**2 / (2 * sigma2 * alphas * (1 - alpha_bar))
    assert lam.shape == c.shape == (len(betas),)
    assert lam.dtype == c.dtype == F64
    assert lam[0].isnan() and c[0].isnan()
    torch.testing.assert_close(lam[1:], want[1:], rtol=1e-12, atol=0)


def test_mse_weights_follow_the_diffusions_variance_and_refuse_a_learned_one():
    """mse_weights needs a fixed σ_t²: by default the diffusion's own; a learned one is refused."""
    betas = linear_beta_schedule(100)
    large = GaussianDiffusion(betas, model_var_type="fixed_large")
    for a, b in zip(mse_weights(large), mse_weights(large, "fixed_large"), strict=True):
        torch.testing.assert_close(a, b, equal_nan=True, rtol=0, atol=0)
    small = mse_weights(large, "fixed_small")
    assert (small[0][1:] != mse_weights(large)[0][1:]).all()
    with pytest.raises(ValueError, match="fixed variance"):
        mse_weights(LearnedRangeDiffusion(betas))


def float32_mse_tolerance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Bound on the error of mean((a - b)²) per example when a, b are cast to float32 first.

    With d = a - b, each element is off by ≤ u32 (2|d|(|a| + |b|) + 3d²) and the float32 sum of
    n = D elements adds ≤ n u32 Σ d².
    """
    diff = (a - b).flatten(1)
    n = diff.shape[1]
    per_element = 2 * diff.abs() * (a.abs() + b.abs()).flatten(1) + (3 + n) * diff**2
    return U32 * per_element.mean(1)


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_l_simple_is_the_step_term_with_its_weight_dropped(variance):
    """eq-ch5-simple: training_loss is ‖ε - ε_θ‖²/D, the step term's error without its λ_t.

    At every step t = 2..T of the linear schedule: D ln2 · vb_term_bpd - D c_t = λ_t D ·
    training_loss for the same x_0, t and ε. training_loss is computed in float32, so its
    rounding bound (float32_mse_tolerance) is added to the float64 one.
    """
    d = GaussianDiffusion(linear_beta_schedule(1000), model_var_type=variance)
    i, x0, eps, x_t = every_step_batch(d, seed=6)
    D = x0[0].numel()
    lam, c = mse_weights(d)
    simple = d.training_loss(smooth_eps, x0, t=i, noise=eps).double()
    kl_nats = vb_term_bpd(d, smooth_eps, x0, x_t, i) * D * LN2
    post = d.q_posterior_mean_variance(x0, x_t, i)
    rev = d.p_mean_variance(smooth_eps, x_t, i, clip_denoised=False)
    tol = kl_term_tolerance(d, i, x0, x_t, post, rev)
    tol = tol + lam[i] * D * float32_mse_tolerance(smooth_eps(x_t, i), eps)
    assert ((kl_nats - D * c[i] - lam[i] * D * simple).abs() <= tol).all()
    # The weights λ_t the simple loss drops span orders of magnitude over the steps.
    assert lam[1:].max() / lam[1:].min() > 10


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_the_step_term_is_half_the_snr_drop_times_the_x0_error(schedule):
    """eq-ch5-snr-form: with σ_t² = β̃_t, L_{t-1} = ½ (SNR(t-1) - SNR(t)) ‖x_0 - x̂_0‖² (nats).

    At every step t = 2..T, for random x_0, x_t ~ q(x_t | x_0) and an arbitrary x̂_0 (the model
    is the ε-network whose x_0-guess is x̂_0), the Gaussian KL of vb_term_bpd (times D ln 2)
    equals snr_form_kl, in float64, within the KL's rounding bound (kl_term_tolerance) plus a
    few roundings of the SNR side, whose SNRs carry the tables' relative error.
    """
    d = GaussianDiffusion(SCHEDULES_1000[schedule])
    i, x0, _, x_t = every_step_batch(d, seed=8)
    g = torch.Generator().manual_seed(9)
    x0_hat = torch.rand(x0.shape, dtype=F64, generator=g) * 2 - 1

    def model(x, t):
        return d.predict_eps_from_x0(x, t, x0_hat)

    D = x0[0].numel()
    kl_nats = vb_term_bpd(d, model, x0, x_t, i) * D * LN2
    post = d.q_posterior_mean_variance(x0, x_t, i)
    rev = d.p_mean_variance(model, x_t, i, clip_denoised=False)
    snr = d.snr()
    form = snr_form_kl(x0, rev.pred_x0, snr[i - 1], snr[i])
    e = table_error(d, i)
    sq = (x0 - rev.pred_x0).pow(2).flatten(1).sum(1)
    snr_side = 0.5 * (snr[i - 1] + snr[i]) * sq * (8 * U + 4 * e)
    tol = kl_term_tolerance(d, i, x0, x_t, post, rev) + snr_side
    assert ((kl_nats - form).abs() <= tol).all()
    # The model's x_0-guess is the x̂_0 it was built from (one round trip through ε).
    torch.testing.assert_close(rev.pred_x0, x0_hat, rtol=0, atol=1e-9)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_the_snr_weight_is_the_chapters_lambda(schedule):
    """eq-ch5-snr-lambda: ½ (SNR(t-1)/SNR(t) - 1) = eq-ch5-lambda with σ_t² = β̃_t.

    Both sides are closed forms of the same tables in float64; the SNR ratio minus 1 loses at
    most the digits of 1/(ratio - 1) ≤ 1/β_t, so a relative tolerance of 1e-10 is ample.
    Entry 0 (book step 1, the decoder) is NaN in both.
    """
    d = GaussianDiffusion(SCHEDULES_1000[schedule])
    lam = snr_mse_weights(d.alphas_cumprod)
    lam_ref, _ = mse_weights(d, "fixed_small")
    assert lam[0].isnan() and lam_ref[0].isnan()
    torch.testing.assert_close(lam[1:], lam_ref[1:], rtol=1e-10, atol=0)
    # Equivalently λ_t = β_t / (2 α_t (1 - ᾱ_{t-1})).
    closed = d.betas / (2 * d.alphas * (1 - d.alphas_cumprod_prev))
    torch.testing.assert_close(lam[1:], closed[1:], rtol=1e-10, atol=0)


def test_the_snr_weight_at_the_ends_of_the_linear_schedule():
    """eq-ch5-snr-lambda on DDPM's linear schedule (T = 1000): λ_2 = 0.600, λ_T = 0.0102.

    At t = T, SNR(T-1)/SNR(T) - 1 = β_T/(α_T (1 - ᾱ_{T-1})) ≈ β_T = 0.02, so λ_T ≈ 0.0102; in
    between λ_t dips to about 0.0050 (near t = 350) and climbs again with β_t.
    """
    lam = snr_mse_weights(GaussianDiffusion(linear_beta_schedule(1000)).alphas_cumprod)
    assert lam[1].item() == pytest.approx(0.5997, abs=1e-4)
    assert lam[-1].item() == pytest.approx(0.0102, abs=5e-5)
    assert lam[1:].min().item() == pytest.approx(0.00498, abs=1e-5)
    assert int(lam[1:].argmin()) + 2 == 350


def _snr_path(name: str, n: int, snr_max: float, snr_min: float) -> torch.Tensor:
    """SNR at n even times of two schedules with the same ends: log-linear in the SNR, and a
    cosine-shaped path (log SNR = a + b cos(π u / 2), fast at the end)."""
    u = torch.linspace(0, 1, n, dtype=F64)
    hi, lo = math.log(snr_max), math.log(snr_min)
    if name == "log-linear":
        return torch.exp(hi + (lo - hi) * u)
    return torch.exp(lo + (hi - lo) * torch.cos(math.pi * u / 2))


@pytest.mark.parametrize("path", ["log-linear", "cosine-shaped"])
def test_the_step_terms_of_gaussian_data_approach_the_continuous_bound_from_above(path):
    """eq-ch5-continuous, eq-ch5-snr-integral, eq-ch5-gaussian-limit: for x_0 ~ N(0, s²) and the
    exact x̂_0, Σ_{t≥2} ½ (SNR(t-1) - SNR(t)) s²/(1 + s² SNR(t)) is an upper Riemann sum of
    ½ ∫ s²/(1 + s² v) dv (the error decreases in v), so for every grid

        lower sum ≤ ½ log((1 + s² SNR_max)/(1 + s² SNR_min)) ≤ gaussian_step_terms_sum,

    with the lower sum taking the error at the less noisy end, and the gap closes as T grows;
    two schedules with the same ends have the same limit.
    """
    s2, snr_max, snr_min = 0.25, 9999.0, 4.04e-5
    limit = gaussian_continuous_bound(snr_max, snr_min, s2)
    assert limit == pytest.approx(0.5 * math.log(1 + s2 * snr_max), rel=1e-4)
    gaps = []
    for n in (10, 100, 1000, 10_000, 100_000):
        snr = _snr_path(path, n, snr_max, snr_min)
        upper = gaussian_step_terms_sum(snr, s2).item()
        lower = (0.5 * (snr[:-1] - snr[1:]) * s2 / (1 + s2 * snr[:-1])).sum().item()
        assert lower - 1e-12 <= limit <= upper + 1e-12
        gaps.append(upper - limit)
    assert all(b < a for a, b in zip(gaps, gaps[1:], strict=False))
    assert gaps[-1] < 1e-2 * limit


def test_the_continuous_bound_is_the_integral_over_the_snr():
    """eq-ch5-snr-integral: ½ ∫_{SNR_min}^{SNR_max} s²/(1 + s² v) dv in closed form, against the
    trapezoid rule on 200,001 log-spaced points (relative error of order 1e-9 here)."""
    s2, snr_max, snr_min = 0.5, 1e4, 1e-4
    v = torch.logspace(math.log10(snr_min), math.log10(snr_max), 200_001, dtype=F64)
    numeric = torch.trapezoid(0.5 * s2 / (1 + s2 * v), v).item()
    assert gaussian_continuous_bound(snr_max, snr_min, s2) == pytest.approx(numeric, rel=1e-7)
