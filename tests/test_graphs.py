"""Specification of ddpm_lib.accel.graphs: the GPU fast path computes what the plain path computes.

On the CPU the CUDA graph is not captured, but the captured functions (``p_sample`` inside
``GraphedSampler``, the trainer's ``update`` inside ``GraphedStep``) and the training options
(channels_last) run and are compared here in float32. Tolerances: a handful of float32
roundings (2^-24 ≈ 6e-8 each) on O(1) values.
"""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from ddpm_lib.accel.graphs import GraphedSampler, prepare_model
from ddpm_lib.diffusion import GaussianDiffusion
from ddpm_lib.learned_variance import LearnedRangeDiffusion
from ddpm_lib.nets import UNET_PRESETS, UNet
from ddpm_lib.samplers import ddpm_sample
from ddpm_lib.schedules import linear_beta_schedule
from ddpm_lib.training import TrainConfig, Trainer

F32 = dict(rtol=1e-5, atol=1e-5)


def random_unet(**overrides) -> UNet:
    torch.manual_seed(0)
    model = UNet(dataclasses.replace(UNET_PRESETS["tiny"], **overrides)).eval()
    for p in model.parameters():  # zero-initialised output layers would hide differences
        nn.init.normal_(p, std=0.05)
    return model


def test_graphed_sampler_runs_the_same_chain_as_the_plain_loop():
    d = GaussianDiffusion(linear_beta_schedule(50, 2e-3, 0.4))
    model = random_unet()
    shape = (2, 1, 16, 16)
    torch.manual_seed(7)  # both draw x_T, then one z per step, from the global generator
    plain = ddpm_sample(d, model, torch.randn(shape), progress=False)
    torch.manual_seed(7)
    fast = GraphedSampler(d, model, shape, device="cpu").sample()
    torch.testing.assert_close(fast, plain, **F32)


@pytest.mark.parametrize(
    "mean_type, var_type, out_channels",
    [("eps", "fixed_large", None), ("x0", "fixed_small", None), ("v", "fixed_small", None),
     ("eps", "learned_range", 2)],
)  # fmt: skip
def test_graphed_sampler_runs_every_parameterization_the_plain_loop_runs(
    mean_type, var_type, out_channels
):
    # It captures p_sample itself, so whatever p_sample supports, it supports.
    cls = LearnedRangeDiffusion if var_type == "learned_range" else GaussianDiffusion
    d = cls(linear_beta_schedule(20, 2e-3, 0.4), mean_type, var_type)
    model = random_unet(out_channels=out_channels)
    torch.manual_seed(8)
    plain = ddpm_sample(d, model, torch.randn(2, 1, 16, 16), progress=False)
    torch.manual_seed(8)
    fast = GraphedSampler(d, model, (2, 1, 16, 16), device="cpu").sample()
    torch.testing.assert_close(fast, plain, **F32)


def test_graphed_sampler_with_an_oracle_returns_the_data_point(oracle_eps):
    d = GaussianDiffusion(linear_beta_schedule(1000))
    x_star = torch.rand(1, 1, 4, 4) * 2 - 1
    out = GraphedSampler(d, oracle_eps(d, x_star), (3, 1, 4, 4), device="cpu").sample()
    torch.testing.assert_close(out, x_star.expand(3, -1, -1, -1), atol=1e-5, rtol=0)


def test_graphed_sampler_can_sample_again_from_a_given_x_T():
    d = GaussianDiffusion(linear_beta_schedule(10, 2e-3, 0.4))
    sampler = GraphedSampler(d, random_unet(), (2, 1, 16, 16), device="cpu")
    x_T = torch.randn(2, 1, 16, 16)
    torch.manual_seed(3)
    first = sampler.sample(x_T)
    torch.manual_seed(3)
    again = sampler.sample(x_T)  # the step index starts at T-1 again
    torch.testing.assert_close(again, first, rtol=0, atol=0)


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


def _graph_config(tmp_path, cuda_graph: bool, **overrides) -> TrainConfig:
    return TrainConfig(
        dataset="mnist",
        model={"type": "unet", "preset": "tiny", "dropout": 0.0},
        batch_size=8,
        steps=4,
        warmup=3,  # the learning rate changes every step: the graph must read it each time
        ema_decay=0.99,  # and the EMA weight, warming up as min(0.99, (1+n)/(10+n))
        cuda_graph=cuda_graph,
        out_dir=str(tmp_path / str(cuda_graph)),
        **overrides,
    )


def _graph_trainers(tmp_path):
    data = torch.rand(64, 1, 16, 16) * 2 - 1
    return [
        Trainer(
            _graph_config(tmp_path, g),
            model=random_unet(dropout=0.0),
            data=data.clone(),
            device="cpu",
        )
        for g in (False, True)
    ]


def test_graphed_training_step_takes_the_same_steps_as_the_plain_one(tmp_path):
    # On the CPU the update captured on a GPU (tensor lr, tensor EMA weight, autocast cache
    # off, warm-up then restore) runs eagerly; it must train exactly as the plain step does.
    plain, graphed = _graph_trainers(tmp_path)
    for _ in range(4):
        torch.testing.assert_close(graphed.train_step(), plain.train_step(), **F32)
    for a, b in zip(graphed.model.parameters(), plain.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, **F32)
    # ema += w (θ - ema) on the graphed path, torch.lerp on the plain one: same value, up to
    # the rounding of one product.
    for a, b in zip(graphed.ema.parameters(), plain.ema.parameters(), strict=True):
        torch.testing.assert_close(a, b, **F32)
    assert torch.equal(graphed.data_gen.get_state(), plain.data_gen.get_state())
    assert torch.equal(graphed.noise_gen.get_state(), plain.noise_gen.get_state())


def test_graph_capture_warm_up_leaves_no_trace(tmp_path):
    _, graphed = _graph_trainers(tmp_path)
    before = graphed.state_dict()
    graphed.graphed._capture()  # warm-up update(s), then restore
    after = graphed.state_dict()
    for key in ("model", "ema"):
        for name, value in before[key].items():
            assert torch.equal(after[key][name], value), (key, name)
    assert after["optimizer"]["state"], "the warm-up creates AdamW's state"
    for state in after["optimizer"]["state"].values():  # ... which starts from zero
        assert all(not v.any() for v in state.values())
    for name, value in before["rng"].items():
        assert torch.equal(after["rng"][name], value), name


def test_cuda_graph_refuses_compile_modes_that_capture_graphs_themselves(tmp_path):
    with pytest.raises(ValueError, match="compile_mode=None"):
        _graph_config(tmp_path, True, compile_mode="reduce-overhead").validate()


# --- the committed GPU benchmark (benchmarks/results/h100_bench.json) ------------------------
BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def test_committed_benchmark_table_is_what_the_committed_json_says(tmp_path):
    out = tmp_path / "table.md"
    subprocess.run(
        [
            sys.executable,
            str(BENCH / "bench_gpu.py"),
            "--from-json",
            str(BENCH / "results" / "h100_bench.json"),
            "--table",
            str(out),
        ],
        check=True,
        capture_output=True,
    )
    assert out.read_text() == (BENCH / "results" / "h100_bench_table.md").read_text()


@pytest.mark.parametrize("kind", ["hf_course_mnist", "ddpm_cifar10", "lucidrains_unet64"])
def test_committed_benchmark_compares_like_with_like(kind):
    # The rule for "the same architecture": parameters within 1%, FLOPs within 5%.
    entry = json.loads((BENCH / "results" / "h100_bench.json").read_text())[kind]
    peer = entry["peer"]
    params, flops = entry["params"], entry["fwd_gflop_per_image"]
    assert abs(params["ours"] / params[peer] - 1) <= 0.01
    assert abs(flops["ours"] / flops[peer] - 1) <= 0.05
    ratios = entry[f"speedup_vs_{peer}"]
    assert set(ratios) == {"train_b128", "train_best_batch", "sample"}
