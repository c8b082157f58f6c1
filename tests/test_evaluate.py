"""Specification of ddpm_lib.evaluation.evaluate and the classifier / evaluate commands."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ddpm_lib.cli import main
from ddpm_lib.data import holdout_split, load_image_dataset
from ddpm_lib.evaluation.evaluate import (
    evaluate_checkpoint,
    load_classifier,
    parse_sampler,
    real_sets,
    save_classifier,
)
from ddpm_lib.evaluation.metrics import FeatureNet, extract_features
from ddpm_lib.training.checkpoint import CheckpointError
from ddpm_lib.training.pretrained import find_checkpoint

MNIST_CONFIG = {"dataset": "mnist", "split": "test", "holdout": 1000}


@pytest.mark.parametrize(
    "text, parsed",
    [
        ("ddpm-1000", ("ddpm", 1000)),
        ("DDIM-50", ("ddim", 50)),
        (" ddim-7", ("ddim", 7)),
        ("euler-10", ("euler", 10)),
        ("heun-4", ("heun", 4)),
    ],
)
def test_sampler_names_parse_to_kind_and_steps(text, parsed):
    assert parse_sampler(text) == parsed


@pytest.mark.parametrize("text", ["ddim", "ddim-0", "ddim-x", "rk4-10", "ddpm--5"])
def test_bad_sampler_names_are_refused_with_the_format(text):
    with pytest.raises(ValueError, match="ddpm-T, ddim-K, euler-K or heun-K"):
        parse_sampler(text)


def test_held_out_images_are_the_reference_when_there_are_enough():
    sets = real_sets(MNIST_CONFIG, 500)
    data = load_image_dataset("mnist", "test").to_model_range()
    _, hold = holdout_split(len(data), 1000, seed=0)
    held = {row.numpy().tobytes() for row in data[hold].flatten(1)}
    assert sets["n"] == 500
    # every reference image is one of the 1,000 held-out digits; the floor set is disjoint
    assert all(row.numpy().tobytes() in held for row in sets["reference"].flatten(1))
    assert not any(row.numpy().tobytes() in held for row in sets["floor"].flatten(1))


def test_too_few_held_out_images_split_all_of_them_into_two_halves():
    sets = real_sets(MNIST_CONFIG, 10_000)
    assert sets["n"] == 5000
    assert sets["reference"].shape == sets["floor"].shape == (5000, 1, 28, 28)
    assert "two disjoint sets of n = 5000" in sets["note"]
    assert len(sets["heldout"]) == 1000  # the ELBO still uses only held-out digits


def test_toy_reference_and_floor_are_fresh_exact_samples():
    sets = real_sets({"dataset": "gmm"}, 300)
    assert sets["reference"].shape == sets["floor"].shape == (300, 2)
    assert not torch.equal(sets["reference"], sets["floor"]) and sets["heldout"] is None


def test_saved_classifier_loads_with_the_same_features(tmp_path):
    torch.manual_seed(0)
    net = FeatureNet().eval()
    path = save_classifier(
        net, {"test_accuracy": 0.5, "epochs": 1, "train_images": 10}, tmp_path / "c.pt"
    )
    loaded, card = load_classifier(path)
    x = torch.rand(3, 1, 28, 28) * 2 - 1
    assert torch.equal(extract_features(net, x), extract_features(loaded, x))
    assert card["test_accuracy"] == 0.5


def test_a_diffusion_checkpoint_is_not_taken_for_a_classifier():
    with pytest.raises(CheckpointError, match="not a feature classifier"):
        load_classifier(find_checkpoint("mnist"))


def test_toy_evaluation_reports_fd_floor_and_ratio_at_the_same_n():
    result = evaluate_checkpoint(
        find_checkpoint("toy_gmm"), n=200, samplers=("ddim-10",), device="cpu", progress=False
    )
    assert result["n"] == 200 and "elbo" not in result
    floor, row = result["floor"]["fd"], result["samplers"]["ddim-10"]
    assert floor > 0 and row["fd"] > 0
    assert row["fd_over_floor"] == pytest.approx(row["fd"] / floor)
    assert 0 <= row["precision"] <= 1 and 0 <= row["recall"] <= 1


@pytest.fixture
def untrained_classifier(tmp_path):
    # An untrained classifier is enough to exercise the pipeline; its figures mean nothing.
    torch.manual_seed(0)
    return save_classifier(FeatureNet().eval(), {"test_accuracy": None}, tmp_path / "clf.pt")


def test_evaluate_command_writes_json_with_fd_floor_and_elbo(tmp_path, untrained_classifier):
    clf = untrained_classifier
    out = tmp_path / "eval.json"
    args = ["evaluate", "--checkpoint", str(find_checkpoint("mnist")), "--classifier", str(clf)]
    args += ["--n", "12", "--samplers", "ddim-2", "--elbo-n", "1", "--device", "cpu"]
    args += ["--out", str(out), "--grids", str(tmp_path), "--no-progress"]
    assert main(args) == 0
    result = json.loads(out.read_text())
    assert result["n"] == 12 and result["dataset"] == "mnist"
    assert set(result["samplers"]) == {"ddim-2"} and result["floor"]["fd"] > 0
    assert len(result["elbo"]["per_t"]) == 1000 and result["elbo"]["n"] == 1
    assert "held-out" in result["elbo"]["images"]
    assert (tmp_path / "mnist_ddim-2.png").is_file()
    assert result["command"].startswith("python -m ddpm_lib evaluate --checkpoint")


@pytest.mark.parametrize("command", ["classifier", "evaluate"])
def test_metric_commands_have_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0 and "usage:" in capsys.readouterr().out


def test_evaluate_refuses_an_unknown_sampler(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--checkpoint", "x.pt", "--samplers", "ddim-50,rk4-10"])
    assert exc.value.code == 2 and "ddpm-T, ddim-K, euler-K" in capsys.readouterr().err


def test_evaluate_without_a_classifier_says_how_to_train_one(tmp_path, monkeypatch, capsys):
    from ddpm_lib.evaluation import evaluate

    def offline(name):
        raise OSError("offline")

    monkeypatch.setattr(evaluate, "shipped_classifier_candidates", lambda d: [tmp_path / "no.pt"])
    monkeypatch.setattr(evaluate, "download_checkpoint", offline)
    args = ["evaluate", "--checkpoint", str(find_checkpoint("mnist")), "--n", "4"]
    assert main(args + ["--device", "cpu", "--no-progress"]) == 1
    assert "python -m ddpm_lib classifier --dataset mnist" in capsys.readouterr().err


def test_classifier_command_refuses_toy_data(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["classifier", "--dataset", "moons"])
    assert exc.value.code == 2 and "2-D coordinates" in capsys.readouterr().err


@pytest.mark.parametrize(
    "sampler, message", [("ddpm-50", "all T = 1000"), ("ddim-2000", "at most T")]
)
def test_step_counts_the_schedule_cannot_run_are_refused(sampler, message):
    with pytest.raises(ValueError, match=message):
        evaluate_checkpoint(find_checkpoint("toy_gmm"), n=10, samplers=(sampler,), device="cpu")


def test_committed_results_table_is_what_the_committed_json_says():
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "quality_table.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_toy_ode_likelihood_is_reported_beside_the_exact_density():
    result = evaluate_checkpoint(
        find_checkpoint("toy_gmm"), n=10, samplers=(), device="cpu", progress=False,
        ode_n=20, ode_steps=4,
    )  # fmt: skip
    ode = result["ode_likelihood"]
    assert ode["n"] == 20 and math.isfinite(ode["mean_log_likelihood_nats"])
    diff = ode["mean_log_likelihood_nats"] - ode["exact_mean_log_density_nats"]
    assert ode["mean_difference_nats"] == pytest.approx(diff)


def test_image_ode_likelihood_is_in_bits_per_dim_on_held_out_images(untrained_classifier):
    result = evaluate_checkpoint(
        find_checkpoint("mnist"), n=4, samplers=(), elbo_n=0, device="cpu", progress=False,
        classifier=untrained_classifier, ode_n=1, ode_steps=2,
    )  # fmt: skip
    ode = result["ode_likelihood"]
    # two ODE steps are far too few for an accurate value; the test checks the plumbing
    assert ode["n"] == 1 and math.isfinite(ode["bits_per_dim"])
    assert "held-out" in ode["images"] and ode["t_start"] == 1e-3
