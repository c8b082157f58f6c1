"""Specification of the command line: python -m ddpm_lib train | sample | export."""

import dataclasses
import subprocess
import sys

import pytest

from ddpm_lib.cli import build_parser, main
from ddpm_lib.nets import MODEL_TYPES
from ddpm_lib.training import RECIPES, RESUMABLE
from ddpm_lib.training.checkpoint import CheckpointError, load_checkpoint
from ddpm_lib.training.config import fields as config_fields


@pytest.mark.parametrize("command", [[], ["train"], ["sample"], ["export"]])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*command, "--help"])
    assert exc.value.code == 0
    assert "usage: python -m ddpm_lib" in capsys.readouterr().out


def test_module_entry_point_runs():
    out = subprocess.run(
        [sys.executable, "-m", "ddpm_lib", "--help"], capture_output=True, text=True, check=True
    )
    assert "train" in out.stdout and "sample" in out.stdout


@pytest.fixture
def toy_run(tmp_path):
    args = ["train", "--dataset", "moons", "--num-timesteps", "50", "--steps", "30"]
    args += ["--batch-size", "32", "--save-every", "30", "--log-every", "10"]
    args += ["--out-dir", str(tmp_path / "run"), "--no-progress"]
    assert main(args) == 0
    return tmp_path / "run" / "last.pt"


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_train_then_sample_writes_a_png(toy_run, tmp_path, sampler):
    out = tmp_path / f"{sampler}.png"
    args = ["sample", "--checkpoint", str(toy_run), "--sampler", sampler, "--n", "16"]
    args += ["--out", str(out), "--no-progress"]
    if sampler == "ddim":
        args += ["--steps", "10"]
    assert main(args) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_image_model_samples_an_image_grid(tmp_path):
    ckpt = tmp_path / "img" / "last.pt"
    args = ["train", "--dataset", "fashion_mnist", "--ch", "16", "--ch-mult", "1,2"]
    args += ["--num-res-blocks", "1", "--attn-resolutions", "", "--num-groups", "8"]
    args += ["--num-timesteps", "20", "--steps", "2"]
    args += ["--batch-size", "4", "--out-dir", str(ckpt.parent), "--no-progress"]
    assert main(args) == 0
    out = tmp_path / "grid.png"
    args = ["sample", "--checkpoint", str(ckpt), "--n", "4", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    from matplotlib.image import imread

    assert imread(out).ndim == 2  # one grayscale grid of 4 digits


def test_export_writes_a_release_checkpoint(toy_run, tmp_path, capsys):
    out = tmp_path / "release.pt"
    assert main(["export", "--checkpoint", str(toy_run), "--out", str(out)]) == 0
    assert out.exists() and "MiB" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--dataset", "imagenet"], "unknown dataset"),
        (["train", "--steps", "0"], "steps must be positive"),
        (["train", "--lr", "-1"], "lr must be a positive number"),
        (["train", "--model", "mlp", "--ch", "8"], "--ch is not a setting of model type 'mlp'"),
        (["train", "--recipe", "imagenet"], "invalid choice"),
        (["train", "--steps", "many"], "invalid"),
        (["train", "--schedule", "quadratic"], "invalid choice"),
        (["train", "--ch-mult", "1,x"], "integers separated by commas"),
        (["sample"], "--checkpoint"),
        (["sample", "--checkpoint", "c.pt", "--sampler", "euler"], "invalid choice"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_arguments_exit_with_a_usage_error(args, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_sample_output_must_be_png(toy_run, capsys):
    with pytest.raises(SystemExit):
        main(["sample", "--checkpoint", str(toy_run), "--out", "grid.jpg"])
    assert "must be a .png" in capsys.readouterr().err


def test_ddpm_sampler_refuses_a_step_count_other_than_T(toy_run, capsys):
    with pytest.raises(SystemExit):
        main(["sample", "--checkpoint", str(toy_run), "--steps", "10", "--out", "x.png"])
    assert "use ddim for fewer" in capsys.readouterr().err


def test_ddim_steps_beyond_T_are_refused(toy_run, capsys):
    with pytest.raises(SystemExit):
        main(["sample", "--checkpoint", str(toy_run), "--sampler", "ddim", "--steps", "51"])
    assert "at most T = 50" in capsys.readouterr().err


def test_resume_refuses_to_change_what_is_trained(toy_run, capsys):
    with pytest.raises(SystemExit):
        main(["train", "--resume", str(toy_run), "--dataset", "swiss_roll"])
    err = capsys.readouterr().err
    assert "only --data-root, --download, --steps" in err and "(got dataset)" in err


def test_resume_continues_to_more_steps(toy_run, capsys):
    assert main(["train", "--resume", str(toy_run), "--steps", "40", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "resuming" in out and "done at step 40" in out


def test_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    code = main(["sample", "--checkpoint", str(tmp_path / "none.pt"), "--out", "x.png"])
    assert code == 1
    assert "does not exist" in capsys.readouterr().err


def test_missing_dataset_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path))
    code = main(["train", "--dataset", "cifar10", "--data-root", str(tmp_path), "--steps", "1"])
    assert code == 1
    err = capsys.readouterr().err
    assert "data_batch_1" in err and str(tmp_path) in err


def test_cuda_graph_flag_reaches_the_training_config(tmp_path):
    # On a CPU the graphed step runs eagerly; the flag must still be recorded in the checkpoint.
    args = ["train", "--dataset", "moons", "--num-timesteps", "50", "--steps", "4"]
    args += ["--batch-size", "16", "--cuda-graph", "--out-dir", str(tmp_path), "--no-progress"]
    assert main(args) == 0
    assert load_checkpoint(tmp_path / "last.pt")["config"]["cuda_graph"] is True


def _train_parser():
    parser = build_parser()
    return next(a for a in parser._subparsers._group_actions[0].choices.items() if a[0] == "train")[
        1
    ]


def test_every_training_setting_has_a_flag_with_its_help_from_train_config():
    flags = {a.dest: a for a in _train_parser()._actions}
    for name, f in config_fields().items():
        if name == "model":
            continue  # given as --model, --preset and the network's own settings
        assert name in flags, f"TrainConfig.{name} has no --{name.replace('_', '-')} flag"
        assert flags[name].help.startswith(f.metadata["help"])


def test_every_network_setting_has_a_flag():
    flags = {a.dest for a in _train_parser()._actions}
    for _, config_cls, _ in MODEL_TYPES.values():
        for f in dataclasses.fields(config_cls):
            assert f.name in flags, f"{config_cls.__name__}.{f.name} has no flag"


def test_weight_decay_flag_reaches_the_training_config(tmp_path):
    args = ["train", "--dataset", "moons", "--num-timesteps", "10", "--steps", "2"]
    args += ["--weight-decay", "0.05", "--out-dir", str(tmp_path), "--no-progress"]
    assert main(args) == 0
    assert load_checkpoint(tmp_path / "last.pt")["config"]["weight_decay"] == 0.05


def test_recipe_flag_starts_from_the_recipe_and_flags_override_it(tmp_path):
    args = ["train", "--recipe", "toy_gmm", "--steps", "2", "--num-timesteps", "10"]
    args += ["--out-dir", str(tmp_path), "--no-progress"]
    assert main(args) == 0
    config = load_checkpoint(tmp_path / "last.pt")["config"]
    recipe = RECIPES["toy_gmm"]
    assert config["lr"] == recipe.lr and config["toy_size"] == recipe.toy_size
    assert config["steps"] == 2 and config["num_timesteps"] == 10


def test_resume_may_turn_a_fast_path_option_off(toy_run):
    assert main(["train", "--resume", str(toy_run), "--steps", "32", "--no-bf16"]) == 0
    assert load_checkpoint(toy_run)["config"]["bf16"] is False


def test_resume_and_the_trainer_follow_one_rule(toy_run):
    # The CLI refuses exactly the settings that Trainer.from_checkpoint refuses.
    from ddpm_lib.training import Trainer

    with pytest.raises(CheckpointError, match="only data_root, download, steps"):
        Trainer.from_checkpoint(toy_run, lr=1e-2)
    assert set(RESUMABLE) == {n for n, f in config_fields().items() if f.metadata["resumable"]}
