"""Specification of ddpm_lib.nets.resunet: the denoising-diffusion-pytorch UNet layout."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys

import pytest
import torch
from torch import nn

from ddpm_lib.nets import build_model, count_parameters, model_spec
from ddpm_lib.nets.resunet import LinearAttention, ResUNet, ResUNetConfig, SoftmaxAttention
from ddpm_lib.training import TrainConfig, Trainer

# Two levels at 8×8 and 4×4, a few thousand parameters: milliseconds per forward pass.
SMALL = ResUNetConfig(
    image_size=8, in_channels=1, dim=8, dim_mults=(1, 2), attn_heads=2, attn_dim_head=4,
    num_mem_kv=2,
)  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: 1 thread is faster


def _randomise_gains(module: nn.Module) -> nn.Module:
    """RMSNorm gains start at one; make them random so that a test also checks where they act."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            if bool((p == 1).all()):
                p.mul_(1 + 0.3 * torch.randn_like(p))
    return module


def _model(config: ResUNetConfig = SMALL) -> ResUNet:
    torch.manual_seed(0)
    return _randomise_gains(ResUNet(config)).eval()


def _batch(config: ResUNetConfig, n: int) -> torch.Tensor:
    torch.manual_seed(2)
    return torch.randn(n, config.in_channels, config.image_size, config.image_size)


def _rms_norm(x: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    """x / ‖x‖ · √C · g, the norm taken over the channels of each pixel."""
    return x / x.norm(dim=1, keepdim=True) * math.sqrt(x.shape[1]) * gain.view(1, -1, 1, 1)


# --- size and shapes ------------------------------------------------------------------------


def test_default_config_has_the_parameter_count_of_denoising_diffusion_pytorch():
    # 35,711,491 is the count of denoising-diffusion-pytorch 2.3.4's Unet(dim=64,
    # dim_mults=(1, 2, 4, 8), channels=3), measured with that package installed.
    with torch.device("meta"):  # shapes only: no memory, no initialisation time
        model = ResUNet(ResUNetConfig())
    assert count_parameters(model) == 35_711_491


@pytest.mark.parametrize(
    "config",
    [
        SMALL,
        dataclasses.replace(SMALL, in_channels=3),
        dataclasses.replace(SMALL, image_size=28, dim_mults=(1, 2, 4)),
    ],
    ids=["1x8x8", "3x8x8", "1x28x28-three-levels"],
)
def test_output_shape_equals_input_shape(config):
    x = _batch(config, 3)
    with torch.no_grad():
        assert _model(config)(x, torch.tensor([0, 10, 999])).shape == x.shape


# --- conditioning and layout ----------------------------------------------------------------


def test_output_depends_on_the_time_step():
    # No parameter starts at zero (PyTorch's default initialisation, as in the reference),
    # so even a fresh model responds to t.
    model, x = _model(), _batch(SMALL, 2)
    with torch.no_grad():
        a, b = model(x, torch.tensor([0, 0])), model(x, torch.tensor([500, 500]))
    assert (a - b).abs().max() > 1e-3


def test_a_scalar_time_step_is_shared_by_the_batch():
    model, x = _model(), _batch(SMALL, 3)
    with torch.no_grad():
        torch.testing.assert_close(model(x, 7), model(x, torch.tensor([7, 7, 7])))


def test_channels_last_input_gives_the_same_output():
    model, x = _model(), _batch(SMALL, 2)
    t = torch.tensor([3, 800])
    with torch.no_grad():
        expected = model(x, t)
        got = model.to(memory_format=torch.channels_last)(
            x.contiguous(memory_format=torch.channels_last), t
        )
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_build_model_and_model_spec_round_trip():
    spec = {"type": "resunet", **SMALL.to_dict()}
    model = build_model(json.loads(json.dumps(spec)))
    assert isinstance(model, ResUNet) and model.config == SMALL
    assert model_spec(model) == spec
    rebuilt = build_model(model_spec(model))
    rebuilt.load_state_dict(model.state_dict())  # the same tensors, names and shapes


def test_importing_resunet_first_still_registers_the_model_type():
    code = (
        "import ddpm_lib.nets.resunet\n"
        "from ddpm_lib.nets import build_model\n"
        "print(type(build_model({'type': 'resunet', 'dim': 8})).__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ResUNet"


# --- the attention layers against their formulas --------------------------------------------


def test_linear_attention_equals_its_formula():
    torch.manual_seed(0)
    b, c, heads, d, mem = 2, 6, 2, 4, 3
    attn = _randomise_gains(LinearAttention(c, heads, d, mem))
    x = torch.randn(b, c, 5, 3)  # not square, to catch a mixed-up height and width
    n, hid = 15, heads * d
    xn = _rms_norm(x, attn.norm.gain).reshape(b, c, n)
    w = attn.qkv.weight[:, :, 0, 0]  # rows: all queries, then keys, then values; head-major
    out = torch.zeros(b, hid, n)
    for i in range(b):
        for h in range(heads):
            rows = slice(h * d, (h + 1) * d)
            q = w[:hid][rows] @ xn[i]  # [d, n]
            k = torch.cat([attn.mem_kv[0, h], w[hid : 2 * hid][rows] @ xn[i]], dim=1)
            v = torch.cat([attn.mem_kv[1, h], w[2 * hid :][rows] @ xn[i]], dim=1)
            q = q.softmax(dim=0) / math.sqrt(d)  # each query: a distribution over features
            k = k.softmax(dim=1)  # each key feature: a distribution over positions
            # Query j reads value i with the unnormalised weight q_j · k_i.
            out[i, rows] = v @ (q.T @ k).T
    proj = torch.einsum("oc,bcn->bon", attn.proj_out.weight[:, :, 0, 0], out)
    proj = proj + attn.proj_out.bias[:, None]
    expected = x + _rms_norm(proj.reshape(b, c, 5, 3), attn.norm_out.gain)
    with torch.no_grad():
        torch.testing.assert_close(attn(x), expected, rtol=1e-5, atol=1e-5)


def test_softmax_attention_equals_softmax_of_q_k_over_root_d_times_v():
    torch.manual_seed(0)
    b, c, heads, d, mem = 2, 6, 2, 4, 3
    attn = _randomise_gains(SoftmaxAttention(c, heads, d, mem))
    x = torch.randn(b, c, 5, 3)
    n, hid = 15, heads * d
    xn = _rms_norm(x, attn.norm.gain).reshape(b, c, n)
    w = attn.qkv.weight[:, :, 0, 0]
    out = torch.zeros(b, hid, n)
    for i in range(b):
        for h in range(heads):
            rows = slice(h * d, (h + 1) * d)
            q = (w[:hid][rows] @ xn[i]).T  # [n, d]
            k = torch.cat([attn.mem_kv[0, h], (w[hid : 2 * hid][rows] @ xn[i]).T])  # [mem+n, d]
            v = torch.cat([attn.mem_kv[1, h], (w[2 * hid :][rows] @ xn[i]).T])
            out[i, rows] = (torch.softmax(q @ k.T / math.sqrt(d), dim=1) @ v).T
    proj = torch.einsum("oc,bcn->bon", attn.proj_out.weight[:, :, 0, 0], out)
    expected = x + (proj + attn.proj_out.bias[:, None]).reshape(b, c, 5, 3)
    with torch.no_grad():
        torch.testing.assert_close(attn(x), expected, rtol=1e-5, atol=1e-5)


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, message",
    [
        ({"dim": 0}, "dim must be a positive integer"),
        ({"attn_heads": 2.5}, "attn_heads must be a positive integer"),
        ({"dim_mults": ()}, "dim_mults must be positive integers"),
        ({"dim_mults": (1, 0)}, "dim_mults must be positive integers"),
        ({"image_size": 30, "dim_mults": (1, 2, 4, 8)}, "not divisible by 2"),
        ({"dropout": 1.0}, r"dropout must lie in \[0, 1\)"),
    ],
)
def test_bad_config_is_rejected_with_the_reason(change, message):
    with pytest.raises(ValueError, match=message):
        ResUNet(dataclasses.replace(SMALL, **change))


def test_unknown_config_key_is_rejected():
    with pytest.raises(ValueError, match=r"unknown ResUNetConfig key\(s\) \['ch'\]"):
        build_model({"type": "resunet", "ch": 64})


@pytest.mark.parametrize(
    "x, t, message",
    [
        (torch.zeros(1, 8, 8), 0, "unsqueeze"),
        (torch.zeros(2, 3, 8, 8), 0, "configured for 1×8×8 images got 3×8×8"),
        (torch.zeros(2, 1, 16, 16), 0, "configured for 1×8×8 images got 1×16×16"),
        (torch.zeros(2, 1, 8, 8), torch.zeros(3), r"t of shape \(3,\) for a batch of 2"),
    ],
    ids=["3-d", "channels", "size", "t-shape"],
)
def test_bad_input_is_rejected_with_the_reason(x, t, message):
    with pytest.raises(ValueError, match=message):
        _model()(x, t)


# --- training -------------------------------------------------------------------------------


def _train_config(tmp_path, **kw) -> TrainConfig:
    base = dict(
        dataset="cifar10",  # only names the data in messages: the images are passed directly
        model={"type": "resunet", **dataclasses.replace(SMALL, in_channels=3).to_dict()},
        steps=2,
        batch_size=4,
        log_every=1,
        save_every=2,
        out_dir=str(tmp_path / "run"),
    )
    return TrainConfig(**{**base, **kw})


def test_trainer_runs_two_steps_with_a_resunet(tmp_path):
    torch.manual_seed(0)
    data = torch.rand(16, 3, 8, 8) * 2 - 1
    trainer = Trainer(_train_config(tmp_path), data=data, device="cpu")
    history = trainer.run(progress=False)
    assert trainer.step == 2 and isinstance(trainer.model, ResUNet)
    assert len(history["loss"]) == 2 and all(math.isfinite(v) for v in history["loss"])
    assert trainer.config.model["type"] == "resunet"


def test_trainer_rejects_data_that_does_not_fit_the_resunet(tmp_path):
    data = torch.rand(16, 1, 8, 8) * 2 - 1  # one channel; the model expects three
    with pytest.raises(ValueError, match=r"expects \(3, 8, 8\)"):
        Trainer(_train_config(tmp_path), data=data, device="cpu")
