"""Specification of ddpm_lib.training.checkpoint: atomic saves, safe loads, clear errors."""

import pytest
import torch

from ddpm_lib.nets import build_model, model_spec
from ddpm_lib.training.checkpoint import (
    CheckpointError,
    export_release,
    load_checkpoint,
    load_model,
    save_checkpoint,
)

SPEC = {"type": "mlp", "hidden": 16}


def _checkpoint(path, spec=SPEC):
    torch.manual_seed(0)
    model = build_model(spec)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.1)
    state = {"config": {"model": model_spec(model)}, "step": 7, "model": model.state_dict()}
    state["ema"] = model.state_dict()
    return save_checkpoint(state, path), model


def test_saved_checkpoint_loads_back_with_weights_only(tmp_path):
    path, model = _checkpoint(tmp_path / "c.pt")
    raw = torch.load(path, weights_only=True)
    assert raw["step"] == 7
    for k, v in model.state_dict().items():
        assert torch.equal(raw["model"][k], v)


def test_a_failed_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path, _ = _checkpoint(tmp_path / "c.pt")
    before = path.read_bytes()

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"config": {}, "step": 8, "model": {}}, path)
    assert path.read_bytes() == before
    assert load_checkpoint(path)["step"] == 7


def test_truncated_checkpoint_is_reported_as_corrupt(tmp_path):
    path, _ = _checkpoint(tmp_path / "c.pt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated.*earlier checkpoint"):
        load_checkpoint(path)


def test_garbage_file_is_reported_as_corrupt(tmp_path):
    path = tmp_path / "c.pt"
    path.write_bytes(b"\x00not a checkpoint at all" * 10)
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(path)


def test_missing_checkpoint_says_how_to_get_one(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist.*ddpm_lib train"):
        load_checkpoint(tmp_path / "nope.pt")


def test_foreign_checkpoint_is_rejected(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(CheckpointError, match="not a ddpm_lib checkpoint"):
        load_checkpoint(path)


def test_checkpoint_with_pickled_code_is_refused(tmp_path):
    # weights_only=True never unpickles arbitrary objects: such a file cannot run code on load.
    path = tmp_path / "evil.pt"
    torch.save({"format": "ddpm_lib.training.checkpoint", "payload": _Payload()}, path)
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(path)


class _Payload:
    pass


def test_load_model_rebuilds_the_network_with_identical_outputs(tmp_path):
    path, model = _checkpoint(tmp_path / "c.pt")
    loaded, ckpt = load_model(path)
    x, t = torch.randn(4, 2), torch.tensor([0, 1, 2, 3])
    assert torch.equal(loaded(x, t), model.eval()(x, t))
    assert not loaded.training and ckpt["step"] == 7


def test_load_model_for_another_architecture_is_an_error(tmp_path):
    path, _ = _checkpoint(tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="different model.*hidden"):
        load_model(path, expected_model={**model_spec(build_model(SPEC)), "hidden": 64})


def test_weights_that_do_not_fit_their_config_are_an_error(tmp_path):
    path, model = _checkpoint(tmp_path / "c.pt")
    ckpt = load_checkpoint(path)
    ckpt["config"]["model"]["hidden"] = 64  # config edited, weights not
    save_checkpoint({k: v for k, v in ckpt.items() if k not in ("format", "version")}, path)
    with pytest.raises(CheckpointError, match="do not fit the model its config describes"):
        load_model(path)


def test_release_export_stores_half_precision_and_loads_as_float32(tmp_path):
    path, model = _checkpoint(tmp_path / "c.pt")
    out = export_release(path, tmp_path / "release.pt", card={"data": "moons"})
    raw = load_checkpoint(out)
    assert all(v.dtype == torch.float16 for v in raw["model"].values())
    assert raw["card"]["data"] == "moons" and raw["card"]["steps"] == 7
    loaded, _ = load_model(out)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    # Exactly the original weights rounded to fp16, nothing else changed.
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v.half().float()), k
