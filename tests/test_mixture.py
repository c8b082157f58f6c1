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
