"""Flow matching in the trainer and on the command line (Chapter 9, library part)."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from ddpm_lib.cli import main
from ddpm_lib.flow import FlowMatching, LinearPath, mixture_velocity
from ddpm_lib.mixture import default_gmm
from ddpm_lib.training import TrainConfig, Trainer, diffusion_for
from ddpm_lib.training.checkpoint import load_model


def flow_config(tmp_path, **kw) -> TrainConfig:
    base = dict(
        dataset="moons",
        toy_size=2048,
        model={"type": "mlp", "hidden": 64},
        objective="flow",
        num_timesteps=1000,
        steps=300,
        batch_size=128,
        lr=2e-3,
        log_every=50,
        save_every=300,
        out_dir=str(tmp_path / "run"),
    )
    base.update(kw)
    return TrainConfig(**base)


def test_a_flow_config_gives_flow_matching_on_the_linear_path():
    process = diffusion_for(TrainConfig(objective="flow"))
    assert isinstance(process, FlowMatching) and isinstance(process.path, LinearPath)
    assert process.time_scale == 1000


def test_the_flow_loss_calls_the_network_with_stretched_time():
    seen = []

    def model(x, t):
        seen.append(t)
        return torch.zeros_like(x)

    FlowMatching(time_scale=1000).training_loss(model, torch.zeros(4, 2))
    assert seen[0].min() >= 0 and seen[0].max() <= 1000 and seen[0].max() > 1


def test_a_tiny_flow_matching_run_closes_most_of_the_gap_to_the_exact_velocity(tmp_path):
    """The loss has a floor (the conditional velocity's own variance), reached by the exact
    marginal velocity of the mixture: on fixed draws, 400 steps close at least half of the gap
    between the untrained network and that floor."""
    mixture = default_gmm()
    cfg = flow_config(
        tmp_path, dataset="gmm", toy_size=4096, steps=400, batch_size=256, lr=3e-3,
        ema_decay=0.0, save_every=400,
    )  # fmt: skip
    trainer = Trainer(cfg)
    gen = torch.Generator().manual_seed(1)
    x0, noise = mixture.sample(20_000, gen), torch.randn(20_000, 2, generator=gen)
    t = torch.rand(20_000, generator=gen)

    def loss(model) -> float:
        with torch.no_grad():
            return trainer.diffusion.training_loss(model, x0, t=t, noise=noise).mean().item()

    floor = loss(lambda x, s: mixture_velocity(mixture, LinearPath(), x, s / 1000))
    before = loss(copy.deepcopy(trainer.model).eval())
    trainer.run(progress=False)
    after = loss(trainer.model.eval())
    assert after - floor < 0.5 * (before - floor)


def test_a_flow_checkpoint_loads_back_as_a_flow_model(tmp_path):
    trainer = Trainer(flow_config(tmp_path, steps=20, save_every=20))
    trainer.run(progress=False)
    model, ckpt = load_model(trainer.last_checkpoint)
    process = diffusion_for(ckpt["config"])
    assert ckpt["config"]["objective"] == "flow" and isinstance(process, FlowMatching)
    x1 = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    a = process.sample(model, x1, 5, method="heun")
    b = process.sample(trainer.ema, x1, 5, method="heun")
    assert torch.equal(a, b)


@pytest.mark.parametrize("kw", [{"mean_type": "v"}, {"var_type": "learned_range"}])
def test_diffusion_settings_on_a_flow_run_are_refused(tmp_path, kw):
    with pytest.raises(ValueError, match="objective='flow'"):
        flow_config(tmp_path, **kw).validate()


@pytest.fixture
def runs(tmp_path):
    out = {}
    for name, extra in (("flow", ["--objective", "flow"]), ("ddpm", [])):
        args = ["train", "--dataset", "moons", "--num-timesteps", "50", "--steps", "20"]
        args += ["--batch-size", "32", "--save-every", "20", "--log-every", "10"]
        args += ["--out-dir", str(tmp_path / name), "--no-progress", *extra]
        assert main(args) == 0
        out[name] = tmp_path / name / "last.pt"
    return out


@pytest.mark.parametrize("sampler", ["euler", "heun", None])
def test_sample_integrates_a_flow_model(runs, tmp_path, sampler, capsys):
    args = ["sample", "--checkpoint", str(runs["flow"]), "--n", "16", "--steps", "8"]
    args += ["--out", str(tmp_path / "f.png"), "--no-progress"]
    args += ["--sampler", sampler] if sampler else []
    assert main(args) == 0
    assert f"({sampler or 'euler'}, 8 steps)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("run", "sampler", "message"),
    [
        ("flow", "ddpm", "is a flow-matching model"),
        ("flow", "ddim", "is a flow-matching model"),
        ("ddpm", "euler", "is a diffusion model: use --sampler ddim"),
    ],
)
def test_a_sampler_of_the_other_objective_is_a_usage_error(
    runs, tmp_path, capsys, run, sampler, message
):
    args = ["sample", "--checkpoint", str(runs[run]), "--sampler", sampler]
    with pytest.raises(SystemExit) as info:
        main([*args, "--out", str(tmp_path / "x.png"), "--no-progress"])
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_evaluate_measures_a_flow_model_by_its_ode_and_refuses_diffusion_samplers(
    runs, tmp_path, capsys
):
    assert main(["evaluate", "--checkpoint", str(runs["flow"]), "--n", "8", "--no-progress"]) == 1
    assert "evaluate it with its ODE" in capsys.readouterr().err
    out = tmp_path / "flow.json"
    args = ["evaluate", "--checkpoint", str(runs["flow"]), "--n", "8", "--samplers"]
    assert main([*args, "euler-4,heun-2", "--out", str(out), "--no-progress"]) == 0
    result = json.loads(out.read_text())
    assert {k: v["network_evaluations"] for k, v in result["samplers"].items()} == {
        "euler-4": 4,
        "heun-2": 4,
    }
    assert "no ELBO" in result["likelihood"] and "elbo" not in result


def test_evaluate_gives_a_flow_model_its_ode_likelihood(runs, tmp_path):
    """The toy flow's log-likelihood by the same estimator as a diffusion model's, beside the
    exact log-density: finite, and in nats of the 2-D data."""
    out = tmp_path / "flow.json"
    args = ["evaluate", "--checkpoint", str(runs["flow"]), "--n", "8", "--samplers", "euler-2"]
    assert (
        main([*args, "--ode-n", "16", "--ode-steps", "4", "--out", str(out), "--no-progress"]) == 0
    )
    ode = json.loads(out.read_text())["ode_likelihood"]
    assert ode["n"] == 16 and ode["t_start"] == 0.0
    assert math.isfinite(ode["mean_log_likelihood_nats"])


def test_a_diffusion_model_is_evaluated_by_its_probability_flow_ode_too(runs, tmp_path):
    """Heun with K steps costs 2K calls, plus Tweedie's last one."""
    out = tmp_path / "ddpm.json"
    args = ["evaluate", "--checkpoint", str(runs["ddpm"]), "--n", "8", "--samplers", "heun-3"]
    assert main([*args, "--elbo-n", "0", "--out", str(out), "--no-progress"]) == 0
    assert json.loads(out.read_text())["samplers"]["heun-3"]["network_evaluations"] == 7
