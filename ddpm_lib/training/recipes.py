"""The recipes that made the shipped checkpoints: one registry for the book, the scripts and CLI.

``RECIPES[name]`` is the :class:`TrainConfig` that trained ``checkpoints/<name>.pt``. The
chapters fall back to it when the checkpoint cannot be had (``load_or_train(name)``), the
training scripts run it (``python -m ddpm_lib train --recipe name``), and a test checks that
each shipped checkpoint's stored config is this recipe. Run settings (where the data lives, the
output folder) are not part of a recipe; a time limit is, where the shipped run had one: the
GPU recipes stop at their step count or their minutes, whichever comes first.
"""

from __future__ import annotations

from .config import TrainConfig

_SMALL_UNET = {"type": "unet", "preset": "mnist_small"}  # 1.6M parameters
# The chapters' three models: trained side by side on one H100, 8 minutes each.
_CHAPTER = dict(
    schedule="linear",
    num_timesteps=1000,
    lr=4e-4,
    warmup=1000,
    grad_clip=1.0,
    ema_decay=0.9995,
    log_every=500,
    save_every=5000,
    time_limit=8.0,
)
# The GPU fast path: bf16, channels_last, torch.compile.
_FAST = dict(bf16=True, channels_last=True, compile=True)

RECIPES: dict[str, TrainConfig] = {
    # MNIST offline: 9,000 of the 10,000 test digits (1,000 held out for the ELBO and FD).
    "mnist": TrainConfig(
        dataset="mnist", split="test", holdout=1000, model=_SMALL_UNET,
        steps=60_000, batch_size=128, **_CHAPTER,
    ),
    "fashion_mnist": TrainConfig(
        dataset="fashion_mnist", model=_SMALL_UNET, steps=60_000, batch_size=128, **_CHAPTER
    ),
    "toy_gmm": TrainConfig(
        dataset="gmm", toy_size=50_000, model={"type": "mlp"},
        steps=30_000, batch_size=512, **{**_CHAPTER, "lr": 1e-3},
    ),
    # benchmarks/time_to_quality.py: the chapters' network, 14,000 steps of batch 512.
    "fashion_mnist_fast": TrainConfig(
        dataset="fashion_mnist", model=_SMALL_UNET, steps=14_000, batch_size=512, lr=5e-4,
        warmup=1000, ema_decay=0.9995, compile_mode="reduce-overhead", log_every=100,
        save_every=14_000, **_FAST,
    ),
    # benchmarks/hybrid_loss.sh: fashion_mnist_fast with a learned variance (the hybrid loss).
    "fashion_mnist_hybrid": TrainConfig(
        dataset="fashion_mnist", model=_SMALL_UNET, var_type="learned_range", steps=14_000,
        batch_size=512, lr=5e-4, warmup=1000, ema_decay=0.9995, cuda_graph=True,
        log_every=100, save_every=14_000, **_FAST,
    ),
    # benchmarks/guidance.sh (Chapter 8): fashion_mnist_fast, class-conditional, labels dropped
    # at rate 0.1 so that the same network learns ε(x, ∅) for classifier-free guidance.
    "fashion_mnist_cond": TrainConfig(
        dataset="fashion_mnist", model=_SMALL_UNET, class_cond=True, label_dropout=0.1,
        steps=14_000, batch_size=512, lr=5e-4, warmup=1000, ema_decay=0.9995,
        compile_mode="reduce-overhead", log_every=100, save_every=14_000, **_FAST,
    ),
    # benchmarks/flow_vs_ddpm.sh (Chapter 9): fashion_mnist_fast's network and settings, trained
    # by flow matching on the linear path; 5 minutes on one H200, shared with a DDPM model of
    # fashion_mnist_fast's recipe and the same limit, trained at the same time (PARALLEL=1).
    "fashion_mnist_flow": TrainConfig(
        dataset="fashion_mnist", model=_SMALL_UNET, objective="flow", steps=14_000,
        batch_size=512, lr=5e-4, warmup=1000, ema_decay=0.9995, compile_mode="reduce-overhead",
        time_limit=5.0, log_every=100, save_every=14_000, **_FAST,
    ),
    # benchmarks/train_quality_model.sh: the 6.5M-parameter preset, 23 minutes on one H100.
    "fashion_mnist_large": TrainConfig(
        dataset="fashion_mnist", model={"type": "unet", "preset": "mnist"}, steps=1_000_000,
        batch_size=256, lr=4e-4, warmup=1000, ema_decay=0.9995, cuda_graph=True,
        time_limit=23.0, log_every=1000, save_every=5000, **_FAST,
    ),
}  # fmt: skip

# A quick-mode run (``DDPM_QUICK=1``, as in ``make test``): the same recipe, this many steps.
QUICK_STEPS = 200


def recipe(name: str, *, quick: bool = False) -> TrainConfig:
    """A copy of ``RECIPES[name]``; with ``quick``, cut to :data:`QUICK_STEPS` steps, no limit."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; the recipes are {', '.join(RECIPES)}")
    config = RECIPES[name].replace()
    config.model = dict(config.model)  # recipes share their model dicts: never edit one
    if quick:
        config = config.replace(
            steps=QUICK_STEPS, time_limit=None, log_every=QUICK_STEPS // 10, save_every=QUICK_STEPS
        )
    return config
