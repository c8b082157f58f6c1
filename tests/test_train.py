"""Specification of ddpm_lib.training: training, EMA, NaN handling, exact resume (Chapter 4)."""

import copy
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ddpm_lib.diffusion import GaussianDiffusion
from ddpm_lib.nets import build_model
from ddpm_lib.schedules import linear_beta_schedule
from ddpm_lib.training import NonFiniteLossError, TrainConfig, Trainer
from ddpm_lib.training.checkpoint import CheckpointError, load_checkpoint
from helpers import mc_tolerance

U32 = 2.0**-24  # float32 unit roundoff

SMALL_UNET_28 = {
    "type": "unet",
    "image_size": 28,
    "in_channels": 1,
    "ch": 16,
    "ch_mult": [1, 2],
    "num_res_blocks": 1,
    "attn_resolutions": [],
    "dropout": 0.0,
    "num_groups": 8,
}


def toy_config(tmp_path, **kw):
    base = dict(
        dataset="moons",
        toy_size=512,
        model={"type": "mlp", "hidden": 32},
        num_timesteps=100,
        steps=40,
        batch_size=16,
        lr=1e-3,
        log_every=5,
        save_every=10,
        out_dir=str(tmp_path / "run"),
    )
    base.update(kw)
    return TrainConfig(**base)


def test_tiny_training_run_on_real_fashion_mnist_lowers_the_loss(tmp_path):
    cfg = TrainConfig(
        dataset="fashion_mnist",
        model=SMALL_UNET_28,
        steps=60,
        batch_size=32,
        lr=1e-3,
        log_every=20,
        save_every=60,
        out_dir=str(tmp_path / "fm"),
    )
    trainer = Trainer(cfg)
    assert tuple(trainer.data.shape) == (60_000, 1, 28, 28)
    history = trainer.run(progress=False)
    # The UNet's output layer starts at zero, so its first loss is E[ε²] = 1 (the next test
    # pins that); a batch mean of 32·784 squared normals has standard error
    # √(2/(32·784)) ≈ 0.009, so ending below 0.5 is a fall of more than 50 standard errors.
    assert history["loss"][-1] < 0.5
    assert history["loss"][-1] < history["loss"][0]


def test_first_loss_of_a_zero_initialised_unet_is_the_noise_variance(tmp_path):
    cfg = TrainConfig(dataset="fashion_mnist", model=SMALL_UNET_28, batch_size=32, steps=1)
    trainer = Trainer(cfg)
    loss = trainer.train_step().item()
    assert abs(loss - 1.0) < 5 * math.sqrt(2 / (32 * 784))


def _states_equal(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    for k in a:
        if isinstance(a[k], torch.Tensor):
            if not torch.equal(a[k], b[k]):
                return False
        elif isinstance(a[k], dict):
            if not _states_equal(a[k], b[k]):
                return False
        elif a[k] != b[k]:
            return False
    return True


def test_resume_after_a_crash_reproduces_the_uninterrupted_run(tmp_path):
    full = Trainer(toy_config(tmp_path / "a"))
    full.run(progress=False)

    class Crash(Exception):
        pass

    def crash_at_25(trainer):
        if trainer.step == 25:
            raise Crash

    crashed = Trainer(toy_config(tmp_path / "b"))
    with pytest.raises(Crash):
        crashed.run(progress=False, callback=crash_at_25)
    resumed = Trainer.from_checkpoint(tmp_path / "b" / "run" / "last.pt")
    assert resumed.step == 20
    resumed.run(progress=False)
    a, b = full.state_dict(), resumed.state_dict()
    for key in ("model", "ema", "optimizer", "rng"):
        assert _states_equal(a[key], b[key]), key
    assert a["history"] == b["history"]


def test_killed_training_process_resumes_to_the_same_state(tmp_path):
    # One BLAS/OpenMP thread: with several, a CPU matmul may split its sums differently from
    # run to run (measured here: about 1 pair of runs in 12 differed by 3e-6 in a weight, with
    # identical random states), and bitwise equality is only defined for fixed kernels.
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    common = ["--dataset", "moons", "--model", "mlp", "--num-timesteps", "100"]
    common += ["--batch-size", "32", "--save-every", "20", "--log-every", "20", "--no-progress"]
    cmd = [sys.executable, "-m", "ddpm_lib", "train", *common]
    killed_dir, clean_dir = tmp_path / "killed", tmp_path / "clean"
    proc = subprocess.Popen(
        [*cmd, "--steps", "100000", "--out-dir", str(killed_dir)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    ckpt_path = killed_dir / "last.pt"
    deadline = time.monotonic() + 120
    while not ckpt_path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    step = load_checkpoint(ckpt_path)["step"]
    assert step >= 20 and step % 20 == 0
    end = step + 40
    subprocess.run(
        [*cmd[:4], "--resume", str(ckpt_path), "--steps", str(end), "--no-progress"],
        env=env,
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [*cmd, "--steps", str(end), "--out-dir", str(clean_dir)],
        env=env,
        check=True,
        capture_output=True,
    )
    resumed, clean = load_checkpoint(ckpt_path), load_checkpoint(clean_dir / "last.pt")
    assert resumed["step"] == clean["step"] == end
    for key in ("model", "ema", "optimizer", "rng"):
        assert _states_equal(resumed[key], clean[key]), key


class NaNAfter(torch.nn.Module):
    """Wraps a model and returns NaN from its ``n``-th forward call on."""

    def __init__(self, model, n):
        super().__init__()
        self.model, self.n, self.calls = model, n, 0

    def forward(self, x, t):
        self.calls += 1
        out = self.model(x, t)
        return out * float("nan") if self.calls >= self.n else out


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = toy_config(tmp_path)
    model = NaNAfter(build_model(cfg.model), n=13)
    trainer = Trainer(cfg, model=model)
    with pytest.raises(NonFiniteLossError, match=r"nan at step 13.*last good checkpoint"):
        trainer.run(progress=False)
    kept = load_checkpoint(tmp_path / "run" / "last.pt")
    assert kept["step"] == 10
    assert all(torch.isfinite(v).all() for v in kept["model"].values())


def test_resuming_with_a_different_model_is_rejected(tmp_path):
    Trainer(toy_config(tmp_path, steps=10)).run(progress=False)
    with pytest.raises(CheckpointError, match=r"config does not match.*model"):
        Trainer.from_checkpoint(tmp_path / "run" / "last.pt", model={"type": "mlp", "hidden": 64})


def test_data_that_does_not_fit_the_model_is_rejected():
    cfg = TrainConfig(dataset="fashion_mnist", model={"type": "unet", "preset": "cifar10"})
    with pytest.raises(ValueError, match=r"\(1, 28, 28\).*expects \(3, 32, 32\)"):
        Trainer(cfg)


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"steps": 0}, "steps must be positive"),
        ({"lr": -1.0}, "lr must be a positive"),
        ({"ema_decay": 1.0}, r"ema_decay must lie in \[0, 1\)"),
        ({"dataset": "imagenet"}, "unknown dataset"),
        ({"mean_type": "score"}, "mean_type must be one of"),
    ],
)
def test_bad_training_config_is_rejected(kw, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kw).validate()


def test_ema_decay_warms_up_to_its_configured_value(tmp_path):
    trainer = Trainer(toy_config(tmp_path, ema_decay=0.999))
    assert trainer.ema_decay() == pytest.approx(0.1)  # (1 + 0)/(10 + 0)
    trainer.step = 10**6
    assert trainer.ema_decay() == 0.999


def test_ema_follows_the_model_as_an_exponential_average(tmp_path):
    trainer = Trainer(toy_config(tmp_path, ema_decay=0.5))
    before = [p.detach().clone() for p in trainer.ema.parameters()]
    trainer.train_step()  # step 0: decay min(0.5, 1/10) = 0.1
    for e0, e1, p in zip(before, trainer.ema.parameters(), trainer.model.parameters(), strict=True):
        torch.testing.assert_close(e1, 0.1 * e0 + 0.9 * p.detach())


def test_bf16_autocast_step_gives_a_finite_loss(tmp_path):
    trainer = Trainer(toy_config(tmp_path, bf16=True))
    assert torch.isfinite(trainer.train_step())


def test_mnist_training_split_offline_says_how_to_use_the_test_split(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("DDPM_DATA_ROOT", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="test split"):
        Trainer(TrainConfig(dataset="mnist", split="train"))


def test_mnist_test_split_with_holdout_trains_on_the_rest(tmp_path):
    cfg = TrainConfig(dataset="mnist", split="test", holdout=1000, model=SMALL_UNET_28, steps=1)
    trainer = Trainer(cfg)
    assert len(trainer.data) == 9000
    assert "1000 held out" in trainer.data_note


def test_time_limit_stops_early_and_saves(tmp_path):
    trainer = Trainer(toy_config(tmp_path, steps=10**6, time_limit=1e-9))
    trainer.run(progress=False)
    assert trainer.step == 1
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 1


def test_checkpoint_records_the_resolved_model_and_training_time(tmp_path):
    preset = Trainer(
        TrainConfig(dataset="fashion_mnist", model={"type": "unet", "preset": "mnist"})
    )
    assert preset.config.model["ch"] == 64 and "preset" not in preset.config.model
    cfg = TrainConfig(
        dataset="fashion_mnist", model=SMALL_UNET_28, steps=2, batch_size=2, out_dir=str(tmp_path)
    )
    trainer = Trainer(cfg)
    trainer.run(progress=False)
    state = trainer.state_dict()
    assert state["train_seconds"] > 0 and state["device_name"] == "cpu"


def test_run_writes_config_and_metrics_log(tmp_path):
    Trainer(toy_config(tmp_path, steps=10)).run(progress=False)
    run = Path(tmp_path / "run")
    assert (run / "config.json").exists()
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2  # logged at steps 5 and 10


# Algorithm 1 (alg-ch4-training) and its loss L_simple (eq-ch7-lsimple) --------------------------
def smooth_eps(x, t):
    """A made-up ε-network: the identities below hold for any network."""
    return 0.5 * torch.tanh(x) + 0.01 * t.to(x.dtype).reshape(-1, *[1] * (x.ndim - 1)).sqrt()


def float32_mse_tolerance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Bound on the error of mean((a - b)²) per example when a, b are cast to float32 first.

    With d = a - b, each element is off by ≤ u32 (2|d|(|a| + |b|) + 3d²) and the float32 sum of
    n elements adds ≤ n u32 Σ d².
    """
    diff = (a - b).flatten(1)
    n = diff.shape[1]
    per_element = 2 * diff.abs() * (a.abs() + b.abs()).flatten(1) + (3 + n) * diff**2
    return U32 * per_element.mean(1)


def test_training_loss_regresses_the_noise_at_the_closed_form_marginal():
    """eq-ch7-lsimple: the loss is ‖ε - ε_θ(√ᾱ_t x_0 + √(1-ᾱ_t) ε, t)‖², averaged over pixels.

    ᾱ_t is written from the schedule alone, everything in float64 but the loss itself, which
    the library takes in float32 (bound: float32_mse_tolerance). x_t built with ᾱ_t in place
    of √ᾱ_t gives another loss, outside the same bound (once ᾱ_t is away from 1).
    """
    betas = linear_beta_schedule(1000)
    d = GaussianDiffusion(betas)
    g = torch.Generator().manual_seed(0)
    t = torch.tensor([0, 1, 10, 100, 500, 999])
    x0 = torch.rand(len(t), 1, 4, 4, dtype=torch.float64, generator=g) * 2 - 1
    eps = torch.randn(x0.shape, dtype=torch.float64, generator=g)
    loss = d.training_loss(smooth_eps, x0, t=t, noise=eps).double()
    alpha_bar = torch.cumprod(1 - betas, 0)[t].reshape(-1, 1, 1, 1)
    x_t = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * eps
    pred = smooth_eps(x_t, t)
    want = (eps - pred).pow(2).flatten(1).mean(1)
    tol = float32_mse_tolerance(pred, eps)
    assert ((loss - want).abs() <= tol).all()
    x_t_wrong = alpha_bar * x0 + (1 - alpha_bar).sqrt() * eps
    wrong = (eps - smooth_eps(x_t_wrong, t)).pow(2).flatten(1).mean(1)
    assert ((loss - wrong).abs() > tol)[t >= 10].all()  # for the first steps ᾱ_t ≈ √ᾱ_t ≈ 1


def test_training_loss_draws_t_uniformly_and_the_noise_standard_normal():
    """alg-ch4-training lines 3-4, the expectation of eq-ch7-lsimple: t ~ U{1..T}, ε ~ N(0, I).

    A spy network records (x_t, t); with x_0 = 0, ε = x_t/√(1-ᾱ_t). Over n = 40000 draws the
    count of each of the T = 10 steps, and the mean and variance of ε, must lie within 5
    standard errors of n/T, 0 and 1.
    """
    T, n = 10, 40_000
    d = GaussianDiffusion(linear_beta_schedule(T, 0.05, 0.5))
    seen = {}

    def spy(x, t):
        seen.update(x=x, t=t)
        return torch.zeros_like(x)

    x0 = torch.zeros(n, 1, dtype=torch.float64)
    loss = d.training_loss(spy, x0, generator=torch.Generator().manual_seed(1))
    counts = torch.bincount(seen["t"], minlength=T).double()
    p = 1 / T
    assert ((counts - n * p).abs() < mc_tolerance(math.sqrt(p * (1 - p)), n) * n).all()
    eps = seen["x"] / d.sqrt_one_minus_alphas_cumprod[seen["t"]].reshape(-1, 1)
    assert abs(eps.mean().item()) < mc_tolerance(1.0, n)
    assert abs(eps.var().item() - 1) < mc_tolerance(math.sqrt(2.0), n)
    # With ε_θ = 0 the loss of each example is its ε².
    torch.testing.assert_close(loss.double(), eps[:, 0] ** 2, rtol=4 * U32, atol=0)


@pytest.mark.parametrize("grad_clip", [0.0, 0.01])
def test_train_step_is_an_adamw_step_on_the_l_simple_gradient_of_its_batch(
    tmp_path, monkeypatch, grad_clip
):
    """alg-ch4-training: one Trainer step, redone by hand from what it drew.

    A spy on q_sample records the batch x_0, the steps t and the noise ε. By hand, with a copy
    of the weights from before the step: the loss ‖ε - ε_θ(√ᾱ_t x_0 + √(1-ᾱ_t) ε, t)‖² (mean
    over the batch and the coordinates), its gradient by autograd, scaled to norm ≤ grad_clip
    when clipping is on, and AdamW's first update θ - lr ĝ/(|ĝ| + ε_adam). Everything runs in
    float32 with the same operations, so only the order of float32 sums differs: a few
    roundings of the largest terms.
    """
    cfg = toy_config(tmp_path, batch_size=64, grad_clip=grad_clip)
    trainer = Trainer(cfg)
    before = copy.deepcopy(trainer.model)
    drawn = {}
    q_sample = trainer.diffusion.q_sample

    def spy(x0, t, noise=None):
        drawn.update(x0=x0.clone(), t=t.clone(), noise=noise.clone())
        return q_sample(x0, t, noise)

    monkeypatch.setattr(trainer.diffusion, "q_sample", spy)
    loss = trainer.train_step().item()

    x0, t, noise = drawn["x0"], drawn["t"], drawn["noise"]
    assert x0.shape == (cfg.batch_size, 2)
    assert (x0[:, None, :] == trainer.data[None]).all(-1).any(1).all()  # rows of the data
    alpha_bar = torch.cumprod(1 - linear_beta_schedule(cfg.num_timesteps), 0)[t][:, None]
    x_t = alpha_bar.sqrt().float() * x0 + (1 - alpha_bar).sqrt().float() * noise
    by_hand = (before(x_t, t) - noise).pow(2).mean(1).mean()
    assert loss == pytest.approx(by_hand.item(), rel=8 * U32)

    grads = torch.autograd.grad(by_hand, list(before.parameters()))
    norm = torch.sqrt(sum(g.pow(2).sum() for g in grads))
    scale = min(1.0, grad_clip / (norm.item() + 1e-6)) if grad_clip > 0 else 1.0
    if grad_clip > 0:
        assert scale < 1  # the clip is active in this case
    beta1 = trainer.optimizer.param_groups[0]["betas"][0]
    eps_adam = trainer.optimizer.param_groups[0]["eps"]
    gmax = max(g.abs().max().item() for g in grads)
    for p0, p1, g in zip(before.parameters(), trainer.model.parameters(), grads, strict=True):
        g = scale * g
        state = trainer.optimizer.state[p1]
        torch.testing.assert_close(state["exp_avg"] / (1 - beta1), g, rtol=1e-5, atol=1e-6 * gmax)
        step = cfg.lr * g / (g.abs() + eps_adam)
        atol = 1e-5 * cfg.lr + 4 * U32 * p0.detach().abs()
        assert ((p1.detach() - (p0.detach() - step)).abs() <= atol).all()


def _release_of(tmp_path, **config_changes):
    """A release checkpoint (weights only) of a short toy run, its config changed as given (the
    shipped files were written with the trainer's data folder and time limit in them)."""
    from ddpm_lib.training.checkpoint import export_release, save_checkpoint

    trainer = Trainer(toy_config(tmp_path, steps=20))
    trainer.run(progress=False)
    release = export_release(trainer.last_checkpoint, tmp_path / "release.pt", half=False)
    ckpt = load_checkpoint(release)
    ckpt["config"] |= config_changes
    save_checkpoint({k: v for k, v in ckpt.items() if k not in ("format", "version")}, release)
    return release, trainer


def test_a_release_checkpoint_is_fine_tuned_from_its_weights_with_a_fresh_optimizer(tmp_path):
    release, trained = _release_of(tmp_path)
    tuner = Trainer.from_checkpoint(release, steps=25, out_dir=str(tmp_path / "ft"))
    assert tuner.fine_tuning == release and tuner.last_checkpoint is None
    assert tuner.step == 20 and tuner.optimizer.state_dict()["state"] == {}
    for k, v in trained.ema.state_dict().items():
        assert torch.equal(tuner.model.state_dict()[k], v), k
        assert torch.equal(tuner.ema.state_dict()[k], v), k
    tuner.run(progress=False)
    assert load_checkpoint(tmp_path / "ft" / "last.pt")["step"] == 25


def test_fine_tuning_ignores_the_data_folder_and_time_limit_of_the_shipped_run(tmp_path):
    release, _ = _release_of(tmp_path, data_root=".devdata", time_limit=8.0)
    tuner = Trainer.from_checkpoint(release, steps=25, out_dir=str(tmp_path / "ft"))
    assert tuner.config.data_root is None and tuner.config.time_limit is None
    tuner = Trainer.from_checkpoint(release, steps=25, data_root=str(tmp_path))
    assert tuner.config.data_root == str(tmp_path)


def test_resume_remembers_which_checkpoint_and_step_it_continues(tmp_path):
    trainer = Trainer(toy_config(tmp_path, steps=20))
    trainer.run(progress=False)
    resumed = Trainer.from_checkpoint(trainer.last_checkpoint, steps=30)
    assert resumed.last_checkpoint == trainer.last_checkpoint
    assert resumed.last_checkpoint_step == 20 and resumed.fine_tuning is None
