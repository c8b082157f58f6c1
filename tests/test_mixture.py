"""Specification of ddpm_lib.mixture: the 2-D Gaussian mixture's exact densities and scores."""

from __future__ import annotations

import math

import pytest
import torch

from ddpm_lib.mixture import GaussianMixture2D, default_gmm

# ----------------------------------------------------------------------------- Gaussian mixture


def asymmetric_mixture() -> GaussianMixture2D:
    """Unequal weights and a nonzero mean, so scaling errors in the means are visible."""
    means = torch.tensor([[2.0, 0.0], [-1.0, 1.0], [0.0, -3.0]], dtype=torch.float64)
    return GaussianMixture2D(means, 0.3, torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64))


def test_score_equals_autograd_gradient_of_log_prob() -> None:
    mix = asymmetric_mixture()
    x = 3 * torch.randn(256, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(mix.log_prob(x).sum(), x)
    score = mix.score(x.detach())
    # Both are the same float64 expression evaluated differently: agreement to ~1e-14 relative.
    torch.testing.assert_close(score, grad, rtol=1e-10, atol=1e-10 * grad.abs().max().item())


def test_log_prob_and_score_stay_finite_far_from_every_component() -> None:
    x = torch.tensor([[1e3, -1e3]], dtype=torch.float64)
    mix = asymmetric_mixture()
    assert torch.isfinite(mix.log_prob(x)).all() and torch.isfinite(mix.score(x)).all()


def test_noised_mixture_matches_monte_carlo_forward_process() -> None:
    mix, alpha_bar, n = asymmetric_mixture(), 0.4, 200_000
    g = torch.Generator().manual_seed(0)
    x0 = mix.sample(n, g)
    xt = math.sqrt(alpha_bar) * x0 + math.sqrt(1 - alpha_bar) * torch.randn(
        n, 2, generator=g, dtype=torch.float64
    )
    target = mix.noised(alpha_bar)
    mean, cov = target.mean(), target.covariance()
    # Sample mean: standard error sqrt(Cov_ii / n) per coordinate.
    mean_se = (cov.diagonal() / n).sqrt()
    assert ((xt.mean(0) - mean).abs() < 5 * mean_se).all()
    # Covariance centred at the true mean: the average of P_ij = (x_i - m_i)(x_j - m_j) is unbiased,
    # with standard error sd(P_ij) / sqrt(n) (sd estimated from the same samples).
    centred = xt - mean
    products = centred[:, :, None] * centred[:, None, :]
    cov_se = products.std(0) / math.sqrt(n)
    assert ((products.mean(0) - cov).abs() < 5 * cov_se).all()


def test_noised_at_alpha_bar_one_is_the_original_mixture() -> None:
    mix = asymmetric_mixture()
    same = mix.noised(1.0)
    assert torch.equal(same.means, mix.means) and torch.equal(same.weights, mix.weights)
    assert same.std == pytest.approx(mix.std, rel=1e-15)


def test_noised_at_alpha_bar_zero_is_standard_normal() -> None:
    noise = asymmetric_mixture().noised(0.0)
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(noise.score(x), -x, rtol=1e-12, atol=1e-12)
    expected = -0.5 * (x**2).sum(1) - math.log(2 * math.pi)
    torch.testing.assert_close(noise.log_prob(x), expected, rtol=1e-12, atol=1e-12)


def test_default_gmm_has_circle_moments() -> None:
    # Eight equally spaced points on a circle of radius 2: mean 0, Cov = (2^2 / 2 + 0.15^2) I.
    mix = default_gmm(torch.float64)
    torch.testing.assert_close(mix.mean(), torch.zeros(2, dtype=torch.float64), atol=1e-12, rtol=0)
    expected = (2.0 + 0.15**2) * torch.eye(2, dtype=torch.float64)
    torch.testing.assert_close(mix.covariance(), expected, atol=1e-12, rtol=0)


def test_mixture_weights_are_normalised() -> None:
    mix = GaussianMixture2D(torch.zeros(2, 2), 1.0, torch.tensor([2.0, 6.0]))
    assert mix.weights.tolist() == [0.25, 0.75]


@pytest.mark.parametrize(
    ("means", "std", "weights"),
    [
        (torch.zeros(2, 2), 0.0, None),
        (torch.zeros(2, 2), 1.0, torch.tensor([1.5, -0.5])),
        (torch.zeros(2, 2), 1.0, torch.tensor([1.0, 1.0, 1.0])),
        (torch.zeros(2), 1.0, None),
    ],
    ids=["zero_std", "negative_weight", "weights_shape", "means_not_2d"],
)
def test_mixture_rejects_invalid_parameters(
    means: torch.Tensor, std: float, weights: torch.Tensor | None
) -> None:
    with pytest.raises(ValueError):
        GaussianMixture2D(means, std, weights)


# ------------------------------------------------------------ the exact reverse kernel (Chapter 3)


def pixel_mixture() -> GaussianMixture2D:
    """Chapter 3's 1-D data: a pixel that is black (-1) or white (+1), std 0.1, equal odds."""
    return GaussianMixture2D(torch.tensor([[-1.0], [1.0]], dtype=torch.float64), 0.1)


def alpha_bar(t: int) -> float:
    """ᾱ_t of the linear schedule with T = 1000 (ᾱ_0 = 1), in float64."""
    from ddpm_lib.schedules import linear_beta_schedule

    return 1.0 if t == 0 else torch.cumprod(1 - linear_beta_schedule(1000), 0)[t - 1].item()


def normal_pdf(x, mean, var) -> torch.Tensor:
    """N(x; mean, var) elementwise (tensors or floats, broadcast)."""
    var = torch.as_tensor(var, dtype=torch.float64)
    return torch.exp(-((x - mean) ** 2) / (2 * var)) / torch.sqrt(2 * math.pi * var)


STEPS = [(199, 200), (100, 200), (0, 200), (999, 1000), (0, 1)]  # (s, t): one step, jumps


@pytest.mark.parametrize(("s", "t"), STEPS)
@pytest.mark.parametrize("x_t", [0.0, 0.45, -1.3])
def test_reverse_kernel_is_bayes_rule_on_a_grid(s: int, t: int, x_t: float) -> None:
    """eq-ch3-mixture-kernel is eq-ch3-reverse-bayes normalised: the closed form equals
    q(x_t | x_s) q_s(x_s) / ∫ (...) dx_s computed on a grid, and integrates to 1."""
    mix = pixel_mixture()
    kernel = mix.reverse_kernel(torch.tensor([x_t]), alpha_bar(s), alpha_bar(t))
    lo, hi = kernel.means.min().item(), kernel.means.max().item()  # every component, ± 12 std
    grid = torch.linspace(lo - 12 * kernel.std, hi + 12 * kernel.std, 20_001, dtype=torch.float64)
    h = (grid[1] - grid[0]).item()
    a = alpha_bar(t) / alpha_bar(s)
    likelihood = normal_pdf(torch.tensor(x_t) - math.sqrt(a) * grid, 0.0, 1 - a)  # q(x_t | x_s)
    unnormalised = likelihood * mix.noised(alpha_bar(s)).log_prob(grid[:, None]).exp()
    brute = unnormalised / (unnormalised.sum() * h)
    closed = kernel.log_prob(grid[:, None]).exp()
    # A Gaussian mixture sampled over ±12 component std: the Riemann sum of a smooth, rapidly
    # decaying density is exact to far below float64 rounding of the peak (1e-10 is loose).
    assert abs(closed.sum().item() * h - 1) < 1e-10
    torch.testing.assert_close(closed, brute, rtol=0, atol=1e-10 * closed.max().item())


@pytest.mark.parametrize(("s", "t"), STEPS)
def test_reverse_kernel_moments_are_tweedies_formulas(s: int, t: int) -> None:
    """eq-ch3-small-step holds exactly for the mean and covariance when written with the score:
    x_t = √a x_s + √(1-a) ε gives E[x_s | x_t] = (x_t + (1-a) ∇log q_t(x_t))/√a and
    Cov[x_s | x_t] = (1-a)(I + (1-a) ∇²log q_t(x_t))/a, with a = ᾱ_t/ᾱ_s (a = α_t for one step,
    1 - a = β_t). Checked in 2-D on the asymmetric mixture, Hessian by autograd."""
    mix = asymmetric_mixture()
    a = alpha_bar(t) / alpha_bar(s)
    q_t = mix.noised(alpha_bar(t))
    g = torch.Generator().manual_seed(0)
    for x_t in q_t.sample(4, g):
        kernel = mix.reverse_kernel(x_t, alpha_bar(s), alpha_bar(t))
        score = q_t.score(x_t[None])[0]
        hessian = torch.autograd.functional.hessian(lambda x: q_t.log_prob(x[None])[0], x_t)
        mean = (x_t + (1 - a) * score) / math.sqrt(a)
        cov = (1 - a) * (torch.eye(2, dtype=torch.float64) + (1 - a) * hessian) / a
        # Same float64 quantities computed two ways: agreement to rounding (1e-9 of the scale).
        torch.testing.assert_close(kernel.mean(), mean, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(kernel.covariance(), cov, rtol=1e-9, atol=1e-9 * (1 - a))


@pytest.mark.parametrize("t", [2, 50, 200, 600])
def test_reverse_kernel_is_the_posterior_averaged_over_x0(t: int) -> None:
    """eq-ch3-reverse-average: q(x_{t-1} | x_t) = ∫ q(x_{t-1} | x_t, x_0) q(x_0 | x_t) dx_0, with
    the library's posterior (q_posterior_mean_variance) and q(x_0 | x_t) = reverse_kernel to
    ᾱ_0 = 1, integrated over a grid of x_0."""
    from ddpm_lib.diffusion import GaussianDiffusion
    from ddpm_lib.schedules import linear_beta_schedule

    mix, diffusion = pixel_mixture(), GaussianDiffusion(linear_beta_schedule(1000))
    x_t = torch.tensor([0.3], dtype=torch.float64)
    x0_law = mix.reverse_kernel(x_t, 1.0, alpha_bar(t))  # q(x_0 | x_t)
    x0 = torch.linspace(-2.0, 2.0, 40_001, dtype=torch.float64)
    w = x0_law.log_prob(x0[:, None]).exp() * (x0[1] - x0[0])  # quadrature weights, sum ≈ 1
    post = diffusion.q_posterior_mean_variance(x0, x_t.expand_as(x0), t - 1)
    kernel = mix.reverse_kernel(x_t, alpha_bar(t - 1), alpha_bar(t))
    m, sd = kernel.mean()[0].item(), kernel.covariance()[0, 0].sqrt().item()
    for x_prev in torch.linspace(m - 3 * sd, m + 3 * sd, 7, dtype=torch.float64):
        averaged = (w * normal_pdf(x_prev, post.mean, post.variance)).sum()
        exact = kernel.log_prob(x_prev.reshape(1, 1)).exp()[0]
        # Riemann sum over x_0 of smooth integrands (x_0's posterior is ≥ 0.1 wide): 1e-8 relative.
        assert abs(averaged.item() - exact.item()) < 1e-8 * exact.item() + 1e-12


def test_one_reverse_step_is_nearly_gaussian_and_a_long_jump_is_bimodal() -> None:
    """eq-ch3-small-step: the one-step kernel is within a small total variation of its
    moment-matched Gaussian; 100 steps back from x_t = 0 (t = 200 -> 100) it has two modes and
    a dip at its mean, far from any Gaussian."""
    mix = pixel_mixture()

    def tv_to_gaussian(s: int, t: int) -> tuple[float, GaussianMixture2D]:
        kernel = mix.reverse_kernel(torch.zeros(1), alpha_bar(s), alpha_bar(t))
        m, var = kernel.mean()[0].item(), kernel.covariance()[0, 0].item()
        grid = torch.linspace(m - 12 * var**0.5, m + 12 * var**0.5, 20_001, dtype=torch.float64)
        p = kernel.log_prob(grid[:, None]).exp()
        tv = 0.5 * (p - normal_pdf(grid, m, var)).abs().sum() * (grid[1] - grid[0])
        return tv.item(), kernel

    tv_step, _ = tv_to_gaussian(199, 200)
    tv_jump, jump = tv_to_gaussian(100, 200)
    # One step: the correction is of relative order β_t |∇² log q| (β_200 ≈ 0.004): TV < 0.01.
    assert tv_step < 0.01
    assert tv_jump > 0.1
    density = lambda x: jump.log_prob(torch.tensor([[x]], dtype=torch.float64)).exp().item()  # noqa: E731
    mode = jump.means[:, 0].abs().max().item()
    assert density(0.0) < 0.5 * density(mode)


def test_reverse_kernel_rejects_steps_in_the_wrong_order() -> None:
    mix = pixel_mixture()
    with pytest.raises(ValueError):
        mix.reverse_kernel(torch.zeros(1), 0.5, 0.5)
    with pytest.raises(ValueError):
        mix.reverse_kernel(torch.zeros(1), 0.4, 0.6)
    with pytest.raises(ValueError):
        mix.reverse_kernel(torch.zeros(2), 0.9, 0.5)


@pytest.mark.parametrize("std", [0.01, 0.3, 1.0])
@pytest.mark.parametrize("t", [2, 200, 1000])
def test_completing_the_square_with_the_taylor_terms_is_exact_for_gaussian_data(
    std: float, t: int
) -> None:
    """eq-ch3-taylor: for Gaussian data N(μ, std² I), log q_{t-1} is quadratic, so the kernel
    from the expansion (precision α_t/β_t - H, mean m + (α_t/β_t - H)^{-1} g around
    m = x_t/√α_t) is exact; std -> 0 gives β̃_t (eq-ch3-precision), std = 1 with μ = 0 gives β_t."""
    mu = torch.tensor([[0.4, -0.2]], dtype=torch.float64) * (std != 1.0)
    data = GaussianMixture2D(mu, std)
    a_s, a_t = alpha_bar(t - 1), alpha_bar(t)
    alpha, beta = a_t / a_s, 1 - a_t / a_s
    x_t = torch.tensor([0.7, -1.1], dtype=torch.float64)
    m = x_t / math.sqrt(alpha)
    prior = data.noised(a_s)  # q_{t-1}, one Gaussian
    g = prior.score(m[None])[0]
    hess = torch.autograd.functional.hessian(lambda x: prior.log_prob(x[None])[0], m)
    precision = alpha / beta * torch.eye(2, dtype=torch.float64) - hess
    cov = torch.linalg.inv(precision)
    kernel = data.reverse_kernel(x_t, a_s, a_t)
    # Both are closed forms of the same Gaussian in float64: agreement to rounding.
    torch.testing.assert_close(kernel.mean(), m + cov @ g, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(kernel.covariance(), cov, rtol=1e-9, atol=1e-15)
    if std == 1.0:  # N(0, I) data: the variance is beta_t
        torch.testing.assert_close(cov, beta * torch.eye(2, dtype=torch.float64))
    if (
        std == 0.01
    ):  # nearly a point mass: close to beta~_t = (1 - abar_{t-1}) beta_t / (1 - abar_t)
        beta_tilde = (1 - a_s) / (1 - a_t) * beta
        assert abs(cov[0, 0].item() / beta_tilde - 1) < 2 * std**2 / (1 - a_s)
