"""Specification of ddpm_lib.samplers: DDPM (Algorithm 2) and DDIM (Chapters 4 and 7)."""

import pytest
import torch

from ddpm_lib.diffusion import GaussianDiffusion
from ddpm_lib.samplers import ddim_step, ddim_timesteps
from ddpm_lib.schedules import get_beta_schedule

T = 1000


@pytest.fixture
def diffusion():
    return GaussianDiffusion(get_beta_schedule("linear", T))


def dummy_model(x, t):
    """A fixed smooth function of (x, t) in the spirit of diffusers' scheduler tests."""
    return torch.sin(x) * (t.reshape(-1, *([1] * (x.ndim - 1))) + 1) / T


def test_oracle_eps_model_makes_ddpm_sampling_return_the_data_point(diffusion, oracle_eps):
    torch.manual_seed(0)
    x_star = torch.rand(1, 1, 4, 4) * 2 - 1
    x = diffusion.sample(oracle_eps(diffusion, x_star), (8, 1, 4, 4), progress=False)
    # The last step's mean is exactly x̂_0 = x* (coef1 = 1, coef2 = 0 at book step 1);
    # what remains is float32 rounding.
    torch.testing.assert_close(x, x_star.expand(8, -1, -1, -1), atol=1e-5, rtol=0)


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_oracle_sampling_works_with_either_variance(diffusion, oracle_eps, variance):
    x_star = torch.full((1, 3), 0.25)
    x = diffusion.sample(oracle_eps(diffusion, x_star), (4, 3), variance=variance, progress=False)
    torch.testing.assert_close(x, x_star.expand(4, 3), atol=1e-5, rtol=0)


@pytest.mark.parametrize("clip", [False, True])
def test_ddim_eta_one_over_all_steps_has_ddpm_step_mean_and_variance(diffusion, clip):
    torch.manual_seed(1)
    x_t = 1.5 * torch.randn(6, 5, dtype=torch.float64)
    for t in (1, 2, 10, 300, 700, 999):
        ddim = ddim_step(diffusion, dummy_model, x_t, t, t - 1, eta=1.0, clip_denoised=clip)
        ddpm = diffusion.p_mean_variance(
            dummy_model, x_t, t, clip_denoised=clip, variance="fixed_small"
        )
        torch.testing.assert_close(ddim["mean"], ddpm["mean"], rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(ddim["variance"], ddpm["variance"], rtol=1e-9, atol=1e-15)


def test_ddim_eta_zero_is_deterministic_given_x_T(diffusion):
    x_T = torch.randn(3, 2, generator=torch.Generator().manual_seed(2))
    a = diffusion.ddim_sample(dummy_model, (3, 2), steps=20, noise=x_T, progress=False)
    b = diffusion.ddim_sample(dummy_model, (3, 2), steps=20, noise=x_T, progress=False)
    assert torch.equal(a, b)


def test_oracle_eps_model_makes_ddim_return_the_data_point_in_few_steps(diffusion, oracle_eps):
    x_star = torch.rand(1, 1, 3, 3) * 2 - 1
    x = diffusion.ddim_sample(oracle_eps(diffusion, x_star), (5, 1, 3, 3), steps=10, progress=False)
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
    x, traj = diffusion.sample(
        dummy_model, (2, 1, 2, 2), progress=False, return_trajectory=True, trajectory_stride=250
    )
    assert traj["steps"] == [1000, 751, 501, 251, 1]
    assert traj["x_t"].shape == (5, 2, 1, 2, 2) and traj["pred_x0"].shape == (5, 2, 1, 2, 2)
    assert x.shape == (2, 1, 2, 2)


def test_sampling_is_reproducible_with_a_generator(diffusion):
    a = diffusion.sample(
        dummy_model, (2, 3), generator=torch.Generator().manual_seed(7), progress=False
    )
    b = diffusion.sample(
        dummy_model, (2, 3), generator=torch.Generator().manual_seed(7), progress=False
    )
    assert torch.equal(a, b)


def test_wrong_noise_shape_is_rejected(diffusion):
    with pytest.raises(ValueError, match="noise has shape"):
        diffusion.sample(dummy_model, (2, 3), noise=torch.zeros(3, 3), progress=False)
