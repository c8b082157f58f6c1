"""Specification of ddpm_lib.training.pretrained: the chapters' load-or-train and quick mode."""

import re
from pathlib import Path

import pytest
import torch

from ddpm_lib.nets import count_parameters
from ddpm_lib.training import RECIPES, recipe
from ddpm_lib.training.checkpoint import load_checkpoint
from ddpm_lib.training.config import resume_conflicts
from ddpm_lib.training.pretrained import REPO_URL, find_checkpoint, load_or_train, load_pretrained
from ddpm_lib.training.recipes import QUICK_STEPS
from ddpm_lib.utils import quick_mode

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


def test_load_or_train_trains_the_recipe_when_no_checkpoint_is_found(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("DDPM_QUICK", "1")
    monkeypatch.delenv("DDPM_CHECKPOINTS", raising=False)
    pre = load_or_train("toy_gmm", device="cpu", download=False, progress=False)
    assert pre.source == "trained now" and pre.card["steps"] == QUICK_STEPS
    # the shipped model's recipe, cut to a few steps
    assert pre.config["lr"] == RECIPES["toy_gmm"].lr
    assert pre.config["toy_size"] == RECIPES["toy_gmm"].toy_size
    assert not (tmp_path / ".cache" / "ddpm_lib" / "runs").exists()  # quick runs leave nothing


def test_an_unknown_recipe_lists_the_recipes():
    with pytest.raises(ValueError, match="the recipes are mnist, fashion_mnist"):
        recipe("imagenet")


def test_a_recipe_is_a_copy_that_can_be_edited_without_touching_the_registry():
    config = recipe("mnist")
    config.model["ch"] = 8
    assert "ch" not in RECIPES["mnist"].model


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_each_shipped_checkpoint_was_made_by_its_recipe(name):
    # What is trained (data, network, schedule, optimizer, batch) is the recipe's; only the
    # run settings (output folder, data folder, logging) may differ.
    saved = load_checkpoint(ROOT / "checkpoints" / f"{name}.pt")["config"]
    assert resume_conflicts(saved, RECIPES[name].to_dict()) == []


def test_repository_url_matches_the_book_config():
    config = (ROOT / "_config.yml").read_text()
    match = re.search(r"^repository:\s*\n\s+url:\s*(\S+)", config, re.MULTILINE)
    assert match and match.group(1) == REPO_URL
