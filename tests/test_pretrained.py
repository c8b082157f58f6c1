"""Specification of ddpm_lib.training.pretrained: the chapters' load-or-train and quick mode."""

import re
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

from ddpm_lib.data import DatasetNotFoundError
from ddpm_lib.nets import count_parameters
from ddpm_lib.training import RECIPES, pretrained, recipe
from ddpm_lib.training.checkpoint import load_checkpoint
from ddpm_lib.training.config import resume_conflicts
from ddpm_lib.training.pretrained import (
    REPO_URL,
    CheckpointNotFoundError,
    find_checkpoint,
    load_or_train,
    load_pretrained,
)
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


@pytest.fixture
def nowhere(tmp_path, monkeypatch):
    """No checkpoint can be found: an empty working directory and home, no $DDPM_CHECKPOINTS."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("DDPM_CHECKPOINTS", raising=False)
    return tmp_path


@pytest.fixture
def offline(monkeypatch):
    """Every download fails as it does without a network."""

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)


def tiny_toy_recipe(steps):
    """toy_gmm's recipe, cut to ``steps`` steps on 512 points (its 8-minute limit kept)."""

    def make(name, quick=False):
        return RECIPES["toy_gmm"].replace(
            steps=steps, toy_size=512, log_every=10, save_every=steps, warmup=0
        )

    return make


def test_load_pretrained_without_the_file_names_it_the_places_and_the_remedies(nowhere):
    with pytest.raises(CheckpointNotFoundError) as info:
        load_pretrained("mnist", device="cpu", download=False)
    message = str(info.value)
    assert "'mnist' (mnist.pt) was not found" in message
    assert str(nowhere / "checkpoints" / "mnist.pt") in message
    assert str(nowhere / ".cache" / "ddpm_lib" / "checkpoints" / "mnist.pt") in message
    assert f"{REPO_URL}/raw/main/checkpoints/mnist.pt" in message
    assert "DDPM_CHECKPOINTS" in message and "load_or_train('mnist')" in message


def test_a_failed_checkpoint_download_is_a_clear_error_never_none(nowhere, offline):
    # The errata page crashed on None.model when load_pretrained returned None offline.
    with pytest.raises(CheckpointNotFoundError) as info:
        load_pretrained("mnist", device="cpu")
    message = str(info.value)
    assert "failed: <urlopen error [Errno -2] Name or service not known>" in message
    assert not list((nowhere / ".cache").rglob("*.part"))  # no half-downloaded file


def test_the_fallback_downloads_the_recipes_data_when_the_checkpoint_cannot_be_had(
    nowhere, offline, monkeypatch
):
    seen = {}

    class Stop(Exception):
        pass

    def capture(config, device=None):
        seen["config"] = config
        raise Stop

    monkeypatch.setattr(pretrained, "Trainer", capture)
    with pytest.raises(Stop):
        load_or_train("mnist", device="cpu")
    assert seen["config"].download is True and seen["config"].dataset == "mnist"


def test_without_checkpoint_and_data_the_fallback_says_how_to_provide_either(
    nowhere, offline, monkeypatch
):
    def no_data(config):
        raise DatasetNotFoundError("The MNIST test split was not found. Files needed: ...")

    monkeypatch.setattr("ddpm_lib.training.trainer.load_training_data", no_data)
    with pytest.raises(CheckpointNotFoundError) as info:
        load_or_train("mnist", device="cpu")
    message = str(info.value)
    assert "'mnist' (mnist.pt) was not found" in message and "Downloading" in message
    assert "needs its data" in message and "MNIST test split was not found" in message


def test_a_full_fallback_says_how_long_and_where_then_trains_in_the_cache(
    nowhere, monkeypatch, capsys
):
    monkeypatch.setenv("DDPM_QUICK", "0")
    monkeypatch.setattr(pretrained, "recipe", tiny_toy_recipe(20))
    pre = load_or_train("toy_gmm", device="cpu", download=False, progress=False)
    out = capsys.readouterr().out
    run = nowhere / ".cache" / "ddpm_lib" / "runs" / "toy_gmm"
    assert "no checkpoint 'toy_gmm' (not found, download=False)" in out
    assert "up to 20 steps or 8 min of training, whichever comes first" in out
    assert f"checkpoints go to {run}" in out
    assert re.search(r"measured \d+\.\d+ s per step on this device: about \d+ s to go", out)
    assert (run / "last.pt").is_file() and pre.card["steps"] == 20
    assert not (nowhere / "runs").exists()  # nothing lands in the working directory


def test_a_finished_fallback_run_is_reused_not_trained_again(nowhere, monkeypatch, capsys):
    monkeypatch.setenv("DDPM_QUICK", "0")
    monkeypatch.setattr(pretrained, "recipe", tiny_toy_recipe(20))
    first = load_or_train("toy_gmm", device="cpu", download=False, progress=False)
    capsys.readouterr()

    def no_training(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(pretrained.Trainer, "run", no_training)
    again = load_or_train("toy_gmm", device="cpu", download=False, progress=False)
    assert "using the run trained earlier" in capsys.readouterr().out
    for a, b in zip(first.model.parameters(), again.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_an_unfinished_fallback_run_is_continued_from_its_step(nowhere, monkeypatch, capsys):
    monkeypatch.setenv("DDPM_QUICK", "0")
    monkeypatch.setattr(pretrained, "recipe", tiny_toy_recipe(20))
    load_or_train("toy_gmm", device="cpu", download=False, progress=False)
    monkeypatch.setattr(pretrained, "recipe", tiny_toy_recipe(30))  # as if stopped at 20 of 30
    capsys.readouterr()
    pre = load_or_train("toy_gmm", device="cpu", download=False, progress=False)
    assert "continuing" in capsys.readouterr().out and pre.card["steps"] == 30


def test_the_fallback_saves_at_least_each_minute():
    class FakeTrainer:
        step, train_seconds, saves = 0, 0.0, 0
        config = RECIPES["toy_gmm"]

        def save(self):
            self.saves += 1

    trainer = FakeTrainer()
    progress = pretrained._Progress(trainer, limit_s=60.0, save=True, every_s=0.0)
    progress.last_save -= 1.0  # a second has passed since the last save
    trainer.step = 1
    progress(trainer)
    assert trainer.saves == 1


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


def test_a_downloaded_checkpoint_lands_in_the_cache_and_loads(nowhere, monkeypatch, capsys):
    shipped = ROOT / "checkpoints" / "toy_gmm.pt"
    monkeypatch.setattr(pretrained, "checkpoint_url", lambda name: shipped.as_uri())
    pre = load_pretrained("toy_gmm", device="cpu")
    cached = nowhere / ".cache" / "ddpm_lib" / "checkpoints" / "toy_gmm.pt"
    assert pre.source == str(cached) and cached.read_bytes() == shipped.read_bytes()
    assert f"downloaded {shipped.as_uri()} to {cached}" in capsys.readouterr().out
