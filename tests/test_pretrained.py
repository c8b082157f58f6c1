"""Specification of ddpm_lib.pretrained: the chapters' load-or-train and quick mode."""

import re
from pathlib import Path

import pytest
import torch

from ddpm_lib.models import count_parameters
from ddpm_lib.pretrained import (
    REPO_URL,
    find_checkpoint,
    load_or_train,
    load_pretrained,
    quick_mode,
)
from ddpm_lib.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "value, expected", [("1", True), ("true", True), ("0", False), ("", False)]
)
def test_quick_mode_follows_the_environment_variable(monkeypatch, value, expected):
    monkeypatch.setenv("DDPM_QUICK", value)
    assert quick_mode() is expected


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "toy_gmm"])
def test_shipped_checkpoints_are_found_from_the_repository(monkeypatch, name):
    monkeypatch.chdir(ROOT / "tests")  # a sub-folder: the search walks up
    assert find_checkpoint(name) == ROOT / "checkpoints" / f"{name}.pt"


def test_shipped_mnist_checkpoint_loads_as_a_float32_unet_in_eval_mode(monkeypatch):
    monkeypatch.chdir(ROOT)
    pre = load_pretrained("mnist", device="cpu", download=False)
    assert count_parameters(pre.model) == 1_623_169 and not pre.model.training
    assert all(p.dtype == torch.float32 for p in pre.model.parameters())
    assert pre.diffusion.num_timesteps == 1000 and pre.config["holdout"] == 1000
    assert pre.card["steps"] > 0


def test_load_or_train_trains_when_no_checkpoint_is_found(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("DDPM_CHECKPOINTS", raising=False)
    cfg = TrainConfig(
        dataset="moons",
        model={"type": "mlp", "hidden": 16},
        steps=5,
        batch_size=8,
        num_timesteps=10,
        out_dir=str(tmp_path / "run"),
    )
    pre = load_or_train("no_such_model", cfg, device="cpu", download=False, progress=False)
    assert pre.source == "trained now" and pre.card["steps"] == 5


def test_repository_url_matches_the_book_config():
    config = (ROOT / "_config.yml").read_text()
    match = re.search(r"^repository:\s*\n\s+url:\s*(\S+)", config, re.MULTILINE)
    assert match and match.group(1) == REPO_URL
