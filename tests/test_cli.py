"""Specification of the command line: python -m ddpm_lib train | sample | export."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ddpm_lib import __version__, cli
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
        (["train", "--steps", "many"], "must be a positive integer"),
        (["train", "--schedule", "quadratic"], "invalid choice"),
        (["train", "--ch-mult", "1,x"], "integers separated by commas"),
        (["sample"], "--checkpoint"),
        (["sample", "--checkpoint", "c.pt", "--sampler", "rk4"], "invalid choice"),
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


# ----------------------------------------------------------------------------- help


COMMANDS = ["train", "sample", "export", "classifier", "evaluate"]
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_help_shows_its_defaults_and_an_example(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    assert "default" in out and "example" in out and f"python -m ddpm_lib {command} --" in out


def test_train_help_warns_that_the_default_network_takes_hours_on_a_cpu(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "default 10000" in out and "4-14 hours" in out and "--preset mnist_small" in out


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_has_help_text(command):
    parser = build_parser().commands[command]
    assert all(a.help for a in parser._actions), [a.dest for a in parser._actions if not a.help]


def test_version_flag_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"ddpm_lib {__version__}"


# ----------------------------------------------------------------------------- usage errors


@pytest.mark.parametrize("args", [["train", "--steps", "1e3"], ["sample", "--n", "1e3"]])
def test_a_non_integer_count_is_answered_must_be_a_positive_integer(args, capsys):
    with pytest.raises(SystemExit):
        main(args)
    err = capsys.readouterr().err
    assert "must be a positive integer" in err and "'1e3'" in err and "_positive_int" not in err


def test_a_usage_error_puts_the_useful_line_first(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--dataset", "fashion"])
    lines = capsys.readouterr().err.splitlines()
    assert exc.value.code == 2 and len(lines) <= 2
    assert lines[0].startswith("python -m ddpm_lib train: error: argument --dataset: unknown")


def test_errors_found_after_parsing_name_the_subcommand(toy_run, capsys):
    with pytest.raises(SystemExit):
        main(["sample", "--checkpoint", str(toy_run), "--steps", "10"])
    assert capsys.readouterr().err.startswith("python -m ddpm_lib sample: error: --sampler ddpm")


def test_export_refuses_an_output_that_is_not_a_pt_file(toy_run, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["export", "--checkpoint", str(toy_run), "--out", str(tmp_path / "fm.png")])
    assert "--out must be a .pt file" in capsys.readouterr().err
    assert not (tmp_path / "fm.png").exists()


def test_a_missing_gpu_is_a_usage_error_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        main(["train", "--dataset", "moons", "--device", "cuda", "--out-dir", str(out)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "--device cuda" in err and "not available" in err
    assert "Traceback" not in err and not out.exists()


def test_sample_output_under_a_file_is_refused_before_sampling(toy_run, monkeypatch, capsys):
    def never(*args, **kwargs):
        raise AssertionError("sampled before checking --out")

    monkeypatch.setattr(cli, "ddpm_sample", never)
    with pytest.raises(SystemExit) as exc:
        main(["sample", "--checkpoint", str(toy_run), "--out", str(toy_run / "g.png")])
    assert exc.value.code == 2 and f"{toy_run} is a file, not a folder" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["text", "png"])
def test_sample_of_a_file_that_is_not_a_checkpoint_says_so(tmp_path, kind, capsys):
    path = tmp_path / f"notes.{kind}"
    path.write_bytes(b"my notes\n" if kind == "text" else b"\x89PNG\r\n\x1a\n" + bytes(32))
    assert main(["sample", "--checkpoint", str(path), "--out", str(tmp_path / "g.png")]) == 1
    err = capsys.readouterr().err
    assert f"{path} is not a ddpm_lib checkpoint" in err and "weights_only" not in err


def test_sample_of_a_classifier_says_it_is_not_a_diffusion_model(tmp_path, capsys):
    path = ROOT / "checkpoints" / "classifier_mnist.pt"
    assert main(["sample", "--checkpoint", str(path), "--out", str(tmp_path / "g.png")]) == 1
    assert "is a feature classifier" in capsys.readouterr().err


# ----------------------------------------------------------------------------- Ctrl-C


def _interrupt_at(monkeypatch, step):
    """Make training raise KeyboardInterrupt (as Ctrl-C does) in its ``step``-th step."""
    from ddpm_lib.training import Trainer

    original = Trainer.train_step

    def train_step(self):
        if self.step + 1 == step:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(Trainer, "train_step", train_step)


TOY = ["train", "--dataset", "moons", "--num-timesteps", "50", "--batch-size", "16"]


def test_ctrl_c_before_the_first_save_says_no_checkpoint_exists(tmp_path, monkeypatch, capsys):
    _interrupt_at(monkeypatch, 3)
    args = [*TOY, "--steps", "30", "--save-every", "10", "--out-dir", str(tmp_path)]
    assert main([*args, "--no-progress"]) == 130
    err = capsys.readouterr().err
    assert "interrupted at step 2; no checkpoint of this run was written yet" in err
    assert "kept" not in err and not (tmp_path / "last.pt").exists()


def test_ctrl_c_after_a_save_names_the_checkpoint_and_the_resume_command(
    tmp_path, monkeypatch, capsys
):
    _interrupt_at(monkeypatch, 14)
    args = [*TOY, "--steps", "30", "--save-every", "10", "--out-dir", str(tmp_path)]
    assert main([*args, "--no-progress"]) == 130
    err = capsys.readouterr().err
    last = tmp_path / "last.pt"
    assert f"the last checkpoint is {last} (step 10; the 3 steps after it are lost)" in err
    command = f"python -m ddpm_lib train --resume {last} --steps 30"
    assert command in err
    monkeypatch.undo()
    assert main([*command.split()[3:], "--no-progress"]) == 0
    assert load_checkpoint(last)["step"] == 30


def test_ctrl_c_during_sample_says_no_samples_were_written(toy_run, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "ddpm_sample", interrupted)
    out = toy_run.parent / "g.png"
    assert main(["sample", "--checkpoint", str(toy_run), "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert "no samples were written" in err and "checkpoint" not in err


# ----------------------------------------------------------------------------- resume


def test_resume_to_a_step_count_already_reached_says_so(toy_run, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--resume", str(toy_run), "--steps", "20"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "already at step 30" in err and "--steps above 30" in err


def test_resume_may_point_at_another_data_root(toy_run, tmp_path):
    args = ["train", "--resume", str(toy_run), "--steps", "31", "--no-progress"]
    assert main([*args, "--data-root", str(tmp_path)]) == 0
    assert load_checkpoint(toy_run)["config"]["data_root"] == str(tmp_path)


def test_resuming_a_release_checkpoint_fine_tunes_from_its_weights(
    toy_run, tmp_path, monkeypatch, capsys
):
    release = tmp_path / "shipped" / "toy.pt"
    assert main(["export", "--checkpoint", str(toy_run), "--out", str(release)]) == 0
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--resume", str(release), "--steps", "35", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"fine-tuning {release}" in out and "fresh AdamW optimizer" in out
    tuned = load_checkpoint(tmp_path / "runs" / "toy_finetuned" / "last.pt")
    assert tuned["step"] == 35 and tuned["optimizer"] is not None
    assert not (release.parent / "last.pt").exists()  # nothing written among shipped files


# ----------------------------------------------------------------------------- data, evaluate


def test_dataset_advice_gives_command_line_flags_not_python_calls(tmp_path, capsys):
    empty = str(tmp_path / "empty")
    assert main(["train", "--dataset", "mnist", "--data-root", empty, "--steps", "1"]) == 1
    err = capsys.readouterr().err
    assert "--split test --holdout 1000" in err and "add --download" in err
    assert "holdout_split(" not in err and "download=True" not in err


@pytest.mark.parametrize("command", ["classifier", "evaluate"])
def test_commands_that_read_a_dataset_accept_download(command):
    required = ["--dataset", "mnist"] if command == "classifier" else ["--checkpoint", "c.pt"]
    args = build_parser().parse_args([command, *required, "--download"])
    assert args.download is True


def test_evaluate_outside_the_repository_finds_the_shipped_classifier(tmp_path, monkeypatch):
    from ddpm_lib.evaluation.evaluate import find_classifier

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("DDPM_CHECKPOINTS", raising=False)
    found = find_classifier("fashion_mnist", download=False)
    assert found.resolve() == ROOT / "checkpoints" / "classifier_fashion_mnist.pt"


def test_a_missing_classifier_says_where_it_looked_and_what_to_do(tmp_path, monkeypatch):
    from ddpm_lib.evaluation import evaluate

    monkeypatch.setattr(evaluate, "shipped_classifier_candidates", lambda d: [tmp_path / "c.pt"])

    def offline(name):
        raise OSError("no network")

    monkeypatch.setattr(evaluate, "download_checkpoint", offline)
    with pytest.raises(FileNotFoundError) as exc:
        evaluate.find_classifier("mnist")
    message = str(exc.value)
    assert str(tmp_path / "c.pt") in message and "download failed (no network)" in message
    assert "$DDPM_CHECKPOINTS" in message and "--classifier" in message


def test_evaluate_fills_the_model_card_of_a_training_checkpoint(toy_run):
    from ddpm_lib.evaluation.evaluate import evaluate_checkpoint

    result = evaluate_checkpoint(toy_run, n=8, samplers=("ddim-2",), elbo_n=0, progress=False)
    card = result["model_card"]
    assert card["steps"] == 30 and card["batch_size"] == 32 and card["device"] == "cpu"


def test_a_cpu_run_of_an_hour_or_more_is_warned_about():
    assert cli.estimate_message(2.0, 10_000).startswith("warning: on this CPU a step takes 2 s")
    assert "5.6 hours" in cli.estimate_message(2.0, 10_000)
    assert not cli.estimate_message(0.01, 1000).startswith("warning")
