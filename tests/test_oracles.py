"""Specification of ddpm_lib.oracles: each exact ε-model is -√(1-ᾱ_t) times the exact score.

eq-ch4-tweedie: E[ε | x_t] = -√(1-ᾱ_t) ∇ log q_t(x_t). Each oracle is checked against that
identity with the score taken by autograd of an independently written log-density, in float64
(tolerance: a few roundings).
"""

import math

import pytest
import torch

from ddpm_lib.diffusion import GaussianDiffusion
from ddpm_lib.mixture import default_gmm
from ddpm_lib.oracles import GaussianOracle, MixtureOracle, PointOracle
from ddpm_lib.schedules import linear_beta_schedule
from ddpm_lib.sde import DiscreteVPSDE

F64 = dict(rtol=1e-10, atol=1e-10)
D = GaussianDiffusion(linear_beta_schedule(1000))
T_MIX = torch.tensor([0, 9, 99, 499, 999, 9])  # a mix of steps in one batch


def autograd_score(log_density, x):
    x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(log_density(x).sum(), x)
    return grad


def test_point_oracle_makes_every_x0_prediction_the_data_point():
    """eq-ch4-tweedie: for a point mass, E[x_0 | x_t] = x* at every step."""
    x_star = torch.tensor([[0.3, -0.8]], dtype=torch.float64)
    x_t = torch.randn(6, 2, dtype=torch.float64)
    eps = PointOracle(D, x_star)(x_t, T_MIX)
    torch.testing.assert_close(D.predict_x0_from_eps(x_t, T_MIX, eps), x_star.expand(6, 2), **F64)


def test_point_oracle_score_fn_is_the_score_of_the_noised_point_mass():
    sde = DiscreteVPSDE(D.betas)
    x_star = torch.tensor([[0.3, -0.8]], dtype=torch.float64)
    t = torch.tensor([0.01, 0.5, 1.0], dtype=torch.float64)
    x = torch.randn(3, 2, dtype=torch.float64)
    mean, std = sde.marginal_prob(x_star.expand(3, 2), t)

    def log_q(y):
        return (-((y - mean) ** 2) / (2 * std[:, None] ** 2)).sum(1)

    got = PointOracle(D, x_star).score_fn(sde)(x, t)
    torch.testing.assert_close(got, autograd_score(log_q, x), **F64)


def test_gaussian_oracle_is_minus_root_one_minus_alpha_bar_times_the_marginal_score():
    """eq-ch4-tweedie: E[ε | x_t] = -√(1-ᾱ_t) ∇ log q_t(x_t) for Gaussian data."""
    s2, m = 0.25, 0.4
    oracle = GaussianOracle(D, s2, mean=m)
    x_t = torch.randn(6, 3, dtype=torch.float64)
    ab = D.alphas_cumprod[T_MIX][:, None]

    def log_q(y):  # x_t ~ N(√ᾱ m, ᾱ s² + 1 - ᾱ) per coordinate
        return (-((y - ab.sqrt() * m) ** 2) / (2 * (ab * s2 + 1 - ab))).sum(1)

    want = -(1 - ab).sqrt() * autograd_score(log_q, x_t)
    torch.testing.assert_close(oracle(x_t, T_MIX), want, **F64)


def test_mixture_oracle_is_minus_root_one_minus_alpha_bar_times_the_marginal_score():
    """eq-ch4-tweedie: E[ε | x_t] = -√(1-ᾱ_t) ∇ log q_t(x_t) for the mixture, per row's step."""
    gmm = default_gmm(torch.float64)
    x_t = 2 * torch.randn(6, 2, dtype=torch.float64)
    want = torch.empty_like(x_t)
    for row, i in enumerate(T_MIX.tolist()):  # each row its own step
        ab = D.alphas_cumprod[i].item()
        score = autograd_score(gmm.noised(ab).log_prob, x_t[row : row + 1])
        want[row] = -math.sqrt(1 - ab) * score[0]
    torch.testing.assert_close(MixtureOracle(D, gmm)(x_t, T_MIX), want, **F64)


def bayes_posterior_mean(gmm, ab, x):
    """E[x_0 | x_t = x] for mixture data, by Bayes' rule with no score involved: component k
    has posterior weight ∝ w_k N(x; √ᾱ μ_k, v I), v = ᾱ s² + 1 - ᾱ, and within it x_0 is
    Gaussian-conditioned to μ_k + √ᾱ s²/v (x - √ᾱ μ_k)."""
    s2, mu = gmm.std**2, gmm.means
    v = ab * s2 + 1 - ab
    resid = x[:, None, :] - math.sqrt(ab) * mu[None]  # [n, K, d]
    resp = torch.softmax(gmm.weights.log() - (resid**2).sum(-1) / (2 * v), dim=1)
    within = mu[None] + math.sqrt(ab) * s2 / v * resid
    return (resp[:, :, None] * within).sum(1)


def mixture_log_density(gmm, ab, x):
    """log q_t(x) of the noised mixture, written out (not GaussianMixture2D.noised)."""
    v = ab * gmm.std**2 + 1 - ab
    sq = ((x[:, None, :] - math.sqrt(ab) * gmm.means[None]) ** 2).sum(-1)
    log_k = gmm.weights.log() - sq / (2 * v) - 0.5 * gmm.dim * math.log(2 * math.pi * v)
    return torch.logsumexp(log_k, dim=1)


def test_score_to_eps_of_the_marginal_score_is_the_posterior_mean_of_the_noise():
    """eq-ch4-tweedie, first line: -√(1-ᾱ_t) ∇ log q_t(x_t) (score_to_eps of the autograd
    score) is E[ε | x_t] = (x_t - √ᾱ_t E[x_0 | x_t])/√(1-ᾱ_t), E[x_0 | x_t] by Bayes' rule.
    With (1-ᾱ_t) in place of its square root it is not."""
    gmm = default_gmm(torch.float64)
    x_t = 2 * torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    score, want = torch.empty_like(x_t), torch.empty_like(x_t)
    for row, i in enumerate(T_MIX.tolist()):
        ab, x = D.alphas_cumprod[i].item(), x_t[row : row + 1]
        score[row] = autograd_score(lambda y, ab=ab: mixture_log_density(gmm, ab, y), x)[0]
        want[row] = (x - math.sqrt(ab) * bayes_posterior_mean(gmm, ab, x))[0] / math.sqrt(1 - ab)
    torch.testing.assert_close(D.score_to_eps(score, T_MIX), want, **F64)
    wrong = -(1 - D.alphas_cumprod[T_MIX])[:, None] * score
    assert (wrong - want).abs().max() > 0.1


def test_x0_of_the_exact_eps_model_is_the_posterior_mean_tweedies_formula():
    """eq-ch4-tweedie, second line: the x̂_0 of the exact ε-model, and
    (x_t + (1-ᾱ_t) ∇ log q_t(x_t))/√ᾱ_t, are both E[x_0 | x_t] (by Bayes' rule). Float64; the
    division by √ᾱ_t (≥ 0.006) costs at most a factor 160 in rounding."""
    gmm = default_gmm(torch.float64)
    x_t = 2 * torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    want, tweedie = torch.empty_like(x_t), torch.empty_like(x_t)
    for row, i in enumerate(T_MIX.tolist()):
        ab, x = D.alphas_cumprod[i].item(), x_t[row : row + 1]
        want[row] = bayes_posterior_mean(gmm, ab, x)[0]
        score = autograd_score(lambda y, ab=ab: mixture_log_density(gmm, ab, y), x)[0]
        tweedie[row] = (x[0] + (1 - ab) * score) / math.sqrt(ab)
    x0 = D.predict_x0_from_eps(x_t, T_MIX, MixtureOracle(D, gmm)(x_t, T_MIX))
    torch.testing.assert_close(x0, want, **F64)
    torch.testing.assert_close(tweedie, want, **F64)


def test_gaussian_oracle_x0_is_tweedies_formula_with_the_marginal_score():
    """eq-ch4-tweedie, second line, for Gaussian data: GaussianOracle.x0 (Gaussian conditioning)
    is (x_t + (1-ᾱ_t) ∇ log q_t(x_t))/√ᾱ_t with the autograd score of N(√ᾱ m, ᾱ s² + 1 - ᾱ)."""
    s2, m = 0.25, 0.4
    oracle = GaussianOracle(D, s2, mean=m)
    x_t = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    ab = D.alphas_cumprod[T_MIX][:, None]

    def log_q(y):
        return (-((y - ab.sqrt() * m) ** 2) / (2 * (ab * s2 + 1 - ab))).sum(1)

    want = (x_t + (1 - ab) * autograd_score(log_q, x_t)) / ab.sqrt()
    torch.testing.assert_close(oracle.x0(x_t, T_MIX), want, **F64)


@pytest.mark.parametrize("step", [99, 499])
def test_mixture_oracle_residual_is_uncorrelated_with_every_function_of_x_t(step, one_thread):
    """eq-ch4-tweedie (Proposition: the best noise guess is E[ε | x_t]), by Monte Carlo: for
    x_0 from the mixture and x_t = √ᾱ x_0 + √(1-ᾱ) ε, the residual ε - ε*(x_t) has
    E[(ε - ε*(x_t)) h(x_t)] = 0 for h = 1, x_t, tanh(x_t) and x_t², within 5 standard errors of
    the sample mean (1e5 draws). The same with (1-ᾱ) in place of √(1-ᾱ) is rejected at t = 100."""
    n, gmm = 100_000, default_gmm(torch.float64)
    gen = torch.Generator().manual_seed(3)
    x0 = gmm.sample(n, generator=gen)
    eps = torch.randn(n, 2, dtype=torch.float64, generator=gen)
    t = torch.full((n,), step)
    x_t = D.q_sample(x0, t, eps)
    pred = MixtureOracle(D, gmm)(x_t, t)
    features = [torch.ones_like(x_t), x_t, torch.tanh(x_t), x_t**2]

    def worst_z(residual):
        z = 0.0
        for h in features:
            prod = residual * h
            z = max(z, (prod.mean(0).abs() / (prod.std(0) / math.sqrt(n))).max().item())
        return z

    assert worst_z(eps - pred) < 5
    if step == 99:
        ab = D.alphas_cumprod[step].item()
        assert worst_z(eps - pred * math.sqrt(1 - ab)) > 5  # -(1-ᾱ)·score in place of -√(1-ᾱ)·score
