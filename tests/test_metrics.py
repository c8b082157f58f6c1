"""Specification of ddpm_lib.evaluation.metrics: FD, precision/recall, classifier, ELBO."""

import math

import mpmath
import pytest
import torch

from ddpm_lib.diffusion import GaussianDiffusion
from ddpm_lib.evaluation.metrics import (
    FeatureNet,
    elbo_summary,
    extract_features,
    feature_statistics,
    frechet_distance,
    frechet_distance_features,
    precision_recall,
    train_classifier,
)
from ddpm_lib.gaussian import discretized_gaussian_log_likelihood
from ddpm_lib.schedules import linear_beta_schedule

# float64 eigen-decompositions of well-conditioned D x D matrices: errors of a few ulps times
# the trace; 1e-9 relative leaves a wide margin above ~1e-14 and far below any real difference.
REL = 1e-9


def _random_cov(d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    return a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)


def test_frechet_distance_of_a_set_with_itself_is_zero():
    x = torch.randn(500, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mu, sigma = feature_statistics(x)
    assert frechet_distance(mu, sigma, mu, sigma) <= REL * sigma.trace().item()


def test_frechet_distance_of_a_shifted_set_is_the_squared_shift():
    # x and x + δ have the same covariance, so FD = ‖δ‖² exactly.
    x = torch.randn(400, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    delta = torch.linspace(-1, 2, 8, dtype=torch.float64)
    for scale in (0.1, 1.0, 3.0):
        fd = frechet_distance_features(x, x + scale * delta)
        expected = scale**2 * delta.pow(2).sum().item()
        assert fd == pytest.approx(expected, rel=REL, abs=REL * x.var(0).sum().item())


def test_frechet_distance_matches_closed_form_for_commuting_covariances():
    # Diagonal Σ_1, Σ_2: FD = ‖μ_1-μ_2‖² + Σ_i (√s_1i - √s_2i)².
    s1 = torch.tensor([0.5, 1.0, 2.0, 4.0], dtype=torch.float64)
    s2 = torch.tensor([1.0, 1.0, 0.25, 9.0], dtype=torch.float64)
    m1 = torch.tensor([0.0, 1.0, -1.0, 2.0], dtype=torch.float64)
    m2 = torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=torch.float64)
    expected = (m1 - m2).pow(2).sum() + (s1.sqrt() - s2.sqrt()).pow(2).sum()
    got = frechet_distance(m1, torch.diag(s1), m2, torch.diag(s2))
    assert got == pytest.approx(expected.item(), rel=REL)


def test_frechet_distance_matches_closed_form_for_non_commuting_2d_covariances():
    # For a 2x2 PSD matrix M: tr √M = √(tr M + 2 √det M), since (√λ1 + √λ2)² = tr M + 2√det M.
    # Here M = Σ_1^{1/2} Σ_2 Σ_1^{1/2} has tr M = tr(Σ_1 Σ_2) and det M = det Σ_1 det Σ_2.
    s1 = torch.tensor([[2.0, 0.3], [0.3, 0.5]], dtype=torch.float64)
    rot = torch.tensor([[math.cos(0.7), -math.sin(0.7)], [math.sin(0.7), math.cos(0.7)]])
    s2 = rot.double() @ torch.diag(torch.tensor([3.0, 0.2], dtype=torch.float64)) @ rot.double().T
    m1 = torch.tensor([0.5, -0.5], dtype=torch.float64)
    m2 = torch.tensor([-1.0, 0.25], dtype=torch.float64)
    tr_sqrt = math.sqrt(
        (s1 @ s2).trace().item() + 2 * math.sqrt(torch.det(s1).item() * torch.det(s2).item())
    )
    expected = (m1 - m2).pow(2).sum().item() + s1.trace().item() + s2.trace().item() - 2 * tr_sqrt
    assert frechet_distance(m1, s1, m2, s2) == pytest.approx(expected, rel=REL)


def test_frechet_distance_is_symmetric():
    s1, s2 = _random_cov(6, 0), _random_cov(6, 1)
    m1, m2 = torch.zeros(6, dtype=torch.float64), torch.ones(6, dtype=torch.float64)
    assert frechet_distance(m1, s1, m2, s2) == pytest.approx(
        frechet_distance(m2, s2, m1, s1), rel=REL
    )


def test_frechet_distance_refuses_statistics_of_different_feature_spaces():
    with pytest.raises(ValueError, match="same feature network"):
        frechet_distance(torch.zeros(3), torch.eye(3), torch.zeros(4), torch.eye(4))


def test_feature_statistics_need_two_samples():
    with pytest.raises(ValueError, match="N ≥ 2"):
        feature_statistics(torch.zeros(1, 5))


def test_precision_and_recall_of_a_set_with_itself_are_one():
    x = torch.randn(300, 4, generator=torch.Generator().manual_seed(2))
    pr = precision_recall(x, x.clone(), k=3)
    assert pr["precision"] == 1.0 and pr["recall"] == 1.0


def test_precision_and_recall_of_far_apart_sets_are_zero():
    x = torch.randn(300, 4, generator=torch.Generator().manual_seed(3))
    pr = precision_recall(x, x + 100.0, k=3)
    assert pr["precision"] == 0.0 and pr["recall"] == 0.0


def test_precision_falls_when_half_the_samples_leave_the_real_manifold():
    # Half of the fake set sits 100 units away: outside every real k-NN ball. The other half is
    # a copy of real points: inside. So precision is exactly 1/2. Recall is at least 1/2: the
    # copied real points are covered by their copies (distance 0).
    real = torch.randn(400, 3, generator=torch.Generator().manual_seed(4))
    fake = torch.cat([real[:200], real[200:] + 100.0])
    pr = precision_recall(real, fake, k=3)
    assert pr["precision"] == 0.5
    assert pr["recall"] >= 0.5


def test_feature_net_features_have_the_configured_size():
    net = FeatureNet(in_channels=1, feature_dim=64).eval()
    x = torch.rand(5, 1, 28, 28) * 2 - 1
    assert extract_features(net, x, batch_size=2).shape == (5, 64)
    assert net(x).shape == (5, 10)


def test_identity_features_are_the_coordinates():
    x = torch.randn(7, 2)
    assert torch.equal(extract_features(None, x), x.double())


def test_classifier_learns_a_separable_task():
    # Class = which half of the image is bright: a linear feature suffices.
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (256,), generator=g)
    x = -torch.ones(256, 1, 12, 12) + 0.1 * torch.rand(256, 1, 12, 12, generator=g)
    x[y == 0, :, :6] += 1.5
    x[y == 1, :, 6:] += 1.5
    model, card = train_classifier(x[:192], y[:192], x[192:], y[192:], epochs=3, batch_size=32,
                                   progress=False)  # fmt: skip
    assert card["test_accuracy"] == 1.0
    assert card["train_images"] == 192 and card["test_images"] == 64
    assert not model.training


def _decoder_bpd_reference(mean: float, scale: float) -> float:
    """Mean over the 256 equally likely 8-bit levels of -log2 P(level), in 50-digit arithmetic."""
    mpmath.mp.dps = 50
    half, total = mpmath.mpf(1) / 255, mpmath.mpf(0)
    for k in range(256):
        x = mpmath.mpf(k) / mpmath.mpf("127.5") - 1
        lo = -mpmath.inf if k == 0 else (x - half - mean) / scale
        hi = mpmath.inf if k == 255 else (x + half - mean) / scale
        total += -mpmath.log(mpmath.ncdf(hi) - mpmath.ncdf(lo), 2)
    return float(total / 256)


@pytest.mark.parametrize("mean, scale", [(0.0, 1.0), (0.0, 0.3), (0.4, 2.0)])
def test_bits_per_dim_of_uniform_noise_under_the_decoder_equals_its_analytic_value(mean, scale):
    # Uniform 8-bit noise: every level has probability 1/256, so the expected bits/dim is the
    # average of -log2 P(level) over the 256 levels (exact, no sampling).
    levels = torch.arange(256, dtype=torch.float64) / 127.5 - 1
    logp = discretized_gaussian_log_likelihood(
        levels,
        torch.tensor(mean, dtype=torch.float64),
        torch.tensor(math.log(scale), dtype=torch.float64),
    )
    got = (-logp / math.log(2)).mean().item()
    assert got == pytest.approx(_decoder_bpd_reference(mean, scale), rel=1e-12)


def test_bits_per_dim_of_sampled_uniform_noise_is_within_monte_carlo_error():
    # The same expectation estimated from random pixels: within 5 standard errors.
    n = 20_000
    pixels = torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(5))
    x = pixels.double() / 127.5 - 1
    bits = -discretized_gaussian_log_likelihood(
        x,
        torch.tensor(0.0, dtype=torch.float64),
        torch.tensor(math.log(0.5), dtype=torch.float64),
    ) / math.log(2)
    expected = _decoder_bpd_reference(0.0, 0.5)
    assert abs(bits.mean().item() - expected) <= 5 * bits.std().item() / math.sqrt(n)


@pytest.fixture
def small_diffusion():
    return GaussianDiffusion(linear_beta_schedule(100, 1e-3, 0.2))


def test_elbo_summary_of_a_model_that_knows_the_answer_is_finite_and_below_a_bad_model(
    small_diffusion, oracle_eps
):
    d = small_diffusion
    x_star = torch.randint(0, 256, (1, 1, 4, 4), generator=torch.Generator().manual_seed(0))
    x_star = x_star.double() / 127.5 - 1
    x0 = x_star.expand(6, -1, -1, -1)
    good = elbo_summary(d, oracle_eps(d, x_star), x0, batch_size=4, progress=False)
    bad = elbo_summary(d, lambda x, t: torch.zeros_like(x), x0, batch_size=4, progress=False)
    assert math.isfinite(good["bits_per_dim"]) and good["bits_per_dim"] > 0
    assert good["bits_per_dim"] < bad["bits_per_dim"]
    assert len(good["per_t"]) == d.num_timesteps and good["n"] == 6
    parts = good["prior_L_T"] + good["decoder_L_0"] + good["kl_terms"]
    assert parts == pytest.approx(good["bits_per_dim"], rel=1e-12)


def test_elbo_summary_progress_counts_the_network_calls_within_a_batch(small_diffusion, capsys):
    """One batch costs T network calls (minutes on a CPU): the bar must move inside it."""
    x0 = torch.full((2, 1, 4, 4), -1.0)
    elbo_summary(small_diffusion, lambda x, t: torch.zeros_like(x), x0, progress=True)
    err = capsys.readouterr().err
    assert "ELBO terms" in err and "100/100" in err  # T = 100 terms of the one batch


def test_elbo_summary_refuses_data_off_the_8_bit_grid(small_diffusion):
    x0 = torch.full((2, 1, 4, 4), 0.123)
    with pytest.raises(ValueError, match="8-bit"):
        elbo_summary(small_diffusion, lambda x, t: torch.zeros_like(x), x0, progress=False)


def test_precision_recall_needs_more_samples_than_neighbours():
    with pytest.raises(ValueError, match="needs more than 3 samples"):
        precision_recall(torch.zeros(3, 2), torch.zeros(10, 2), k=3)
