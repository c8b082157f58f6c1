"""Flow matching (Chapter 9, library part): paths, velocities, the loss, the integrators,
checked where every density is exact (the 2-D Gaussian mixture, Gaussian data)."""

from __future__ import annotations

import math

import pytest
import torch

from ddpm_lib.diffusion import GaussianDiffusion
from ddpm_lib.flow import (
    FlowMatching,
    LinearPath,
    VPPath,
    flow_sample,
    gaussian_flow_map,
    mixture_velocity,
    model_log_likelihood,
)
from ddpm_lib.mixture import GaussianMixture2D, default_gmm
from ddpm_lib.oracles import MixtureOracle
from ddpm_lib.samplers import ddim_step
from ddpm_lib.schedules import linear_beta_schedule
from ddpm_lib.sde import VPSDE, DiscreteVPSDE, mixture_score_fn
from helpers import mc_tolerance

PATHS = {
    "linear": LinearPath(),
    "vp": VPPath(VPSDE()),
    "vp-discrete": VPPath(DiscreteVPSDE(linear_beta_schedule(1000))),
}


def draws(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    mixture = default_gmm(torch.float64)
    x0 = mixture.sample(n, gen)
    noise = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    t = 0.05 + 0.9 * torch.rand(n, generator=gen, dtype=torch.float64)
    return x0, noise, t


def noised_mixture(mixture: GaussianMixture2D, path, t: float) -> GaussianMixture2D:
    """The exact law of x_t = α_t x_0 + σ_t ε for mixture data."""
    tt = torch.tensor([t], dtype=torch.float64)
    a, s = path.alpha(tt).item(), path.sigma(tt).item()
    return GaussianMixture2D(
        a * mixture.means, math.sqrt(a**2 * mixture.std**2 + s**2), mixture.weights
    )


@pytest.mark.parametrize("name", ["linear", "vp"])
def test_the_conditional_velocity_is_the_time_derivative_of_the_path(name):
    """u_t = α'_t x_0 + σ'_t ε (eq-ch9-cond-velocity) is d/dt of x_t = α_t x_0 + σ_t ε
    (eq-ch9-path), on the linear path (eq-ch9-linear) and the VP path. Central differences with
    h = 1e-5: error O(h²) ≈ 1e-10 plus rounding ≈ 1e-16/h."""
    path, (x0, noise, t) = PATHS[name], draws(64, 0)
    h = 1e-5
    fd = (path.sample(x0, t + h, noise) - path.sample(x0, t - h, noise)) / (2 * h)
    assert torch.allclose(path.conditional_velocity(x0, t, noise), fd, atol=1e-8)


@pytest.mark.parametrize("name", list(PATHS))
def test_velocity_and_eps_convert_into_each_other(name):
    """eq-ch9-velocity-eps and its inverse, on every path."""
    path, (x_t, eps, t) = PATHS[name], draws(64, 1)
    v = path.velocity_from_eps(x_t, t, eps)
    assert torch.allclose(path.eps_from_velocity(x_t, t, v), eps, atol=1e-10)


@pytest.mark.parametrize("name", list(PATHS))
def test_the_exact_eps_gives_the_exact_marginal_velocity(name):
    """The ε-model's flow: E[ε | x_t] = -σ_t ∇ log p_t, converted to a velocity
    (eq-ch9-velocity-eps), is the marginal velocity E[u_t | x_t] (eq-ch9-marginal-velocity)
    computed from the posterior of each component."""
    path, mixture = PATHS[name], default_gmm(torch.float64)
    for t in (0.1, 0.5, 0.9):
        noised = noised_mixture(mixture, path, t)
        x = noised.sample(128, torch.Generator().manual_seed(2))
        tt = torch.full((128,), t, dtype=torch.float64)
        sigma = path.sigma(tt)[:, None]
        eps = -sigma * noised.score(x)
        want = mixture_velocity(mixture, path, x, tt)
        assert torch.allclose(path.velocity_from_eps(x, tt, eps), want, atol=1e-9)


@pytest.mark.parametrize("name", ["vp", "vp-discrete"])
def test_the_vp_paths_velocity_from_eps_is_the_probability_flow_drift(name):
    """eq-ch9-vp-velocity: on the VP path, (α'/α) x + (σ' - α'σ/α) ε̂ (eq-ch9-velocity-eps) is
    -½β x + ½β ε̂/σ_t, Chapter 6's drift f - ½g² ∇log q_t with the score -ε̂/σ_t; checked with
    the mixture's exact score."""
    path, mixture = PATHS[name], default_gmm(torch.float64)
    score = mixture_score_fn(path.sde, mixture)
    drift = path.sde.reverse(score, probability_flow=True)
    x = 2.5 * torch.randn(128, 2, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    for t in (0.05, 0.4, 0.9):
        tt = torch.full((128,), t, dtype=torch.float64)
        eps = -path.sigma(tt)[:, None] * score(x, tt)
        v = path.velocity_from_eps(x, tt, eps)
        assert torch.allclose(v, drift.sde(x, tt)[0], atol=1e-12)
        beta = path.sde.beta(tt)[:, None]
        assert torch.allclose(v, -0.5 * beta * x + 0.5 * beta * eps / path.sigma(tt)[:, None])


@pytest.mark.parametrize(("t", "t_prev"), [(999, 899), (499, 249), (99, -1)])
def test_one_ddim_step_is_one_euler_step_in_y_and_sigma_ve(t, t_prev):
    """In y = x/α, σ_VE = σ/α the VP flow reads dy/dσ_VE = ε̂ (eq-ch9-ve-ode); one Euler step,
    y + (σ_VE' - σ_VE) ε̂, is x' = α' x̂_0 + σ' ε̂ (eq-ch9-ddim-euler), the library's DDIM step
    (η = 0, no clipping), to rounding. Code indices t → t_prev; -1 is x_0."""
    diffusion = GaussianDiffusion(linear_beta_schedule(1000))
    oracle = MixtureOracle(diffusion, default_gmm(torch.float64))
    x = 2.5 * torch.randn(64, 2, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    ddim = ddim_step(diffusion, oracle, x, t, t_prev, eta=0.0, clip_denoised=False).sample
    ab = diffusion.alphas_cumprod[t].item()
    ab_prev = diffusion.alphas_cumprod[t_prev].item() if t_prev >= 0 else 1.0
    eps = oracle(x, torch.full((64,), t))
    y = x / math.sqrt(ab)
    s, s_prev = math.sqrt((1 - ab) / ab), math.sqrt((1 - ab_prev) / ab_prev)
    euler = math.sqrt(ab_prev) * (y + (s_prev - s) * eps)
    assert torch.allclose(ddim, euler, rtol=0, atol=1e-13)


def test_on_the_linear_path_an_euler_step_in_t_is_the_ddim_form_step():
    """α_t = 1 - t and σ_t = t are affine in t (eq-ch9-linear), so Euler's step in t with the
    velocity from ε̂ lands on (1 - t') x̂_0 + t' ε̂, the step eq-ch9-ddim-euler."""
    path, (x, eps, _) = LinearPath(), draws(64, 8)
    for t, t_next in ((0.95, 0.7), (0.6, 0.2), (0.3, 0.0)):
        tt = torch.full((64,), t, dtype=torch.float64)
        x0_hat = (x - t * eps) / (1 - t)
        euler = x + (t_next - t) * path.velocity_from_eps(x, tt, eps)
        assert torch.allclose(euler, (1 - t_next) * x0_hat + t_next * eps, atol=1e-12)


@pytest.mark.parametrize("name", ["linear", "vp"])
def test_the_marginal_velocity_carries_the_density_by_the_continuity_equation(name):
    """∂_t log p_t + ∇·v + v·∇log p_t = 0 at every point (eq-ch9-continuity divided by p_t, for
    the marginal velocity eq-ch9-marginal-velocity), with the exact mixture density p_t:
    ∂_t by central differences (h = 1e-5), ∇·v by autograd."""
    path, mixture = PATHS[name], default_gmm(torch.float64)
    for t in (0.2, 0.6):
        x = noised_mixture(mixture, path, t).sample(64, torch.Generator().manual_seed(3))
        h = 1e-5
        dlogp = (
            noised_mixture(mixture, path, t + h).log_prob(x)
            - noised_mixture(mixture, path, t - h).log_prob(x)
        ) / (2 * h)
        xg = x.clone().requires_grad_(True)
        v = mixture_velocity(mixture, path, xg, torch.full((64,), t, dtype=torch.float64))
        div = sum(
            torch.autograd.grad(v[:, i].sum(), xg, retain_graph=True)[0][:, i] for i in range(2)
        )
        score = noised_mixture(mixture, path, t).score(x)
        residual = dlogp + div.detach() + (v.detach() * score).sum(1)
        assert residual.abs().max() < 1e-6


def test_the_flow_matching_loss_is_smallest_at_the_marginal_velocity():
    """The conditional loss (eq-ch9-fm-loss) is the marginal one plus a constant
    (eq-ch9-loss-gap): on the same draws, shifting the exact velocity by a constant c raises the
    loss by ‖c‖²/d on average (the cross term has mean 0 because v = E[u | x_t]); the mean gap is
    within 5 standard errors of ‖c‖²/d."""
    path, mixture = LinearPath(), default_gmm(torch.float64)
    x0, noise, t = draws(20_000, 4)
    c = torch.tensor([0.3, -0.2], dtype=torch.float64)

    def exact(x, tt):
        return mixture_velocity(mixture, path, x, tt)

    def shifted(x, tt):
        return exact(x, tt) + c

    base = path.training_loss(exact, x0, t=t, noise=noise)
    moved = path.training_loss(shifted, x0, t=t, noise=noise)
    gap = (moved - base).double()
    want = (c**2).sum().item() / 2
    assert abs(gap.mean().item() - want) < mc_tolerance(gap.std().item(), len(gap))
    assert gap.mean() > 0


@pytest.mark.parametrize(("method", "order"), [("euler", 1), ("heun", 2)])
@pytest.mark.parametrize("name", ["linear", "vp"])
def test_euler_and_heun_converge_at_their_orders_to_the_exact_flow_map(name, method, order):
    """Gaussian data N(m, s² I): the exact flow of dx/dt = v_t(x) (eq-ch9-ode) takes x_1 to
    α_0 m + (r_0/r_1)(x_1 - α_1 m) (eq-ch9-gaussian-flow-map). Doubling the steps from 80 to 160
    divides the error by about 2^order."""
    path = PATHS[name]
    data = GaussianMixture2D(torch.tensor([[0.5, 0.5]], dtype=torch.float64), 0.7)
    x1 = torch.randn(100, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    exact = gaussian_flow_map(0.5, 0.7, path, x1, 0.0)

    def velocity(x, t):
        return mixture_velocity(data, path, x, t)

    errors = [
        (flow_sample(velocity, x1, n, method=method) - exact).abs().max().item() for n in (80, 160)
    ]
    assert abs(math.log2(errors[0] / errors[1]) - order) < 0.15


def test_a_flow_models_ode_likelihood_converges_at_second_order_to_the_data_density():
    """The continuity equation: log p_0(x) = log N(x(1); 0, I) + ∫_0^1 ∇·v dt, to Heun's order."""
    # Gaussian data on the linear path: x_1 = ε exactly, so the prior N(0, I) is exact and
    # the exact velocity leaves only Heun's O(h²) error: doubling the steps cuts it by about 4.
    # The flow's grid starts at t = 0, so the exact value is the data density itself.
    data = GaussianMixture2D(torch.tensor([[0.7, -0.3]], dtype=torch.float64), 0.4)
    x = torch.tensor([[0.1, 1.2], [-0.5, 0.9], [1.5, 0.0]], dtype=torch.float64)

    def model(y, s):  # a "network" that reads t stretched to 0..1000, like the book's
        return mixture_velocity(data, LinearPath(), y, s / 1000)

    errors = []
    for steps in (25, 50, 100):
        out = model_log_likelihood(FlowMatching(time_scale=1000), model, x, steps, progress=False)
        errors.append((out.log_likelihood - data.log_prob(x)).abs().max().item())
    orders = [math.log2(errors[i] / errors[i + 1]) for i in range(2)]
    assert all(1.7 < p < 2.3 for p in orders), (errors, orders)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: flow_sample(lambda x, t: x, torch.zeros(2, 2), 0), "steps must be"),
        (lambda: flow_sample(lambda x, t: x, torch.zeros(2, 2), 4, method="rk4"), "unknown ODE"),
        (lambda: LinearPath().sample(torch.zeros(2, 2), 1.5, torch.zeros(2, 2)), r"\[0, 1\]"),
    ],
)
def test_bad_flow_inputs_are_refused_with_the_reason(call, match):
    with pytest.raises(ValueError, match=match):
        call()
