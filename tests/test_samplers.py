"""Specification of ddpm_lib.samplers: DDPM (Algorithm 2) and DDIM (Chapters 4 and 7)."""

import math

import pytest
import torch

from ddpm_lib.diffusion import GaussianDiffusion
from ddpm_lib.oracles import GaussianOracle, PointOracle
from ddpm_lib.samplers import (
    Trajectory,
    ddim_sample,
    ddim_step,
    ddim_timesteps,
    ddpm_sample,
    slerp,
)
from ddpm_lib.schedules import get_beta_schedule
from helpers import mc_tolerance

T = 1000


@pytest.fixture
def diffusion():
    return GaussianDiffusion(get_beta_schedule("linear", T))


def dummy_model(x, t):
    """A fixed smooth function of (x, t) in the spirit of diffusers' scheduler tests."""
    return torch.sin(x) * (t.reshape(-1, *([1] * (x.ndim - 1))) + 1) / T


def test_oracle_eps_model_makes_ddpm_sampling_return_the_data_point(diffusion, oracle_eps):
    """alg-ch4-sampling: with an exact ε-model for one point x*, Algorithm 2 ends on x*."""
    torch.manual_seed(0)
    x_star = torch.rand(1, 1, 4, 4) * 2 - 1
    x_T = torch.randn(8, 1, 4, 4)
    x = ddpm_sample(diffusion, oracle_eps(diffusion, x_star), x_T, progress=False)
    # The last step's mean is exactly x̂_0 = x* (coef1 = 1, coef2 = 0 at book step 1);
    # what remains is float32 rounding.
    torch.testing.assert_close(x, x_star.expand(8, -1, -1, -1), atol=1e-5, rtol=0)


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_oracle_sampling_works_with_either_variance(diffusion, oracle_eps, variance):
    x_star = torch.full((1, 3), 0.25)
    model = oracle_eps(diffusion, x_star)
    x = ddpm_sample(diffusion, model, torch.randn(4, 3), variance=variance, progress=False)
    torch.testing.assert_close(x, x_star.expand(4, 3), atol=1e-5, rtol=0)


@pytest.mark.parametrize("clip", [False, True])
def test_ddim_eta_one_over_all_steps_has_ddpm_step_mean_and_variance(diffusion, clip):
    """eq-ch7-sigma-eta, eq-ch7-family, eq-ch7-ddim-step: for adjacent steps σ_t(1)² = β̃_t and
    the step's mean is μ̃_t(x̂_0, x_t), DDPM's step (Proposition "η = 1 is DDPM's posterior")."""
    torch.manual_seed(1)
    x_t = 1.5 * torch.randn(6, 5, dtype=torch.float64)
    for t in (1, 2, 10, 300, 700, 999):
        ddim = ddim_step(diffusion, dummy_model, x_t, t, t - 1, eta=1.0, clip_denoised=clip)
        ddpm = diffusion.p_mean_variance(
            dummy_model, x_t, t, clip_denoised=clip, variance="fixed_small"
        )
        torch.testing.assert_close(ddim.mean, ddpm.mean, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(ddim.variance, ddpm.variance, rtol=1e-9, atol=1e-15)


def test_ddim_eta_zero_is_deterministic_given_x_T(diffusion):
    x_T = torch.randn(3, 2, generator=torch.Generator().manual_seed(2))
    a = ddim_sample(diffusion, dummy_model, x_T, 20, progress=False)
    b = ddim_sample(diffusion, dummy_model, x_T, 20, progress=False)
    assert torch.equal(a, b)


def test_oracle_eps_model_makes_ddim_return_the_data_point_in_few_steps(diffusion, oracle_eps):
    """eq-ch7-ddim-euler: for one data point the path is straight in (y, s), so Euler's method
    (DDIM, η = 0) lands on x* whatever the number of steps (Chapter 7, Exercise 3)."""
    x_star = torch.rand(1, 1, 3, 3) * 2 - 1
    model, x_T = oracle_eps(diffusion, x_star), torch.randn(5, 1, 3, 3)
    x = ddim_sample(diffusion, model, x_T, 10, progress=False)
    torch.testing.assert_close(x, x_star.expand(5, -1, -1, -1), atol=1e-5, rtol=0)


def test_ddim_timesteps_are_descending_distinct_and_end_at_index_zero():
    for steps in (1, 10, 50, 333, T):
        seq = ddim_timesteps(T, steps)
        assert len(seq) == steps and seq == sorted(set(seq), reverse=True)
        assert seq[-1] == 0 or steps == 1
    assert ddim_timesteps(T, T) == list(range(T - 1, -1, -1))
    assert ddim_timesteps(T, 10, "quad")[-1] == 0


def test_bad_ddim_arguments_are_rejected(diffusion):
    with pytest.raises(ValueError, match=r"steps must lie in \[1, 1000\]"):
        ddim_timesteps(T, 0)
    with pytest.raises(ValueError, match="unknown timestep spacing"):
        ddim_timesteps(T, 10, "log")
    with pytest.raises(ValueError, match="eta must be"):
        ddim_step(diffusion, dummy_model, torch.zeros(1, 2), 5, 4, eta=-1.0)


def test_trajectory_records_x_t_and_pred_x0_at_the_requested_stride(diffusion):
    traj = Trajectory(every=250)
    x_T = torch.randn(2, 1, 2, 2)
    x = ddpm_sample(diffusion, dummy_model, x_T, callback=traj, progress=False)
    assert traj.steps == [1000, 751, 501, 251, 1]
    assert traj.x_t.shape == (5, 2, 1, 2, 2) and traj.pred_x0.shape == (5, 2, 1, 2, 2)
    torch.testing.assert_close(traj.x_t[0], x_T)
    assert x.shape == (2, 1, 2, 2)


def test_callback_sees_every_step_in_order_with_the_state_it_produced(diffusion):
    seen = []
    x = ddim_sample(
        diffusion, dummy_model, torch.randn(2, 3), 7, callback=seen.append, progress=False
    )
    assert [s.i for s in seen] == ddim_timesteps(T, 7)
    for before, after in zip(seen, seen[1:], strict=False):
        assert after.x_t is before.sample
    assert seen[-1].sample is x


def test_sampling_is_reproducible_with_a_generator(diffusion):
    x_T = torch.randn(2, 3)
    a = ddpm_sample(
        diffusion, dummy_model, x_T, generator=torch.Generator().manual_seed(7), progress=False
    )
    b = ddpm_sample(
        diffusion, dummy_model, x_T, generator=torch.Generator().manual_seed(7), progress=False
    )
    assert torch.equal(a, b)


@pytest.mark.parametrize("sampler", [ddpm_sample, ddim_sample])
def test_samplers_take_their_options_by_keyword_only(diffusion, sampler):
    with pytest.raises(TypeError):
        sampler(diffusion, dummy_model, torch.randn(2, 3), 10, 0.0)


def test_ddim_accepts_its_steps_as_explicit_descending_indices(diffusion):
    x_T = torch.randn(2, 3)
    by_count = ddim_sample(diffusion, dummy_model, x_T, 10, progress=False)
    by_list = ddim_sample(diffusion, dummy_model, x_T, ddim_timesteps(T, 10), progress=False)
    assert torch.equal(by_count, by_list)
    with pytest.raises(ValueError, match="descending code indices"):
        ddim_sample(diffusion, dummy_model, x_T, [5, 9, 0], progress=False)


class _HostReads(torch.overrides.TorchFunctionMode):
    """Records every call that reads a tensor's value back to Python."""

    READS = {"item", "__int__", "__float__", "__bool__", "tolist", "__index__"}

    def __init__(self):
        super().__init__()
        self.reads = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in self.READS:
            self.reads.append(func.__name__)
        return func(*args, **(kwargs or {}))


def test_a_sampling_step_reads_no_value_back_from_its_tensors(diffusion):
    # On a GPU each such read is a host sync; validation happens where t is handed in, once.
    with _HostReads() as mode:
        ddpm_sample(diffusion, dummy_model, torch.randn(2, 3), progress=False)
    assert mode.reads == []


def test_a_step_index_handed_in_by_a_caller_is_checked_once(diffusion):
    with _HostReads() as mode:
        t = diffusion.check_t(torch.tensor([3, 4]), torch.zeros(2, 3))
    assert mode.reads  # the range check read t
    with _HostReads() as mode:
        diffusion.p_sample(dummy_model, torch.zeros(2, 3), t)
    assert mode.reads == []  # p_sample and everything inside it trusted the checked t


# ------------------------------------------------------------ Algorithm 2 (Chapter 4)

F64_EPS = torch.finfo(torch.float64).eps


def _schedule(diffusion):
    """β_t, α_t, ᾱ_t and ᾱ_{t-1} (ᾱ_0 = 1) from the betas alone, [T] float64, index i = step i+1."""
    betas = diffusion.betas
    alphas = 1 - betas
    ab = torch.cumprod(alphas, 0)
    return betas, alphas, ab, torch.cat([torch.ones(1, dtype=ab.dtype), ab[:-1]])


def _algorithm_2(diffusion, model, x_T, generator, variance):
    """Algorithm 2 written line by line from the schedule; draws z in the sampler's order.

    Returns x_0, and x_1 and the last step's z and σ_1 (to build the off-by-one loops).
    """
    betas, alphas, ab, ab_prev = _schedule(diffusion)
    x = x_T.clone()  # line 1: x_T is given
    for t in range(diffusion.num_timesteps, 0, -1):  # line 2: t = T, ..., 1
        i = t - 1  # code index
        z = torch.randn(x.shape, dtype=x.dtype, generator=generator)  # line 3 (z unused at t = 1)
        eps = model(x, torch.full((x.shape[0],), i))
        var = betas[i] * (1 - ab_prev[i]) / (1 - ab[i]) if variance == "fixed_small" else betas[i]
        x_prev = x
        x = (x - betas[i] / (1 - ab[i]).sqrt() * eps) / alphas[i].sqrt()  # line 4
        if t > 1:
            x = x + var.sqrt() * z
    return x, x_prev, z, var.sqrt()  # line 6: x_0


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_ddpm_sample_is_algorithm_2_line_by_line(diffusion, variance):
    """alg-ch4-sampling: ddpm_sample (no clipping) is Algorithm 2 with σ_t² = β̃_t or β_t.

    The same z's (same generator), float64. The library forms the mean as μ̃_t(x̂_0, x_t) and the
    algorithm as (x_t - β_t/√(1-ᾱ_t) ε)/√α_t: equal up to rounding, a few ulps of terms of size
    ≤ max|x| per step, over T steps. Loops that stop at x_1 or add noise at t = 1 are rejected.
    """
    model = GaussianOracle(diffusion, s2=0.25, mean=0.1)  # keeps the chain O(1) in size
    x_T = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    got = ddpm_sample(
        diffusion, model, x_T, clip_denoised=False, variance=variance,
        generator=torch.Generator().manual_seed(1), progress=False,
    )  # fmt: skip
    x0, x1, z1, sigma1 = _algorithm_2(
        diffusion, model, x_T, torch.Generator().manual_seed(1), variance
    )
    tol = T * 16 * F64_EPS * max(4.0, x_T.abs().max().item())
    torch.testing.assert_close(got, x0, rtol=0, atol=tol)
    assert (got - x1).abs().max() > 1e3 * tol  # a loop that stops one step early returns x_1
    if variance == "fixed_large":  # β̃_1 = 0, so only σ_1² = β_1 makes noise at t = 1 visible
        assert (got - (x0 + sigma1 * z1)).abs().max() > 1e3 * tol


# ------------------------------------------------------------ DDIM (Chapter 7)

JUMPS = [(999, 949), (999, 0), (500, 100), (300, 299), (10, 9), (1, 0), (0, -1), (999, -1)]


def _alpha_bars(diffusion, t, t_prev):
    ab = _schedule(diffusion)[2]
    return ab[t].item(), (ab[t_prev].item() if t_prev >= 0 else 1.0)


def _sigma2(eta, ab, ab_prev):
    """σ_t(η)² of eq-ch7-sigma-eta, written from ᾱ_t and ᾱ_{t-1} alone."""
    return eta**2 * (1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_variance_is_sigma_eta_for_every_jump(diffusion, eta):
    """eq-ch7-sigma-eta: σ² = η² (1-ᾱ_prev)/(1-ᾱ_t) (1 - ᾱ_t/ᾱ_prev), for adjacent steps and
    jumps alike, within the family's bound σ² ≤ 1-ᾱ_prev for η ≤ 1 (Exercise 2); the last step
    (to x_0, ᾱ_0 = 1) has σ = 0 for every η. The same with β_t in place of 1 - ᾱ_t/ᾱ_prev
    (right only for adjacent steps) is rejected on a jump."""
    betas = _schedule(diffusion)[0]
    x_t = torch.randn(2, 3, dtype=torch.float64)
    for t, t_prev in JUMPS:
        ab, ab_prev = _alpha_bars(diffusion, t, t_prev)
        var = ddim_step(diffusion, dummy_model, x_t, t, t_prev, eta=eta).variance
        want = torch.full_like(x_t, _sigma2(eta, ab, ab_prev))
        torch.testing.assert_close(var, want, rtol=1e-13, atol=0)
        assert (var <= 1 - ab_prev).all()
        if t_prev == -1:
            assert (var == 0).all()
    if eta > 0:
        t, t_prev = 500, 100
        ab, ab_prev = _alpha_bars(diffusion, t, t_prev)
        wrong = eta**2 * (1 - ab_prev) / (1 - ab) * betas[t].item()
        var = ddim_step(diffusion, dummy_model, x_t, t, t_prev, eta=eta).variance
        assert abs(var[0, 0].item() - wrong) > 0.5 * var[0, 0].item()


def test_ddim_eta_one_on_a_jump_is_the_ddpm_step_of_the_coarse_chain(diffusion):
    """eq-ch7-sigma-eta, eq-ch7-family (Chapter 7, Exercise 1): on a sub-sequence τ, η = 1 is
    DDPM's step (mean μ̃, variance β̃) of the chain with β'_i = 1 - ᾱ_{τ_i}/ᾱ_{τ_{i-1}}.

    The coarse chain's ᾱ are products of 20 factors: equal to the fine ones up to ~20 ulps.
    """
    seq = ddim_timesteps(T, 20)[::-1]  # ascending code indices τ_1 - 1 = 0, ..., τ_S - 1 = 999
    ab = _schedule(diffusion)[2][seq]
    coarse = GaussianDiffusion(1 - ab / torch.cat([torch.ones(1, dtype=ab.dtype), ab[:-1]]))

    def coarse_model(x, i):  # coarse index i is fine index seq[i]
        return dummy_model(x, torch.tensor(seq)[i])

    x_t = 1.5 * torch.randn(6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    for i in range(1, len(seq)):
        ddim = ddim_step(diffusion, dummy_model, x_t, seq[i], seq[i - 1], eta=1.0)
        ddpm = coarse.p_mean_variance(coarse_model, x_t, i, variance="fixed_small")
        torch.testing.assert_close(ddim.mean, ddpm.mean, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ddim.variance, ddpm.variance, rtol=1e-12, atol=0)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_step_is_predicted_x0_plus_direction_to_x_t_plus_fresh_noise(diffusion, eta):
    """eq-ch7-ddim-step: x_prev = √ᾱ_prev x̂_0 + √(1-ᾱ_prev-σ²) ε_θ + σ z, with
    x̂_0 = (x_t - √(1-ᾱ_t) ε_θ)/√ᾱ_t (no clipping), for adjacent steps, jumps and the last step.

    Float64 rounding: x̂_0 carries the error of x_t/√ᾱ_t (≤ 160 |x_t| ulps at t = T).
    """
    gen = torch.Generator().manual_seed(5)
    x_t = torch.randn(4, 3, dtype=torch.float64, generator=gen)
    z = torch.randn(4, 3, dtype=torch.float64, generator=gen)
    for t, t_prev in JUMPS:
        ab, ab_prev = _alpha_bars(diffusion, t, t_prev)
        var = _sigma2(eta, ab, ab_prev)
        eps = dummy_model(x_t, torch.full((4,), t))
        x0 = (x_t - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
        want = math.sqrt(ab_prev) * x0 + math.sqrt(1 - ab_prev - var) * eps + math.sqrt(var) * z
        out = ddim_step(
            diffusion, dummy_model, x_t, t, t_prev, eta=eta, noise=z, clip_denoised=False
        )
        torch.testing.assert_close(out.sample, want, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(out.mean, want - math.sqrt(var) * z, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(out.pred_x0, x0, rtol=1e-12, atol=1e-12)


def test_clipped_ddim_step_uses_the_eps_of_the_clipped_x0(diffusion):
    """eq-ch7-ddim-step with clipping (Chapter 7, Section 3): x̂_0 is clipped to [-1, 1] and
    ε recomputed from it, ε = (x_t - √ᾱ_t x̂_0)/√(1-ᾱ_t), so the two terms stay consistent."""

    def model(x, t):
        return 0.3 * torch.sin(x)

    u = torch.linspace(-2.5, 2.5, 12, dtype=torch.float64).reshape(4, 3)
    for t, t_prev in [(999, 949), (500, 100), (10, 9)]:
        ab, ab_prev = _alpha_bars(diffusion, t, t_prev)
        x_t = math.sqrt(ab) * u  # x̂_0 ≈ 0.7 u: clipped at both ends, not in the middle
        eps = model(x_t, t)
        x0 = ((x_t - math.sqrt(1 - ab) * eps) / math.sqrt(ab)).clamp(-1, 1)
        assert (x0.abs() == 1).any() and (x0.abs() < 1).any()
        eps = (x_t - math.sqrt(ab) * x0) / math.sqrt(1 - ab)
        want = math.sqrt(ab_prev) * x0 + math.sqrt(1 - ab_prev) * eps
        out = ddim_step(diffusion, model, x_t, t, t_prev, eta=0.0)
        torch.testing.assert_close(out.sample, want, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(out.pred_x0, x0, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_with_the_true_x0_a_ddim_step_has_the_family_mean_and_variance(diffusion, eta):
    """eq-ch7-family: given the true x_0 (an exact ε-model for the single point x*), the step
    is q_σ(x_prev | x_t, x*) = N(√ᾱ_prev x* + √(1-ᾱ_prev-σ²) (x_t - √ᾱ_t x*)/√(1-ᾱ_t), σ² I)."""
    x_star = torch.tensor([[0.4, -0.9, 0.1]], dtype=torch.float64)
    model = PointOracle(diffusion, x_star)
    x_t = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    for t, t_prev in JUMPS:
        ab, ab_prev = _alpha_bars(diffusion, t, t_prev)
        var = _sigma2(eta, ab, ab_prev)
        noise = (x_t - math.sqrt(ab) * x_star) / math.sqrt(1 - ab)
        mean = math.sqrt(ab_prev) * x_star + math.sqrt(1 - ab_prev - var) * noise
        out = ddim_step(diffusion, model, x_t, t, t_prev, eta=eta, clip_denoised=False)
        torch.testing.assert_close(out.mean, mean, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(out.variance, torch.full_like(x_t, var), rtol=1e-13, atol=0)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_the_family_has_ddpm_marginals_at_every_visited_step(diffusion, eta, one_thread):
    """eq-ch7-joint (Proposition "every member has DDPM's marginals"), by Monte Carlo.

    From x_T ~ N(√ᾱ_T x*, 1-ᾱ_T), steps of q_σ (the library's ddim_step with the exact x_0)
    down a 20-step sub-sequence: at every visited step the sample mean and variance match
    √ᾱ_t x* and 1-ᾱ_t within 5 standard errors. The variant without -σ² under the root (a
    plausible slip) overshoots the variance and is rejected whenever η > 0.
    """
    n, x_star = 100_000, 0.7
    model = PointOracle(diffusion, torch.tensor([[x_star]], dtype=torch.float64))
    ab = _schedule(diffusion)[2]
    gen = torch.Generator().manual_seed(8)
    x = ab[-1].sqrt() * x_star + (1 - ab[-1]).sqrt() * torch.randn(n, 1, generator=gen).double()
    broken, worst_broken = x.clone(), 0.0
    seq = ddim_timesteps(T, 20)
    for t, t_prev in zip(seq, seq[1:], strict=False):
        z = torch.randn(n, 1, generator=gen, dtype=torch.float64)
        x = ddim_step(diffusion, model, x, t, t_prev, eta=eta, noise=z, clip_denoised=False).sample
        a, a_prev = ab[t].item(), ab[t_prev].item()
        var = _sigma2(eta, a, a_prev)
        eps = (broken - math.sqrt(a) * x_star) / math.sqrt(1 - a)
        broken = math.sqrt(a_prev) * x_star + math.sqrt(1 - a_prev) * eps + math.sqrt(var) * z
        mean, v = math.sqrt(a_prev) * x_star, 1 - a_prev
        assert abs(x.mean().item() - mean) < mc_tolerance(math.sqrt(v), n)
        assert abs(x.var().item() - v) < mc_tolerance(math.sqrt(2) * v, n - 1)
        worst_broken = max(worst_broken, abs(broken.var().item() - v) / (math.sqrt(2) * v))
    if eta > 0:
        assert worst_broken > mc_tolerance(1.0, n - 1)


def test_eta_zero_ddim_step_is_an_euler_step_in_ve_coordinates(diffusion):
    """eq-ch7-ddim-euler: with η = 0, y = x/√ᾱ and s = √(1/ᾱ - 1) move as
    y_prev = x̂_0 + s_prev ε_θ = y_t + (s_prev - s_t) ε_θ, for any jump (s_0 = 0 at x_0)."""
    x_t = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    for t, t_prev in JUMPS:
        ab, ab_prev = _alpha_bars(diffusion, t, t_prev)
        s, s_prev = math.sqrt(1 / ab - 1), math.sqrt(1 / ab_prev - 1)
        y_t, eps = x_t / math.sqrt(ab), dummy_model(x_t, torch.full((4,), t))
        out = ddim_step(diffusion, dummy_model, x_t, t, t_prev, eta=0.0, clip_denoised=False)
        y_prev = out.sample / math.sqrt(ab_prev)
        scale = y_t.abs().max().item()  # rounding is relative to the largest term, y_t
        torch.testing.assert_close(y_prev, y_t + (s_prev - s) * eps, rtol=0, atol=1e-13 * scale)
        torch.testing.assert_close(y_prev, out.pred_x0 + s_prev * eps, rtol=0, atol=1e-13 * scale)


def test_eta_zero_ddim_converges_at_first_order_to_the_probability_flow_map(diffusion):
    """eq-ch7-ddim-euler: η = 0 is Euler's method for dy/ds = E[ε | y], so on Gaussian data
    N(μ, s²) (exact ε-model) its x_0 converges at order 1 to the ODE's map
    y(0) = μ + (y_T - μ) √(s²/(s² + s_T²)), y_T = x_T/√ᾱ_T, s_T² = 1/ᾱ_T - 1 (eq-ch6-flow-map
    in VE coordinates): doubling the steps halves the error."""
    mu, s2 = 0.3, 0.25
    model = GaussianOracle(diffusion, s2, mean=mu)
    x_T = torch.linspace(-2.5, 2.5, 11, dtype=torch.float64).reshape(-1, 1)
    ab_T = _schedule(diffusion)[2][-1].item()
    y_T, s_T2 = x_T / math.sqrt(ab_T), 1 / ab_T - 1
    exact = mu + (y_T - mu) * math.sqrt(s2 / (s2 + s_T2))
    errors = []
    for steps in (20, 40, 80):
        x0 = ddim_sample(diffusion, model, x_T, steps, clip_denoised=False, progress=False)
        errors.append((x0 - exact).abs().max().item())
    for coarse, fine in zip(errors, errors[1:], strict=False):
        assert math.log2(coarse / fine) == pytest.approx(1.0, abs=0.1)


# ------------------------------------------------------------ slerp (Chapter 7)


def _unit_cos(u, v):
    u, v = u.flatten(1), v.flatten(1)
    return (u * v).sum(1) / (u.norm(dim=1) * v.norm(dim=1))


def test_slerp_is_the_great_circle_formula_per_batch_item():
    """eq-ch7-slerp: sin((1-λ)θ)/sin θ x_a + sin(λθ)/sin θ x_b, θ the angle between the
    flattened items, computed per batch item (a batch equals its items one by one)."""
    gen = torch.Generator().manual_seed(10)
    x_a = torch.randn(3, 2, 4, 4, dtype=torch.float64, generator=gen)
    x_b = torch.randn(3, 2, 4, 4, dtype=torch.float64, generator=gen)
    for lam in (0.0, 0.25, 0.5, 0.9, 1.0):
        got = slerp(x_a, x_b, lam)
        for k in range(3):
            a, b = x_a[k], x_b[k]
            theta = math.acos((a * b).sum().item() / (a.norm() * b.norm()).item())
            want = (math.sin((1 - lam) * theta) * a + math.sin(lam * theta) * b) / math.sin(theta)
            torch.testing.assert_close(got[k], want, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(slerp(x_a[k : k + 1], x_b[k : k + 1], lam)[0], got[k])


def test_slerp_starts_at_x_a_and_ends_at_x_b():
    """eq-ch7-slerp: λ = 0 gives x_a and λ = 1 gives x_b (up to float64 rounding)."""
    gen = torch.Generator().manual_seed(11)
    x_a, x_b = (torch.randn(2, 5, dtype=torch.float64, generator=gen) for _ in range(2))
    torch.testing.assert_close(slerp(x_a, x_b, 0.0), x_a, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(slerp(x_a, x_b, 1.0), x_b, rtol=1e-13, atol=1e-13)


def test_slerp_of_equal_norm_codes_stays_on_their_sphere_at_angle_lambda_theta():
    """eq-ch7-slerp: for ‖x_a‖ = ‖x_b‖ = r, every point has norm r and makes the angle λθ with
    x_a and (1-λ)θ with x_b. The straight line (1-λ) x_a + λ x_b leaves the sphere."""
    gen = torch.Generator().manual_seed(12)
    x_a = torch.randn(4, 784, dtype=torch.float64, generator=gen)
    x_b = torch.randn(4, 784, dtype=torch.float64, generator=gen)
    x_b = x_b * (x_a.norm(dim=1) / x_b.norm(dim=1))[:, None]  # equal norms, per item
    r, theta = x_a.norm(dim=1), torch.acos(_unit_cos(x_a, x_b))
    for lam in (0.1, 0.5, 0.8):
        x = slerp(x_a, x_b, lam)
        torch.testing.assert_close(x.norm(dim=1), r, rtol=1e-12, atol=0)
        torch.testing.assert_close(_unit_cos(x, x_a), torch.cos(lam * theta), rtol=0, atol=1e-12)
        torch.testing.assert_close(
            _unit_cos(x, x_b), torch.cos((1 - lam) * theta), rtol=0, atol=1e-12
        )
        line = (1 - lam) * x_a + lam * x_b
        assert ((line.norm(dim=1) - r).abs() > 0.05 * r).all()


def test_slerp_of_gaussian_codes_at_an_acute_angle_keeps_the_norm_between_theirs():
    """eq-ch7-slerp (the docstring's claim for Gaussian x_T): with cos θ ≥ 0 the squared norm
    of a slerp point is a convex combination of ‖x_a‖², ‖x_b‖² and ‖x_a‖‖x_b‖ (the weights
    c_a², c_b², 2 c_a c_b cos θ of a unit-vector slerp sum to 1), so it lies between the two
    norms, ≈ √D; the straight line's midpoint has norm ≈ √(D/2) (0.71 √D), below both."""
    gen = torch.Generator().manual_seed(13)
    d = 784
    x_a = torch.randn(64, d, dtype=torch.float64, generator=gen)
    x_b = torch.randn(64, d, dtype=torch.float64, generator=gen)
    x_b = x_b * torch.sign(_unit_cos(x_a, x_b))[:, None]  # flip to an acute angle; still N(0, I)
    lo = torch.minimum(x_a.norm(dim=1), x_b.norm(dim=1)) * (1 - 1e-12)
    hi = torch.maximum(x_a.norm(dim=1), x_b.norm(dim=1)) * (1 + 1e-12)
    for lam in (0.1, 0.3, 0.5, 0.7, 0.9):
        norm = slerp(x_a, x_b, lam).norm(dim=1)
        assert ((lo <= norm) & (norm <= hi)).all()
    assert (((x_a + x_b) / 2).norm(dim=1) < lo).all()


def test_slerp_rejects_lambda_outside_zero_one():
    x = torch.randn(1, 3)
    for lam in (-0.1, 1.5):
        with pytest.raises(ValueError, match=r"lam must lie in \[0, 1\]"):
            slerp(x, x, lam)


def test_slerp_of_codes_that_point_the_same_way_is_the_straight_line():
    a = torch.ones(2, 3)
    torch.testing.assert_close(slerp(a, 3 * a, 0.5), 2 * a)
    with pytest.raises(ValueError, match="opposite codes"):
        slerp(a, -a, 0.5)


def test_ddim_refuses_an_eta_that_leaves_the_family(diffusion):
    # σ² may not exceed 1 - ᾱ_prev: the square root of the direction term would be imaginary.
    with pytest.raises(ValueError, match="leaves the DDIM family"):
        ddim_step(diffusion, dummy_model, torch.zeros(1, 2), 999, 0, eta=2.0)
    ddim_step(diffusion, dummy_model, torch.zeros(1, 2), 999, 0, eta=1.0)  # η ≤ 1 is in it
