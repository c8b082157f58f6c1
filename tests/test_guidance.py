"""Chapter 8: conditioning and guidance, checked where every density is exact (the labelled
mixture) and on small networks."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from ddpm_lib.accel.graphs import GraphedSampler
from ddpm_lib.diffusion import GaussianDiffusion
from ddpm_lib.guidance import (
    ClassifierFreeGuidance,
    ClassifierGuidance,
    noised_tilted_score,
    sample_tilted,
    tilted_log_density,
)
from ddpm_lib.mixture import labelled_gmm
from ddpm_lib.nets import UNET_PRESETS, ToyMLP, ToyMLPConfig, UNet
from ddpm_lib.oracles import MixtureClassifier, MixtureOracle
from ddpm_lib.samplers import ddim_sample, ddpm_sample
from ddpm_lib.schedules import linear_beta_schedule
from ddpm_lib.sde import DiscreteVPSDE, eps_model_score_fn, probability_flow_sample
from helpers import mc_tolerance

U64 = 2.0**-53
T = 100


@pytest.fixture(scope="module")
def mixture():
    return labelled_gmm(torch.float64)


@pytest.fixture(scope="module")
def diffusion():
    return GaussianDiffusion(linear_beta_schedule(T))


def points(n: int = 64, seed: int = 0) -> torch.Tensor:
    return 2.5 * torch.randn(
        n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )


def cond_mlp(num_classes: int = 4) -> ToyMLP:
    torch.manual_seed(0)
    return ToyMLP(ToyMLPConfig(hidden=32, num_classes=num_classes)).double()


# ----------------------------------------------------------------------------- exact identities


def test_class_posterior_of_the_labelled_mixture_is_bayes_rule(mixture):
    """log p(y | x) = log p(x | y) + log p(y) - log p(x), class by class."""
    x = points()
    by_bayes = torch.stack(
        [
            mixture.conditional(c).log_prob(x)
            + mixture.class_weights()[c].log()
            - mixture.log_prob(x)
            for c in range(mixture.num_classes)
        ],
        dim=1,
    )
    assert torch.allclose(mixture.class_log_posterior(x), by_bayes, atol=1e-12)
    assert torch.allclose(mixture.class_log_posterior(x).exp().sum(1), torch.ones(len(x)).double())


def test_noised_class_posterior_and_conditional_score_match_autograd(mixture):
    """eq-ch8-bayes-score at a noise level: ∇ log q_t(x | y) = ∇ log q_t(x) + ∇ log q_t(y | x),
    each side by autograd of the closed-form log-densities and the left also in closed form."""
    noised = mixture.noised(0.3)
    x = points().requires_grad_(True)
    for y in range(noised.num_classes):
        (grad_cond,) = torch.autograd.grad(noised.conditional(y).log_prob(x).sum(), x)
        (grad_marg,) = torch.autograd.grad(noised.log_prob(x).sum(), x)
        (grad_post,) = torch.autograd.grad(noised.class_log_posterior(x)[:, y].sum(), x)
        assert torch.allclose(grad_cond, grad_marg + grad_post, atol=1e-10)
        assert torch.allclose(noised.conditional(y).score(x.detach()), grad_cond, atol=1e-10)


def test_the_conditional_oracle_is_the_score_of_the_noised_class_mixture(mixture, diffusion):
    x, t = points(32), torch.randint(0, T, (32,), generator=torch.Generator().manual_seed(1))
    oracle = MixtureOracle(diffusion, mixture)
    eps = oracle(x, t, 2)
    for i in range(len(x)):
        ab = diffusion.alphas_cumprod[t[i]].item()
        want = -math.sqrt(1 - ab) * mixture.conditional(2).noised(ab).score(x[i : i + 1])
        assert torch.allclose(eps[i : i + 1], want, atol=1e-12)
    null = torch.full((32,), mixture.num_classes)
    assert torch.equal(oracle(x, t, null), oracle(x, t))


# ----------------------------------------------------------------------------- the guides


def test_guidance_weight_zero_is_the_conditional_model(mixture, diffusion):
    x, t = points(), torch.full((64,), 40)
    oracle = MixtureOracle(diffusion, mixture)
    assert torch.equal(ClassifierFreeGuidance(oracle, 1, 0.0)(x, t), oracle(x, t, 1))


@pytest.mark.parametrize("w", [0.5, 3.0])
def test_classifier_free_guidance_is_the_combination_formula(w):
    """eq-ch8-cfg on a network: (1 + w) ε(x, y) - w ε(x, ∅), per item, labels per item."""
    model = cond_mlp()
    x, t = points(8), torch.arange(8) * 10
    y = torch.tensor([0, 1, 2, 3, 3, 2, 1, 0])
    want = (1 + w) * model(x, t, y) - w * model(x, t, None)
    got = ClassifierFreeGuidance(model, y, w)(x, t)
    assert torch.allclose(got, want, atol=1e-12)


def test_the_guide_guides_only_the_mean_half_of_a_learned_variance_output():
    torch.manual_seed(0)
    net = UNet(replace(UNET_PRESETS["tiny"], out_channels=2, num_classes=3)).eval()
    for p in net.parameters():  # a network whose outputs depend on the label
        torch.nn.init.normal_(p, std=0.05)
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([5, 9])
    out = ClassifierFreeGuidance(net, 2, 2.0)(x, t)
    cond, uncond = net(x, t, 2), net(x, t, None)
    assert torch.allclose(out[:, :1], 3 * cond[:, :1] - 2 * uncond[:, :1], atol=1e-5)
    assert torch.allclose(out[:, 1:], cond[:, 1:], atol=1e-6)  # one batched call vs two


@pytest.mark.parametrize("w", [0.0, 1.0, 4.0])
def test_classifier_guidance_with_the_exact_classifier_equals_classifier_free(
    mixture, diffusion, w
):
    """eq-ch8-classifier-eps with s = 1 + w and the exact p_t(y | x) is eq-ch8-cfg with weight
    w (both are (1 + w) ∇ log q_t(x | y) - w ∇ log q_t(x) by eq-ch8-bayes-score)."""
    x, t = points(), torch.randint(0, T, (64,), generator=torch.Generator().manual_seed(2))
    oracle, classifier = MixtureOracle(diffusion, mixture), MixtureClassifier(diffusion, mixture)
    cg = ClassifierGuidance(diffusion, oracle, classifier, 3, 1 + w)(x, t)
    cfg = ClassifierFreeGuidance(oracle, 3, w)(x, t)
    assert torch.allclose(cg, cfg, atol=1e-10)


def test_every_sampler_takes_a_guide_unchanged(mixture, diffusion):
    """DDPM, DDIM and the ODE sampler run a guide as they run a network; at w = 0 each gives
    exactly what it gives with the conditional model itself."""
    oracle = MixtureOracle(diffusion, mixture)
    guide = ClassifierFreeGuidance(oracle, 0, 0.0)

    def cond(x, t):
        return oracle(x, t, 0)

    x_T = torch.randn(16, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    opts = dict(clip_denoised=False, progress=False)
    for run in (
        lambda m: ddpm_sample(
            diffusion, m, x_T, generator=torch.Generator().manual_seed(4), **opts
        ),
        lambda m: ddim_sample(diffusion, m, x_T, 10, **opts),
    ):
        assert torch.equal(run(guide), run(cond))
    # The ODE asks for fractional steps, which the oracle does not take: a network does.
    net = cond_mlp()
    sde = DiscreteVPSDE(diffusion.betas)
    ode = [
        probability_flow_sample(
            sde, eps_model_score_fn(sde, m, T), x_T, 20, t_end=1 / T, progress=False
        )
        for m in (ClassifierFreeGuidance(net, 0, 0.0), lambda x, t: net(x, t, 0))
    ]
    assert torch.equal(ode[0], ode[1])


def test_the_graphed_sampler_takes_a_guide_and_new_labels_in_place(diffusion):
    model = cond_mlp().float()
    guide = ClassifierFreeGuidance(model, torch.tensor([0, 1, 2, 3]), 2.0)
    sampler = GraphedSampler(diffusion, guide, (4, 2), device="cpu", clip_denoised=False)
    torch.manual_seed(0)
    a = sampler.sample(torch.zeros(4, 2))
    guide.set_labels(torch.tensor([3, 3, 3, 3]))
    torch.manual_seed(0)
    b = sampler.sample(torch.zeros(4, 2))
    assert a.shape == (4, 2) and torch.equal(a[3], b[3]) and not torch.equal(a[0], b[0])


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda m: ClassifierFreeGuidance(m, 4, 1.0), r"labels must lie in 0\.\.3"),
        (lambda m: ClassifierFreeGuidance(m, -1, 1.0), r"labels must lie in 0\.\.3"),
        (lambda m: ClassifierFreeGuidance(m, 1, -0.5), "guidance weight w must be a finite"),
        (lambda m: ClassifierFreeGuidance(m, 1.5, 1.0), "must be integers"),
        (lambda m: ClassifierFreeGuidance(ToyMLP(ToyMLPConfig()), 1, 1.0), "unconditional"),
    ],
)
def test_bad_guidance_requests_are_refused_with_the_reason(make, match):
    with pytest.raises(ValueError, match=match):
        make(cond_mlp())


def test_an_unconditional_network_refuses_labels_and_a_conditional_one_their_range():
    with pytest.raises(ValueError, match="unconditional"):
        ToyMLP(ToyMLPConfig())(torch.zeros(2, 2), 0, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"0\.\.3"):
        cond_mlp()(torch.zeros(2, 2, dtype=torch.float64), 0, torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="num_classes must be 0"):
        ToyMLPConfig(num_classes=-1).validate()


# ----------------------------------------------------------------------------- the tilted target


def test_tilted_density_is_the_class_density_reweighted_by_the_class_posterior(mixture):
    """eq-ch8-tilted: (1 + w) log p(x | y) - w log p(x) = log p(x | y) + w log p(y | x)
    - w log p(y)."""
    x, w, y = points(), 2.5, 1
    other = (
        mixture.conditional(y).log_prob(x)
        + w * mixture.class_log_posterior(x)[:, y]
        - w * mixture.class_weights()[y].log()
    )
    assert torch.allclose(tilted_log_density(mixture, y, w, x), other, atol=1e-10)


def test_rejection_samples_have_the_moments_of_the_tilted_density(mixture):
    """eq-ch8-tilted-rejection: the accepted draws' mean equals the tilted density's mean by
    quadrature on a fine grid (its error is far below the Monte Carlo tolerance)."""
    y, w, n = 0, 3.0, 40_000
    x, rate = sample_tilted(mixture, y, w, n, torch.Generator().manual_seed(5))
    axis = torch.arange(-4.0, 4.0, 0.01, dtype=torch.float64)
    grid = torch.cartesian_prod(axis, axis)
    p = torch.softmax(tilted_log_density(mixture, y, w, grid), dim=0)
    mean = p @ grid
    std = ((p @ grid**2) - mean**2).sqrt()
    assert 0 < rate < 1 and x.shape == (n, 2)
    for i in range(2):
        assert abs(x[:, i].mean() - mean[i]) < mc_tolerance(std[i].item(), n)


def test_at_w_zero_the_noised_tilted_score_is_the_noised_conditional_score(mixture):
    """The quadrature of noised_tilted_score against the closed form it must give at w = 0."""
    x = 0.8 * points(32)
    got = noised_tilted_score(mixture, 2, 0.0, 0.5, x)
    want = mixture.conditional(2).noised(0.5).score(x)
    assert torch.allclose(got, want, atol=1e-9)


def test_the_guided_score_is_not_the_score_of_the_noised_tilted_density(mixture):
    """eq-ch8-guided-score: at t > 0, (1 + w) ∇ log q_t(x | y) - w ∇ log q_t(x) differs from
    ∇ log of the tilted density noised forward, by far more than the quadrature's error
    (1e-9, previous test)."""
    x, w, ab = 0.8 * points(32), 3.0, 0.5
    noised = mixture.noised(ab)
    guided = (1 + w) * noised.conditional(2).score(x) - w * noised.score(x)
    tilted = noised_tilted_score(mixture, 2, w, ab, x)
    assert (guided - tilted).norm(dim=1).max() > 0.1
