"""Chapter 8: training a class-conditional model with label dropout, its checkpoint and CLI."""

from __future__ import annotations

import math

import pytest
import torch

from ddpm_lib.cli import main
from ddpm_lib.mixture import labelled_gmm
from ddpm_lib.nets import ToyMLP, ToyMLPConfig
from ddpm_lib.training import TrainConfig, Trainer
from ddpm_lib.training.checkpoint import export_release, load_model
from helpers import mc_tolerance


def labelled_points(n: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    return labelled_gmm().sample_labelled(n, torch.Generator().manual_seed(0))


def cond_config(tmp_path, **kw) -> TrainConfig:
    base = dict(
        dataset="gmm",
        model={"type": "mlp", "hidden": 64},
        class_cond=True,
        label_dropout=0.2,
        num_timesteps=100,
        steps=300,
        batch_size=128,
        lr=2e-3,
        log_every=50,
        save_every=300,
        out_dir=str(tmp_path / "run"),
    )
    base.update(kw)
    return TrainConfig(**base)


class LabelRecorder(ToyMLP):
    """A conditional MLP that keeps every label batch it is given."""

    def __init__(self) -> None:
        super().__init__(ToyMLPConfig(hidden=8, num_classes=4))
        self.seen: list[torch.Tensor] = []

    def forward(self, x, t, y=None):
        self.seen.append(y.detach().clone())
        return super().forward(x, t, y)


def test_labels_are_dropped_to_the_null_label_at_the_configured_rate(tmp_path):
    """Each label becomes ∅ independently with probability p: the share of ∅ over n labels is
    within 5 binomial standard errors √(p(1-p)/n) of p, and no other label is changed."""
    x, y = labelled_points()
    model, p = LabelRecorder(), 0.25
    cfg = cond_config(tmp_path, label_dropout=p, steps=100, batch_size=256, save_every=100)
    Trainer(cfg, model=model, data=x, labels=y).run(progress=False)
    seen = torch.cat(model.seen)
    n = len(seen)
    share = (seen == 4).float().mean().item()
    assert abs(share - p) < mc_tolerance(math.sqrt(p * (1 - p)), n)
    assert seen.min() >= 0 and seen.max() <= 4


def test_a_tiny_conditional_training_run_lowers_the_loss(tmp_path):
    """eq-ch8-cond-loss, with labels dropped at rate 0.2, falls on the labelled mixture."""
    x, y = labelled_points()
    trainer = Trainer(cond_config(tmp_path), data=x, labels=y)
    history = trainer.run(progress=False)
    assert trainer.model.config.num_classes == 4
    assert history["loss"][-1] < 0.8 * history["loss"][0]


def test_a_conditional_checkpoint_round_trips_with_its_label_embedding(tmp_path):
    x, y = labelled_points()
    trainer = Trainer(cond_config(tmp_path, steps=20, save_every=20), data=x, labels=y)
    trainer.run(progress=False)
    for path in (trainer.last_checkpoint, tmp_path / "release.pt"):
        if path.name == "release.pt":
            export_release(trainer.last_checkpoint, path, half=False)
        model, ckpt = load_model(path)
        assert ckpt["config"]["class_cond"] and ckpt["config"]["label_dropout"] == 0.2
        assert torch.equal(model.label_emb.weight, trainer.ema.label_emb.weight)
        xs, ts, ys = x[:8], torch.arange(8), y[:8]
        assert torch.equal(model(xs, ts, ys), trainer.ema(xs, ts, ys))


def test_class_cond_on_unlabelled_toy_data_says_it_needs_labels(tmp_path):
    with pytest.raises(ValueError, match="needs labelled data"):
        Trainer(cond_config(tmp_path))


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5])
def test_a_label_dropout_rate_outside_zero_one_is_refused(tmp_path, rate):
    with pytest.raises(ValueError, match=r"label_dropout is a rate in \[0, 1\)"):
        cond_config(tmp_path, label_dropout=rate).validate()


def test_labels_beyond_the_networks_classes_are_refused(tmp_path):
    x, y = labelled_points()
    model = ToyMLP(ToyMLPConfig(num_classes=3))
    with pytest.raises(ValueError, match="num_classes=3"):
        Trainer(cond_config(tmp_path), model=model, data=x, labels=y)


# ----------------------------------------------------------------------------- command line


@pytest.fixture
def image_runs(tmp_path):
    """A 2-step class-conditional and unconditional Fashion-MNIST run of a tiny UNet."""
    runs = {}
    for name, extra in (("cond", ["--class-cond", "--label-dropout", "0.1"]), ("uncond", [])):
        out = tmp_path / name
        args = ["train", "--dataset", "fashion_mnist", "--ch", "16", "--ch-mult", "1,2"]
        args += ["--num-res-blocks", "1", "--attn-resolutions", "", "--num-groups", "8"]
        args += ["--num-timesteps", "20", "--steps", "2", "--batch-size", "4"]
        args += ["--out-dir", str(out), "--no-progress", *extra]
        assert main(args) == 0
        runs[name] = out / "last.pt"
    return runs


def test_sample_draws_a_chosen_class_with_guidance(image_runs, tmp_path, capsys):
    out = tmp_path / "s.png"
    args = ["sample", "--checkpoint", str(image_runs["cond"]), "--sampler", "ddim"]
    args += ["--steps", "5", "--n", "4", "--label", "7", "--guidance", "2", "--out", str(out)]
    assert main([*args, "--no-progress"]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert "of class 7 (guidance w = 2)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("run", "extra", "message"),
    [
        ("cond", ["--label", "10"], "--label must be a class in 0..9, got 10"),
        ("cond", ["--label", "-1"], "--label must be a class in 0..9, got -1"),
        ("cond", ["--label", "3", "--guidance", "-1"], "--guidance must be a finite weight"),
        ("cond", ["--guidance", "2"], "give the class with --label"),
        ("uncond", ["--label", "3"], "unconditional model"),
    ],
)
def test_bad_guidance_on_the_command_line_is_a_usage_error(
    image_runs, tmp_path, capsys, run, extra, message
):
    args = ["sample", "--checkpoint", str(image_runs[run]), "--out", str(tmp_path / "s.png")]
    with pytest.raises(SystemExit) as info:
        main([*args, *extra, "--no-progress"])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_negative_label_dropout_on_the_command_line_is_refused(tmp_path, capsys):
    args = ["train", "--dataset", "fashion_mnist", "--class-cond", "--label-dropout", "-0.2"]
    with pytest.raises(SystemExit) as info:
        main([*args, "--out-dir", str(tmp_path / "r"), "--no-progress"])
    assert info.value.code == 2
    assert "label_dropout is a rate in [0, 1), got -0.2" in capsys.readouterr().err


def test_evaluate_guidance_on_an_unconditional_checkpoint_says_so(image_runs, capsys):
    args = ["evaluate", "--checkpoint", str(image_runs["uncond"]), "--guidance", "0,1"]
    assert main([*args, "--n", "20", "--no-progress"]) == 1
    assert "needs a class-conditional model" in capsys.readouterr().err


def test_evaluate_guidance_reports_accuracy_and_fd_per_weight(image_runs, tmp_path):
    """A guided step costs two network calls: DDIM-2 is 2 calls at w = 0 and 4 at w = 1."""
    import json

    out = tmp_path / "g.json"
    args = ["evaluate", "--checkpoint", str(image_runs["cond"]), "--guidance", "0,1"]
    args += ["--n", "20", "--samplers", "ddim-2", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    rows = json.loads(out.read_text())["weights"]
    assert [rows[w]["network_evaluations"] for w in ("0.0", "1.0")] == [2, 4]
    for r in rows.values():
        assert 0 <= r["accuracy"] <= 1 and len(r["accuracy_by_class"]) == 10 and r["fd"] > 0
