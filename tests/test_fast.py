"""Specification of ddpm_lib.fast: the GPU fast path computes what the plain path computes.

On the CPU the CUDA graph is not captured, but the captured function (``ddpm_step`` inside
``GraphedSampler``) and the training options (channels_last) run and are compared here in
float32. Tolerances: a handful of float32 roundings (2^-24 ≈ 6e-8 each) on O(1) values.
"""

import dataclasses

import pytest
import torch
from torch import nn

from ddpm_lib.diffusion import GaussianDiffusion
from ddpm_lib.fast import GraphedSampler, StepTables, ddpm_step, prepare_model
from ddpm_lib.models import UNET_PRESETS, UNet
from ddpm_lib.schedules import linear_beta_schedule
from ddpm_lib.train import TrainConfig, Trainer

F32 = dict(rtol=1e-5, atol=1e-5)


def random_unet(**overrides) -> UNet:
    torch.manual_seed(0)
    model = UNet(dataclasses.replace(UNET_PRESETS["tiny"], **overrides)).eval()
    for p in model.parameters():  # zero-initialised output layers would hide differences
        nn.init.normal_(p, std=0.05)
    return model


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_fast_step_equals_p_sample(variance):
    d = GaussianDiffusion(linear_beta_schedule(1000))
    model = random_unet()
    tables = StepTables.build(d, torch.device("cpu"), variance)
    torch.manual_seed(1)
    x = torch.randn(3, 1, 16, 16)
    for i in (0, 1, 10, 500, 999):
        z = torch.randn_like(x)
        fast = ddpm_step(model, x, torch.tensor(i), tables, z)
        plain = d.p_sample(model, x, i, noise=z, variance=variance)["sample"]
        torch.testing.assert_close(fast, plain, **F32)


def test_graphed_sampler_runs_the_same_chain_as_the_plain_loop():
    d = GaussianDiffusion(linear_beta_schedule(50, 2e-3, 0.4))
    model = random_unet()
    shape = (2, 1, 16, 16)
    torch.manual_seed(7)  # both draw x_T, then one z per step, from the global generator
    plain = d.sample(model, shape, progress=False)
    torch.manual_seed(7)
    fast = GraphedSampler(d, model, shape, "cpu").sample()
    torch.testing.assert_close(fast, plain, **F32)


def test_graphed_sampler_with_an_oracle_returns_the_data_point(oracle_eps):
    d = GaussianDiffusion(linear_beta_schedule(1000))
    x_star = torch.rand(1, 1, 4, 4) * 2 - 1
    out = GraphedSampler(d, oracle_eps(d, x_star), (3, 1, 4, 4), "cpu").sample()
    torch.testing.assert_close(out, x_star.expand(3, -1, -1, -1), atol=1e-5, rtol=0)


def test_fast_sampler_rejects_other_parameterizations():
    d = GaussianDiffusion(linear_beta_schedule(10), model_mean_type="v")
    with pytest.raises(ValueError, match="ε-prediction"):
        StepTables.build(d, torch.device("cpu"))


def test_channels_last_model_gives_the_same_output():
    model = random_unet()
    x, t = torch.randn(4, 1, 16, 16), torch.tensor([0, 5, 50, 500])
    plain = model(x, t)
    fast = prepare_model(random_unet(), channels_last=True)
    torch.testing.assert_close(
        fast(x.contiguous(memory_format=torch.channels_last), t), plain, **F32
    )


def test_channels_last_training_computes_the_same_loss_and_gradients(tmp_path):
    # Compare the loss and the gradients of one step, not weights after Adam steps: Adam's
    # first updates are ±lr wherever a gradient is near zero, so rounding can flip them.
    spec = {"type": "unet", "preset": "tiny"}
    data = torch.rand(64, 1, 16, 16) * 2 - 1
    runs = []
    for channels_last in (False, True):
        cfg = TrainConfig(
            dataset="mnist",
            model=spec,
            batch_size=8,
            steps=1,
            grad_clip=0.0,
            channels_last=channels_last,
            out_dir=str(tmp_path / str(channels_last)),
        )
        model = random_unet(dropout=0.0)  # initialised before the NHWC conversion
        trainer = Trainer(cfg, model=model, data=data.clone(), device="cpu")
        loss = trainer.train_step()
        runs.append((loss, {n: p.grad for n, p in trainer.model.named_parameters()}))
    torch.testing.assert_close(runs[1][0], runs[0][0], **F32)
    # A gradient entry sums ~10^3 float32 products; rounding grows like √N·2^-24 relative.
    for name, grad in runs[0][1].items():
        torch.testing.assert_close(runs[1][1][name], grad, rtol=1e-4, atol=1e-6)
