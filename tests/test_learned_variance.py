"""Specification of ddpm_lib.learned_variance: LearnedRangeDiffusion and the hybrid loss.

Nichol & Dhariwal (2021): the network returns [prediction | ν], ν in [-1, 1] sets
log σ_t² = ½(1+ν) log β_t + ½(1-ν) log β̃_t, and it trains on L_simple + λ T L_t with the mean's
gradient stopped in L_t. Exact identities are checked in float64 (tolerance: a few roundings,
1e-12); network comparisons in float32 (1e-5, as in test_graphs).
"""

import dataclasses
import math

import pytest
import torch
from torch import nn

from ddpm_lib.cli import main
from ddpm_lib.diffusion import GaussianDiffusion
from ddpm_lib.elbo import elbo_bpd, vb_term_bpd
from ddpm_lib.learned_variance import HYBRID_VLB_WEIGHT, LearnedRangeDiffusion
from ddpm_lib.nets import UNET_PRESETS, UNet
from ddpm_lib.oracles import PointOracle
from ddpm_lib.samplers import ddim_sample
from ddpm_lib.schedules import linear_beta_schedule
from ddpm_lib.training import TrainConfig, Trainer, diffusion_for
from ddpm_lib.training.checkpoint import load_checkpoint
from ddpm_lib.training.config import with_variance_channels
from helpers import mc_tolerance

F64 = dict(rtol=1e-12, atol=1e-12)
F32 = dict(rtol=1e-5, atol=1e-5)
pytestmark = pytest.mark.usefixtures("one_thread")


def learned(T: int = 1000) -> LearnedRangeDiffusion:
    return LearnedRangeDiffusion(linear_beta_schedule(T))


def random_unet(out_channels: int = 2) -> UNet:
    torch.manual_seed(0)
    cfg = dataclasses.replace(UNET_PRESETS["tiny"], out_channels=out_channels, dropout=0.0)
    model = UNet(cfg).eval()
    for p in model.parameters():  # zero-initialised output layers would hide differences
        nn.init.normal_(p, std=0.05)
    return model


def eight_bit(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, shape, generator=gen).double() / 127.5 - 1


def test_learned_log_variance_spans_the_two_fixed_variances():
    d = LearnedRangeDiffusion(linear_beta_schedule(1000).double())
    x = torch.zeros(3, 1, 2, 2, dtype=torch.float64)
    t = torch.tensor([0, 1, 999])
    one = torch.ones_like(x)
    small = d.posterior_log_variance_clipped[t].reshape(-1, 1, 1, 1).expand_as(x)
    large = d.betas[t].log().reshape(-1, 1, 1, 1).expand_as(x)
    torch.testing.assert_close(d.learned_log_variance(-one, t, x), small, **F64)
    torch.testing.assert_close(d.learned_log_variance(one, t, x), large, **F64)
    # ν = 0 is the geometric mean of the two variances
    torch.testing.assert_close(d.learned_log_variance(0 * one, t, x), (small + large) / 2, **F64)


def test_p_mean_variance_takes_the_mean_from_the_first_half_and_the_variance_from_the_second():
    d_learned, d_fixed = learned(), GaussianDiffusion(linear_beta_schedule(1000))
    eps_net = random_unet(out_channels=1)
    nu = torch.linspace(-1, 1, 16 * 16).reshape(1, 1, 16, 16)

    def net(x, t):
        return torch.cat([eps_net(x, t), nu.expand_as(x)], dim=1)

    x = torch.randn(2, 1, 16, 16)
    t = torch.tensor([3, 700])
    a = d_learned.p_mean_variance(net, x, t)
    b = d_fixed.p_mean_variance(eps_net, x, t)
    torch.testing.assert_close(a.mean, b.mean, **F32)
    torch.testing.assert_close(a.log_variance, d_learned.learned_log_variance(nu, t, x), **F32)
    torch.testing.assert_close(a.variance, a.log_variance.exp(), **F32)


def test_exact_mean_and_posterior_variance_make_every_kl_term_zero(oracle_eps):
    """eq-ch5-Lt-mean with the exact mean: L_{t-1} = D c_t, 0 at β̃_t and ½(r-1-log r) at β_t."""
    # Data = one 8-bit image x*: the oracle's mean is the true posterior mean, and ν = -1 is
    # the true posterior variance β̃_t, so L_{t-1} = KL(q || p) vanishes for t ≥ 2 (book steps).
    d = LearnedRangeDiffusion(linear_beta_schedule(100).double())
    x_star = eight_bit((1, 1, 4, 4))
    oracle = oracle_eps(d, x_star)

    def net(x, t):
        return torch.cat([oracle(x, t), -torch.ones_like(x)], dim=1)

    x0 = x_star.expand(5, -1, -1, -1)
    t = torch.tensor([1, 2, 30, 70, 99])
    x_t = d.q_sample(x0, t, torch.randn(x0.shape, dtype=torch.float64))
    zero = torch.zeros(5, dtype=torch.float64)
    torch.testing.assert_close(vb_term_bpd(d, net, x0, x_t, t), zero, atol=1e-10, rtol=0)

    # ... while the variance at the other end, β_t, pays KL = ½(r - 1 - log r), r = β̃_t/β_t.
    def net_large(x, s):
        return torch.cat([oracle(x, s), torch.ones_like(x)], dim=1)

    large = vb_term_bpd(d, net_large, x0, x_t, t)
    r = d.posterior_variance[t] / d.betas[t]
    torch.testing.assert_close(large, 0.5 * (r - 1 - r.log()) / math.log(2), **F64)


def test_hybrid_loss_is_l_simple_plus_lambda_t_times_the_elbo_term():
    """The hybrid's L_vlb part is T L_t at the drawn step, the one-step estimate eq-ch5-one-step."""
    d = learned(T=50)
    torch.manual_seed(3)
    x0 = eight_bit((4, 1, 16, 16)).float()
    t = torch.tensor([0, 1, 25, 49])
    noise = torch.randn_like(x0)
    model = random_unet()
    loss = d.training_loss(model, x0, t=t, noise=noise)
    x_t = d.q_sample(x0, t, noise)
    out = model(x_t, t)
    mse = (out[:, :1] - noise).pow(2).flatten(1).mean(1)
    vb = vb_term_bpd(d, lambda *_: out, x0, x_t, t)
    torch.testing.assert_close(loss, mse + HYBRID_VLB_WEIGHT * 50 * vb, **F32)
    assert HYBRID_VLB_WEIGHT == 0.001  # λ of Nichol & Dhariwal (2021)


def test_hybrid_loss_estimates_the_whole_bound_from_one_random_step():
    """eq-ch5-one-step: L_T + T L_{t-1} with t ~ U{1..T} is unbiased, Var = T Σℓ² - (Σℓ)².

    The prediction half is the point oracle of the 8-bit image x* (ε exactly, so L_simple is
    float32 rounding, < 1e-12) and ν = 0.3, so every term ℓ_t of the bound is a constant
    (the mean gap is zero, the variance is fixed) and the estimate takes T values with known
    probabilities. training_loss draws t itself; over n = 20000 draws the mean of
    L_T + (loss / λ) must match elbo_bpd's total, and its sample variance the formula, within
    5 standard errors computed from those exact moments (the hybrid's float32 L_t, good to
    about 1e-5 relative, is far inside them).
    """
    T, n = 10, 20_000
    d = LearnedRangeDiffusion(linear_beta_schedule(T))
    x_star = eight_bit((1, 1, 2, 2), seed=7)
    oracle = PointOracle(d, x_star)

    def net(x, t):
        return torch.cat([oracle(x, t), torch.full_like(x, 0.3)], dim=1)

    exact = elbo_bpd(d, net, x_star.expand(3, -1, -1, -1), progress=False)
    terms = exact.terms[0]  # [T] bits/dim; the same for every draw of x_t:
    torch.testing.assert_close(exact.terms, terms.expand(3, T), rtol=1e-12, atol=1e-12)
    prior = exact.prior[0]
    loss = d.training_loss(
        net, x_star.expand(n, -1, -1, -1), generator=torch.Generator().manual_seed(8)
    )
    estimates = prior + loss.double() / HYBRID_VLB_WEIGHT
    values = prior + T * terms  # each with probability 1/T
    var = T * (terms**2).sum() - terms.sum() ** 2
    torch.testing.assert_close(values.var(unbiased=False), var, rtol=1e-12, atol=0)
    mu4 = ((values - values.mean()) ** 4).mean()
    assert abs(estimates.mean() - exact.total[0]) < mc_tolerance(var.sqrt().item(), n)
    assert abs(estimates.var() - var) < mc_tolerance((mu4 - var**2).sqrt().item(), n)


def test_hybrid_loss_trains_the_mean_on_l_simple_only_and_the_variance_on_l_vlb_only():
    d = learned(T=50)
    torch.manual_seed(4)
    x0 = eight_bit((3, 1, 4, 4)).float()
    t = torch.tensor([0, 10, 40])
    noise = torch.randn_like(x0)
    raw = (torch.randn(3, 2, 4, 4) * 0.5).requires_grad_()
    d.training_loss(lambda *_: raw, x0, t=t, noise=noise).sum().backward()
    # d/dε̂ of mean((ε̂ - ε)²) over D = 16 pixels is 2(ε̂ - ε)/16: nothing from L_vlb.
    torch.testing.assert_close(raw.grad[:, :1], 2 * (raw[:, :1] - noise).detach() / 16, **F32)
    # The variance half gets exactly the gradient of λ T L_t.
    raw2 = raw.detach().clone().requires_grad_()
    x_t = d.q_sample(x0, t, noise)
    (HYBRID_VLB_WEIGHT * 50 * vb_term_bpd(d, lambda *_: raw2, x0, x_t, t)).sum().backward()
    torch.testing.assert_close(raw.grad[:, 1:], raw2.grad[:, 1:], **F32)
    assert raw.grad[:, 1:].abs().min() > 0


def test_elbo_of_a_learned_variance_network_with_v_minus_one_is_the_fixed_small_elbo():
    d_learned, d_fixed = learned(T=20), GaussianDiffusion(linear_beta_schedule(20))
    eps_net = random_unet(out_channels=1)

    def net(x, t):
        return torch.cat([eps_net(x, t), -torch.ones_like(x)], dim=1)

    x0 = eight_bit((2, 1, 16, 16)).float()
    a = elbo_bpd(d_learned, net, x0, generator=torch.Generator().manual_seed(0), progress=False)
    b = elbo_bpd(d_fixed, eps_net, x0, generator=torch.Generator().manual_seed(0), progress=False)
    torch.testing.assert_close(a.total, b.total, rtol=1e-5, atol=1e-5)


def test_ddim_and_the_ode_score_see_only_the_mean_half():
    d_learned, d_fixed = learned(T=100), GaussianDiffusion(linear_beta_schedule(100))
    model = random_unet()
    x = torch.randn(2, 1, 16, 16)
    t = torch.tensor([5, 50])
    torch.testing.assert_close(d_learned.mean_model(model)(x, t), model(x, t)[:, :1])
    runs = []
    for d, net in ((d_learned, model), (d_fixed, d_learned.mean_model(model))):
        gen = torch.Generator().manual_seed(0)
        x_T = torch.randn((2, 1, 16, 16), generator=gen)
        runs.append(ddim_sample(d, net, x_T, 10, generator=gen, progress=False))
    torch.testing.assert_close(runs[0], runs[1], **F32)


def test_a_network_without_the_variance_channels_is_refused():
    with pytest.raises(ValueError, match="twice the channels"):
        learned().p_mean_variance(random_unet(out_channels=1), torch.randn(1, 1, 16, 16), 3)


def test_learned_range_variance_needs_a_learned_variance_diffusion():
    d = GaussianDiffusion(linear_beta_schedule(10))
    x = torch.randn(1, 1, 16, 16)
    with pytest.raises(ValueError, match="unknown variance 'learned_range'"):
        d.p_mean_variance(random_unet(out_channels=1), x, 3, variance="learned_range")
    with pytest.raises(ValueError, match="LearnedRangeDiffusion"):
        GaussianDiffusion(linear_beta_schedule(10), "eps", "learned_range")


def test_a_learned_variance_network_may_be_run_with_a_fixed_variance():
    d = learned(T=10)
    x, t = torch.randn(1, 1, 16, 16), torch.tensor([4])
    out = d.p_mean_variance(random_unet(), x, t, variance="fixed_small")
    torch.testing.assert_close(out.variance, d.posterior_variance[4].float().expand_as(x))


def test_learned_variance_doubles_the_output_channels_of_a_preset():
    spec = with_variance_channels({"type": "unet", "preset": "tiny"}, "learned_range")
    assert spec["out_channels"] == 2
    assert with_variance_channels({"type": "unet", "preset": "tiny"}, "fixed_small") == {
        "type": "unet",
        "preset": "tiny",
    }
    with pytest.raises(ValueError, match="out_channels = 2 × in_channels = 2"):
        with_variance_channels(
            {"type": "unet", "preset": "tiny", "out_channels": 3}, "learned_range"
        )
    with pytest.raises(ValueError, match="predicts only the mean"):
        with_variance_channels({"type": "mlp"}, "learned_range")


def test_learned_variance_on_continuous_toy_data_is_refused():
    with pytest.raises(ValueError, match="8-bit images"):
        TrainConfig(dataset="moons", var_type="learned_range").validate()
    with pytest.raises(ValueError, match="var_type must be one of"):
        TrainConfig(dataset="mnist", var_type="learned").validate()


def test_trainer_trains_a_learned_variance_network_and_its_checkpoint_restores_it(tmp_path):
    cfg = TrainConfig(
        dataset="mnist", model={"type": "unet", "preset": "tiny"}, var_type="learned_range",
        num_timesteps=50, batch_size=4, steps=3, out_dir=str(tmp_path),
    )  # fmt: skip
    data = eight_bit((16, 1, 16, 16)).float()
    trainer = Trainer(cfg, data=data, device="cpu")
    assert trainer.model.config.out_channels == 2
    trainer.run(progress=False)
    assert all(math.isfinite(v) for v in trainer.history["loss"])
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["config"]["var_type"] == "learned_range"
    assert isinstance(diffusion_for(ckpt["config"]), LearnedRangeDiffusion)


def test_var_type_flag_reaches_the_training_config(tmp_path):
    args = ["train", "--dataset", "fashion_mnist", "--var-type", "learned_range"]
    args += ["--ch", "16", "--ch-mult", "1,2", "--num-res-blocks", "1", "--attn-resolutions", ""]
    args += ["--num-groups", "8", "--num-timesteps", "20", "--steps", "2", "--batch-size", "4"]
    args += ["--out-dir", str(tmp_path), "--no-progress"]
    assert main(args) == 0
    config = load_checkpoint(tmp_path / "last.pt")["config"]
    assert config["var_type"] == "learned_range" and config["model"]["out_channels"] == 2


def test_a_checkpoint_written_before_var_type_existed_still_resumes(tmp_path):
    cfg = TrainConfig(
        dataset="mnist", model={"type": "unet", "preset": "tiny"}, num_timesteps=50,
        batch_size=4, steps=2, out_dir=str(tmp_path),
    )  # fmt: skip
    data = eight_bit((16, 1, 16, 16)).float()
    Trainer(cfg, data=data, device="cpu").run(progress=False)
    ckpt = load_checkpoint(tmp_path / "last.pt")
    del ckpt["config"]["var_type"]  # as written by earlier versions
    assert not isinstance(diffusion_for(ckpt["config"]), LearnedRangeDiffusion)
    resumed = Trainer(cfg, data=data, device="cpu")
    resumed.load_state_dict(ckpt)
    assert resumed.step == 2
