"""Specification of ddpm_lib.training.checkpoint: atomic saves, safe loads, clear errors."""

import json
import re
import sys
from pathlib import Path

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
ROOT = Path(__file__).resolve().parents[1]


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


@pytest.mark.parametrize(
    "content, kind",
    [
        (b"hello, these are my notes\n", "a text file"),
        (b"\x89PNG\r\n\x1a\n" + bytes(64), "a PNG image"),
        (b'{"lr": 0.0002}\n', "a JSON or text file"),
        (b"", "the file is empty"),
        (b"\x00not a checkpoint at all" * 10, "its first bytes are not those of a file"),
    ],
)
def test_a_file_that_is_not_a_checkpoint_is_called_so_not_corrupt(tmp_path, content, kind):
    path = tmp_path / "c.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(path)
    message = str(exc.value)
    assert f"{path} is not a ddpm_lib checkpoint ({kind}" in message
    assert "corrupt" not in message and "Re-running" not in message


def test_a_folder_given_as_checkpoint_names_the_file_to_pass(tmp_path):
    with pytest.raises(CheckpointError, match=r"is a folder, not a checkpoint file.*last\.pt"):
        load_checkpoint(tmp_path)


def test_a_classifier_given_as_diffusion_model_is_called_a_classifier(tmp_path):
    config = {"in_channels": 1, "num_classes": 10, "width": 8, "feature_dim": 16}
    path = save_checkpoint(
        {"config": config, "model": {}, "step": 0, "card": {}}, tmp_path / "c.pt"
    )
    with pytest.raises(CheckpointError, match="is a feature classifier .*not a diffusion model"):
        load_model(path)


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
    with pytest.raises(CheckpointError, match="not a ddpm_lib checkpoint.*safe load") as exc:
        load_checkpoint(path)
    assert "Re-running" not in str(exc.value)  # torch's advice to load unsafely is not repeated


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


# ----------------------------------------------------------------------------- machine paths

MACHINE_PATH = re.compile(r"\.devdata|(^|[\s'\"(])/(tmp|work|root|home|Users|private)/")
DEV_CONFIG = {"dataset": "mnist", "data_root": ".devdata", "out_dir": "/tmp/ddpm_runs/mnist"}
DEV_NOTE = "9000 images of mnist split 'test' from /home/me/.devdata/MNIST/raw (1000 held out)"


def _strings(obj):
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _strings(v)


def _dev_release(path):
    """A release checkpoint as the trainer's machine used to write them: with its folders."""
    _, model = _checkpoint(path)
    state = {"config": {**DEV_CONFIG, "model": model_spec(model)}, "step": 7, "ema": None}
    state |= {"model": {k: v.half() for k, v in model.state_dict().items()}}
    state |= {"card": {"data": DEV_NOTE, "steps": 7}, "data_note": DEV_NOTE, "history": {}}
    return save_checkpoint(state, path)


def test_export_leaves_out_the_folders_of_the_training_machine(tmp_path):
    path, model = _checkpoint(tmp_path / "c.pt")
    ckpt = load_checkpoint(path)
    ckpt["config"] |= DEV_CONFIG
    ckpt["data_note"] = DEV_NOTE
    save_checkpoint({k: v for k, v in ckpt.items() if k not in ("format", "version")}, path)
    raw = load_checkpoint(export_release(path, tmp_path / "mnist_release.pt"))
    assert raw["config"]["data_root"] is None and raw["config"]["out_dir"] == "runs/mnist_release"
    assert raw["card"]["data"] == raw["data_note"]
    assert raw["data_note"].endswith("from <data root>/MNIST/raw (1000 held out)")
    assert not any(MACHINE_PATH.search(s) for s in _strings(raw))


def test_clean_tool_removes_machine_paths_and_keeps_every_tensor_bit_identical(tmp_path):
    sys.path.insert(0, str(ROOT / "tools"))
    from clean_release_checkpoints import clean_file

    path = _dev_release(tmp_path / "mnist.pt")
    path.with_suffix(".json").write_text(json.dumps({"data": DEV_NOTE, "steps": 7}))
    before = load_checkpoint(path)
    assert clean_file(path) is True
    after = load_checkpoint(path)
    assert after["config"]["data_root"] is None and after["config"]["out_dir"] == "runs/mnist"
    assert not any(MACHINE_PATH.search(s) for s in _strings(after))
    assert "/tmp/" not in path.with_suffix(".json").read_text()
    assert before["model"].keys() == after["model"].keys()
    for k, v in before["model"].items():
        assert v.dtype == after["model"][k].dtype and torch.equal(v, after["model"][k]), k
    assert {
        k: v for k, v in before.items() if k not in ("config", "card", "data_note", "model")
    } == {k: v for k, v in after.items() if k not in ("config", "card", "data_note", "model")}
    assert clean_file(path) is False  # nothing left to clean


@pytest.mark.parametrize("path", sorted((ROOT / "checkpoints").glob("*.pt")), ids=lambda p: p.name)
def test_no_shipped_checkpoint_holds_a_machine_path(path):
    ckpt = load_checkpoint(path)
    found = [s for s in _strings({k: ckpt.get(k) for k in ("config", "card", "data_note")})]
    assert not [s for s in found if MACHINE_PATH.search(s)], (
        f"{path.name} holds a folder of the machine that trained it: run "
        "python tools/clean_release_checkpoints.py"
    )
    if "dataset" in ckpt["config"]:  # a diffusion model: the data is searched for as usual
        assert ckpt["config"]["data_root"] is None
