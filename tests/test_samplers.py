"""Specification of ddpm_lib.samplers: DDPM (Algorithm 2) and DDIM (Chapters 4 and 7)."""

import pytest
import torch

from ddpm_lib.diffusion import GaussianDiffusion
from ddpm_lib.samplers import Trajectory, ddim_sample, ddim_step, ddim_timesteps, ddpm_sample
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
