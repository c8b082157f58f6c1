"""Tests for ddpm_lib.nets: shapes, time conditioning, parameter counts, errors, round trips."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from torch import nn

from ddpm_lib.nets import (
    UNET_PRESETS,
    ToyMLP,
    ToyMLPConfig,
    UNet,
    UNetConfig,
    build_model,
    count_parameters,
    model_spec,
    timestep_embedding,
)
from ddpm_lib.nets.unet import AttnBlock

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: 1 thread is faster


def _unzero(model: nn.Module) -> nn.Module:
    """Randomise the zero-initialised parameters: at init the UNet output ignores its inputs."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if torch.count_nonzero(p) == 0:
                nn.init.normal_(p, std=0.1)
    return model


def _tiny_unet() -> UNet:
    torch.manual_seed(0)
    return _unzero(UNet(UNET_PRESETS["tiny"])).eval()


def _toy_mlp() -> ToyMLP:
    torch.manual_seed(0)
    return ToyMLP(ToyMLPConfig()).eval()


def _batch(config: UNetConfig, n: int) -> torch.Tensor:
    torch.manual_seed(2)
    return torch.randn(n, config.in_channels, config.image_size, config.image_size)


# --- shapes ---------------------------------------------------------------------------------


def test_tiny_unet_output_shape_equals_input_shape():
    x = _batch(UNET_PRESETS["tiny"], 4)
    assert _tiny_unet()(x, torch.tensor([0, 10, 500, 999])).shape == x.shape


def test_mnist_unet_output_shape_equals_input_shape():
    torch.manual_seed(0)
    x = _batch(UNET_PRESETS["mnist"], 2)
    with torch.no_grad():
        out = UNet(UNET_PRESETS["mnist"]).eval()(x, torch.tensor([1, 999]))
    assert out.shape == x.shape


def test_learned_variance_unet_doubles_output_channels():
    config = dataclasses.replace(UNET_PRESETS["tiny"], out_channels=2)
    x = _batch(config, 3)
    assert UNet(config)(x, torch.tensor([1, 2, 3])).shape == (3, 2, 16, 16)


def test_toy_mlp_output_shape_equals_input_shape():
    x = torch.randn(5, 2)
    assert _toy_mlp()(x, torch.arange(5)).shape == (5, 2)


def test_timestep_embedding_shape_dtype_and_odd_dim_zero_pad():
    emb = timestep_embedding(torch.tensor([0, 7, 999]), 9)
    assert emb.shape == (3, 9) and emb.dtype == torch.float32
    assert torch.all(emb[:, -1] == 0)
    # t = 0: sin(0) = 0 for the first half, cos(0) = 1 for the second.
    assert torch.equal(emb[0, :8], torch.tensor([0.0] * 4 + [1.0] * 4))


# --- time conditioning ----------------------------------------------------------------------


def test_unet_output_depends_on_time_step():
    model, x = _tiny_unet(), _batch(UNET_PRESETS["tiny"], 2)
    out0 = model(x, torch.tensor([0, 0]))
    out500 = model(x, torch.tensor([500, 500]))
    assert (out0 - out500).abs().max() > 1e-3


def test_unet_same_time_step_gives_identical_output_in_eval():
    model, x = _tiny_unet(), _batch(UNET_PRESETS["tiny"], 2)
    t = torch.tensor([250, 250])
    assert torch.equal(model(x, t), model(x, t))


def test_toy_mlp_output_depends_on_time_step():
    model, x = _toy_mlp(), torch.randn(8, 2)
    diff = model(x, torch.zeros(8, dtype=torch.long)) - model(x, torch.full((8,), 500))
    assert diff.abs().max() > 1e-3


def test_toy_mlp_same_time_step_gives_identical_output():
    model, x = _toy_mlp(), torch.randn(8, 2)
    t = torch.full((8,), 42)
    assert torch.equal(model(x, t), model(x, t))


def test_float_time_step_matches_integer_time_step():
    model, x = _tiny_unet(), _batch(UNET_PRESETS["tiny"], 2)
    assert torch.equal(model(x, torch.tensor([3.0, 3.0])), model(x, torch.tensor([3, 3])))
    mlp, pts = _toy_mlp(), torch.randn(2, 2)
    assert torch.equal(mlp(pts, torch.tensor([3.0, 3.0])), mlp(pts, torch.tensor([3, 3])))


def test_fractional_time_steps_are_accepted_and_differ_from_neighbours():
    model, x = _tiny_unet(), _batch(UNET_PRESETS["tiny"], 1)
    out = model(x, torch.tensor([3.5]))
    assert not torch.equal(out, model(x, torch.tensor([3])))


def test_zero_dim_time_step_is_broadcast_over_the_batch():
    model, x = _tiny_unet(), _batch(UNET_PRESETS["tiny"], 3)
    assert torch.equal(model(x, torch.tensor(7)), model(x, torch.tensor([7, 7, 7])))


# --- parameter counts -----------------------------------------------------------------------


def test_cifar10_preset_has_ddpm_parameter_count():
    with torch.device("meta"):
        model = UNet(UNET_PRESETS["cifar10"])
    assert count_parameters(model) == 35_746_307


# --- dropout --------------------------------------------------------------------------------


def test_dropout_is_random_in_train_mode_and_off_in_eval_mode():
    model, x = _tiny_unet(), _batch(UNET_PRESETS["tiny"], 2)
    t = torch.tensor([10, 10])
    model.train()
    assert not torch.equal(model(x, t), model(x, t))
    model.eval()
    assert torch.equal(model(x, t), model(x, t))


# --- bad input ------------------------------------------------------------------------------


def test_wrong_image_shape_names_shapes_and_preset():
    model = UNet(UNET_PRESETS["mnist"])
    with pytest.raises(ValueError, match=r"1×28×28 images got 3×32×32.*UNET_PRESETS\['cifar10'\]"):
        model(torch.zeros(1, 3, 32, 32), torch.tensor([0]))


def test_wrong_channel_count_is_rejected():
    model = UNet(UNET_PRESETS["tiny"])
    with pytest.raises(ValueError, match=r"1×16×16 images got 3×16×16.*in_channels"):
        model(torch.zeros(1, 3, 16, 16), torch.tensor([0]))


def test_unbatched_image_is_rejected_with_unsqueeze_hint():
    with pytest.raises(ValueError, match=r"unsqueeze\(0\)"):
        UNet(UNET_PRESETS["tiny"])(torch.zeros(1, 16, 16), torch.tensor([0]))


def test_time_steps_with_wrong_batch_size_are_rejected():
    with pytest.raises(ValueError, match=r"t of shape \(3,\) for a batch of 2"):
        UNet(UNET_PRESETS["tiny"])(torch.zeros(2, 1, 16, 16), torch.tensor([1, 2, 3]))


def test_toy_mlp_rejects_wrong_point_dimension():
    with pytest.raises(ValueError, match=r"dim 2 got a tensor of shape \(4, 3\)"):
        _toy_mlp()(torch.zeros(4, 3), torch.zeros(4))


def test_image_size_not_divisible_by_downsampling_is_rejected():
    with pytest.raises(ValueError, match=r"image_size 30 is not divisible by .* = 4"):
        UNet(UNetConfig(image_size=30))


def test_attention_resolution_outside_network_lists_valid_ones():
    with pytest.raises(ValueError, match=r"resolution 16 .* \[28, 14, 7\]"):
        UNetConfig(attn_resolutions=(16,)).validate()


def test_channels_not_divisible_by_groups_is_rejected():
    with pytest.raises(ValueError, match=r"num_groups=32"):
        UNetConfig(ch=48).validate()


def test_dropout_outside_unit_interval_is_rejected():
    with pytest.raises(ValueError, match=r"dropout must lie in \[0, 1\)"):
        UNetConfig(dropout=1.0).validate()


def test_non_positive_size_is_rejected():
    with pytest.raises(ValueError, match=r"num_res_blocks must be a positive integer"):
        UNetConfig(num_res_blocks=0).validate()


def test_unknown_model_type_lists_valid_types():
    with pytest.raises(ValueError, match=r"unknown model type 'vit'.*\['mlp', 'resunet', 'unet'\]"):
        build_model({"type": "vit"})


def test_from_dict_rejects_unknown_key():
    with pytest.raises(ValueError, match=r"unknown UNetConfig key\(s\) \['channels'\]"):
        UNetConfig.from_dict({"channels": 64})
    with pytest.raises(ValueError, match=r"unknown ToyMLPConfig key\(s\) \['width'\]"):
        ToyMLPConfig.from_dict({"width": 64})


# --- specs and round trips ------------------------------------------------------------------


def test_config_survives_json_round_trip():
    for config in (*UNET_PRESETS.values(), ToyMLPConfig(hidden=64)):
        restored = type(config).from_dict(json.loads(json.dumps(config.to_dict())))
        assert restored == config


def test_model_spec_rebuilds_unet_with_identical_outputs():
    model, x = _tiny_unet(), _batch(UNET_PRESETS["tiny"], 2)
    spec = json.loads(json.dumps(model_spec(model)))
    rebuilt = build_model(spec).eval()
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    t = torch.tensor([5, 900])
    assert torch.equal(rebuilt(x, t), model(x, t))


def test_model_spec_rebuilds_toy_mlp_with_identical_outputs():
    model, x = _toy_mlp(), torch.randn(4, 2)
    rebuilt = build_model(model_spec(model)).eval()
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    assert torch.equal(rebuilt(x, torch.arange(4)), model(x, torch.arange(4)))


def test_build_model_from_preset_applies_overrides():
    model = build_model({"type": "unet", "preset": "tiny", "dropout": 0.0})
    assert model.config == dataclasses.replace(UNET_PRESETS["tiny"], dropout=0.0)


def test_model_keeps_its_own_copy_of_the_config():
    config = dataclasses.replace(UNET_PRESETS["tiny"])
    model = UNet(config)
    config.ch = 64
    assert model_spec(model)["ch"] == UNET_PRESETS["tiny"].ch


def test_attention_block_computes_softmax_attention_over_positions():
    # The fused kernel must compute x + W_o · softmax(q kᵀ/√C) v exactly (float64 rounding).
    torch.manual_seed(0)
    block = AttnBlock(16, 8).double()
    for p in block.parameters():
        nn.init.normal_(p, std=0.2)
    x = torch.randn(2, 16, 5, 5, dtype=torch.float64)
    q, k, v = block.qkv(block.norm(x)).reshape(2, 3, 16, 25).unbind(1)
    weights = torch.softmax(torch.einsum("bci,bcj->bij", q, k) / math.sqrt(16), dim=-1)
    expected = x + block.proj_out(torch.einsum("bij,bcj->bci", weights, v).reshape(2, 16, 5, 5))
    torch.testing.assert_close(block(x), expected, rtol=1e-12, atol=1e-12)
