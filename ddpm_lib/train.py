"""Training with L_simple (Algorithm 1, Chapter 4): AdamW, EMA, clipping, checkpoints, resume.

``Trainer(config).run()`` trains; ``Trainer.from_checkpoint(path).run()`` continues a run that
stopped (or was killed) at its last checkpoint and reproduces the uninterrupted run exactly:
the checkpoint holds the model, EMA, optimizer, step and every random generator state. (Bitwise
so where the kernels are deterministic; a multi-threaded CPU BLAS may round differently from
run to run, which the tests avoid by using one thread.)
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .checkpoint import CheckpointError, config_mismatch, load_checkpoint, save_checkpoint
from .data import IMAGE_SHAPES, TOY_DATASETS, canonical_name, holdout_split, load_image_dataset
from .data import toy_dataset as make_toy_dataset
from .diffusion import MEAN_TYPES, VAR_TYPES, diffusion_for
from .distributed import all_mean, current, gather
from .fast import GraphedTrainStep
from .models import build_model, model_config, model_spec
from .utils import get_device

Tensor = torch.Tensor

# torch.compile modes that record CUDA graphs of their own (CUDA-graph trees).
GRAPHING_COMPILE_MODES = ("reduce-overhead", "max-autotune")

# Changing any of these between a checkpoint and a resumed run changes what is trained.
IDENTITY_KEYS = (
    "dataset", "split", "holdout", "model", "schedule", "num_timesteps", "mean_type", "var_type"
)  # fmt: skip


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainConfig:
    """Everything that defines a training run; stored in every checkpoint."""

    dataset: str = "fashion_mnist"
    split: str = "train"
    holdout: int = 0  # hold out this many images (fixed seed 0), train on the rest
    data_root: str | None = None
    download: bool = False
    toy_size: int = 10_000  # points drawn for a 2-D toy dataset
    model: dict[str, Any] = field(default_factory=lambda: {"type": "unet", "preset": "mnist"})
    schedule: str = "linear"
    num_timesteps: int = 1000
    mean_type: str = "eps"
    # "learned_range": the network also outputs its variance, trained on the hybrid loss
    var_type: str = "fixed_small"
    steps: int = 10_000
    batch_size: int = 128
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup: int = 0
    grad_clip: float = 1.0
    ema_decay: float = 0.9999
    bf16: bool = False
    channels_last: bool = False  # GPU fast path: NHWC layout for the convolutions
    compile: bool = False  # GPU fast path: torch.compile the network
    compile_mode: str | None = None  # e.g. "reduce-overhead" (CUDA graphs) for small models
    cuda_graph: bool = False  # GPU fast path: the whole update as one CUDA graph (fast.py)
    seed: int = 0
    log_every: int = 100
    save_every: int = 1000
    out_dir: str = "runs/default"
    time_limit: float | None = None  # minutes; stop and save at the first step past it

    def validate(self) -> None:
        positive = ("toy_size", "num_timesteps", "steps", "batch_size", "log_every", "save_every")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.lr <= 0 or not math.isfinite(self.lr):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")
        if self.mean_type not in MEAN_TYPES:
            raise ValueError(f"mean_type must be one of {MEAN_TYPES}, got {self.mean_type!r}")
        if self.var_type not in VAR_TYPES:
            raise ValueError(f"var_type must be one of {VAR_TYPES}, got {self.var_type!r}")
        if self.var_type == "learned_range" and self.dataset.lower() in TOY_DATASETS:
            raise ValueError(
                "var_type='learned_range' trains on the hybrid loss, whose decoder term L_0 is a "
                "likelihood of 8-bit images; the 2-D toy data is continuous: use fixed_small"
            )
        if self.time_limit is not None and self.time_limit <= 0:
            raise ValueError(
                f"time_limit must be a positive number of minutes, got {self.time_limit}"
            )
        if self.holdout < 0 or self.warmup < 0 or self.grad_clip < 0:
            raise ValueError("holdout, warmup and grad_clip must be non-negative")
        if self.cuda_graph and self.compile_mode in GRAPHING_COMPILE_MODES:
            raise ValueError(
                f"cuda_graph captures the whole training step in one CUDA graph, and "
                f"compile_mode={self.compile_mode!r} would capture graphs inside it: use "
                "compile_mode=None (or 'max-autotune-no-cudagraphs') with cuda_graph"
            )
        name = self.dataset.lower()
        if name not in TOY_DATASETS:
            canonical_name(name)  # raises with the valid names

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown training config keys {unknown}; valid: {sorted(names)}")
        return cls(**d)


def load_training_data(config: TrainConfig) -> tuple[Tensor, str]:
    """The training set in model range: [N, C, H, W] images in [-1, 1] or [N, 2] points.

    Returns the tensor and a one-line description of what it is (printed and stored).
    """
    name = config.dataset.lower()
    if name in TOY_DATASETS:
        gen = torch.Generator().manual_seed(config.seed)
        return make_toy_dataset(name, config.toy_size, gen), f"{config.toy_size} {name} points"
    data = load_image_dataset(name, config.split, config.data_root, config.download)
    if config.holdout:
        keep, _ = holdout_split(len(data), config.holdout, seed=0)
        data = data.subset(keep)
    note = f"{len(data)} images of {data.name} split {data.split!r} from {data.source}"
    if config.holdout:
        note += f" ({config.holdout} held out by holdout_split(seed=0))"
    return data.to_model_range(), note


def with_variance_channels(spec: dict[str, Any], var_type: str) -> dict[str, Any]:
    """``spec`` with out_channels = 2 × in_channels when the variance is learned.

    A learned-variance network returns [prediction | ν] (``GaussianDiffusion.split_output``).
    An explicit out_channels must already be 2 × in_channels.
    """
    if var_type != "learned_range":
        return spec
    cfg = model_config(spec)  # resolves presets
    if not hasattr(cfg, "out_channels"):
        raise ValueError(
            f"var_type='learned_range' needs a network with an out_channels setting (type "
            f"'unet'); model type {spec.get('type')!r} predicts only the mean"
        )
    want = 2 * cfg.in_channels
    if cfg.out_channels is None:
        return {**spec, "out_channels": want}
    if cfg.out_channels != want:
        raise ValueError(
            f"var_type='learned_range' needs out_channels = 2 × in_channels = {want} "
            f"(prediction and variance), got out_channels={cfg.out_channels}: drop it or set {want}"
        )
    return spec


def _check_data_fits_model(data: Tensor, spec: dict[str, Any], dataset: str) -> None:
    cfg = model_config(spec)
    if hasattr(cfg, "image_size"):
        want = (cfg.in_channels, cfg.image_size, cfg.image_size)
    else:
        want = (cfg.dim,)
    if tuple(data.shape[1:]) != want:
        hint = ", ".join(f"{k}: {v}" for k, v in IMAGE_SHAPES.items())
        raise ValueError(
            f"dataset {dataset!r} has items of shape {tuple(data.shape[1:])} but the model "
            f"expects {want}; choose a model config that matches ({hint}; 2-D toy data needs "
            "the 'mlp' model)"
        )


def device_name(device: torch.device) -> str:
    """A readable name of the device, e.g. 'NVIDIA H100 80GB HBM3' or 'cpu'."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


class Trainer:
    """Owns the model, EMA copy, optimizer, generators and the step counter.

    Under ``torchrun`` (a process group is initialised), each process trains a
    DistributedDataParallel replica on its shard ``data[rank::world_size]`` with
    ``batch_size // world_size`` images per step; only rank 0 logs and writes checkpoints.
    """

    def __init__(
        self,
        config: TrainConfig,
        model: nn.Module | None = None,
        data: Tensor | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        config.validate()
        self.dist = current()
        if self.dist.enabled and device is None and torch.cuda.is_available():
            device = f"cuda:{self.dist.local_rank}"
        self.device = get_device(str(device) if device is not None else None)
        if config.cuda_graph and self.dist.enabled:
            raise ValueError(
                "cuda_graph is for one process; under torchrun train without --cuda-graph "
                "(DistributedDataParallel's gradient all-reduce is not captured)"
            )
        if config.batch_size % self.dist.world_size:
            raise ValueError(
                f"batch_size {config.batch_size} must be divisible by the number of processes "
                f"({self.dist.world_size}): it is the global batch, split evenly"
            )
        self.local_batch = config.batch_size // self.dist.world_size
        if data is None:
            data, self.data_note = load_training_data(config)
        else:
            self.data_note = f"{len(data)} items given directly"
        if model is None:
            config = dataclasses.replace(
                config, model=with_variance_channels(config.model, config.var_type)
            )
        _check_data_fits_model(data, config.model, config.dataset)
        # A distributed sampler: rank r trains on the disjoint shard r, r + W, r + 2W, ...
        # Held on the device: MNIST-size sets fit, and batches are then gathered there.
        self.data = data[self.dist.rank :: self.dist.world_size].to(self.device)
        torch.manual_seed(config.seed)
        self.model = (model or build_model(config.model)).to(self.device)
        if config.channels_last and self.data.ndim == 4:
            self.model = self.model.to(memory_format=torch.channels_last)
            self.data = self.data.contiguous(memory_format=torch.channels_last)
        self.net: nn.Module = self.model
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        if config.compile:
            self.net = torch.compile(self.net, mode=config.compile_mode)  # type: ignore[assignment]
        # Store the resolved architecture (not a preset name) so checkpoints outlive presets.
        if model is None:
            config = dataclasses.replace(config, model=model_spec(self.model))
        self.config = config
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.diffusion = diffusion_for(config.to_dict())
        fused = self.device.type == "cuda"
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=config.lr,
            weight_decay=config.weight_decay,
            fused=fused,
            capturable=fused and config.cuda_graph,
        )
        rank_seed = config.seed + 10_007 * self.dist.rank
        self.data_gen = torch.Generator(self.device).manual_seed(rank_seed)
        self.noise_gen = torch.Generator(self.device).manual_seed(rank_seed + 1)
        self.step = 0
        self.train_seconds = 0.0  # wall time spent in run(), summed over resumes
        self.history: dict[str, list[float]] = {"step": [], "loss": []}
        self.out_dir = Path(config.out_dir)
        self.last_checkpoint: Path | None = None
        self.graphed = GraphedTrainStep(self) if config.cuda_graph else None

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        rng = {
            "torch": torch.get_rng_state(),
            "data": self.data_gen.get_state(),
            "noise": self.noise_gen.get_state(),
        }
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        if self.dist.enabled:  # every rank's generators, so a resumed job continues exactly
            states = gather(rng, self.dist)
            rng = {f"{k}.{r}": v for r, state in enumerate(states) for k, v in state.items()}
        return {
            "config": self.config.to_dict(),
            "step": self.step,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": rng,
            "history": self.history,
            "data_note": self.data_note,
            "train_seconds": self.train_seconds,
            "device_name": device_name(self.device),
        }

    def load_state_dict(self, ckpt: dict[str, Any]) -> None:
        # Keys added after a checkpoint was written (var_type) take their defaults.
        saved = {**TrainConfig().to_dict(), **ckpt["config"]}
        diff = config_mismatch(saved, self.config.to_dict(), IDENTITY_KEYS)
        if diff:
            raise CheckpointError(
                f"the checkpoint's config does not match this run ({diff}); resume with the "
                "original settings or start a fresh run in a new --out-dir"
            )
        self.model.load_state_dict(ckpt["model"])
        self.ema.load_state_dict(ckpt["ema"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.graphed is not None:  # new optimizer-state tensors: capture again
            self.graphed = GraphedTrainStep(self)
        self.step = int(ckpt["step"])
        self.train_seconds = float(ckpt.get("train_seconds", 0.0))
        self.history = {k: list(v) for k, v in ckpt["history"].items()}
        rng = ckpt["rng"]
        if self.dist.enabled:
            suffix = f".{self.dist.rank}"
            if f"torch{suffix}" not in rng or f"torch.{self.dist.world_size}" in rng:
                raise CheckpointError(
                    f"the checkpoint was written by a job with another number of processes; "
                    f"resume it with the same --nproc_per_node ({self.dist.world_size} now)"
                )
            rng = {k[: -len(suffix)]: v for k, v in rng.items() if k.endswith(suffix)}
        elif "torch" not in rng:
            raise CheckpointError(
                "the checkpoint was written by a distributed job; resume it under torchrun "
                "with the same --nproc_per_node"
            )
        torch.set_rng_state(rng["torch"])
        self.data_gen.set_state(rng["data"].to(self.data_gen.get_state().device))
        self.noise_gen.set_state(rng["noise"].to(self.noise_gen.get_state().device))
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, device: str | torch.device | None = None, **overrides: Any
    ) -> Trainer:
        """Rebuild the trainer a checkpoint came from and restore its state.

        ``overrides`` may change run-length settings (``steps``, ``save_every``, ``out_dir``
        ...); changing what is trained (model, data, schedule) is an error.
        """
        ckpt = load_checkpoint(path)
        config_dict = {**ckpt["config"], **overrides}
        trainer = cls(TrainConfig.from_dict(config_dict), device=device)
        trainer.load_state_dict(ckpt)
        trainer.last_checkpoint = Path(path)
        return trainer

    def save(self, name: str = "last.pt") -> Path:
        """Write a checkpoint (rank 0 only; every rank must call this: states are gathered)."""
        state = self.state_dict()
        path = self.out_dir / name
        if self.dist.enabled:
            self._check_replicas_agree()
        if self.dist.is_main:
            save_checkpoint(state, path)
        self.last_checkpoint = path
        return path

    def _check_replicas_agree(self) -> None:
        """DDP keeps the replicas identical; verify it (cheaply) before writing a checkpoint."""
        with torch.no_grad():
            checksum = sum(float(p.double().sum()) for p in self.model.parameters())
        sums = gather(checksum, self.dist)
        if len(set(sums)) != 1:
            raise RuntimeError(f"replicas diverged: parameter checksums by rank {sums}")

    # ------------------------------------------------------------------ training
    def _lr(self) -> float:
        if self.config.warmup == 0:
            return self.config.lr
        return self.config.lr * min(1.0, (self.step + 1) / self.config.warmup)

    def ema_decay(self) -> float:
        """min(ema_decay, (1 + n)/(10 + n)) after n updates: early on, an EMA with decay
        0.9999 would still be mostly the random initialisation, so it warms up."""
        return min(self.config.ema_decay, (1 + self.step) / (10 + self.step))

    def train_step(self) -> Tensor:
        """One optimizer step on a batch drawn with replacement; returns the loss (on device)."""
        if self.graphed is not None:
            loss = self.graphed()
        else:
            for group in self.optimizer.param_groups:
                group["lr"] = self._lr()
            loss = self._update(1.0 - self.ema_decay())
        self.step += 1
        # A copy: with CUDA graphs the next replay reuses the output's memory.
        return loss.clone()

    def _update(self, ema_weight: float | Tensor, cache_casts: bool = True) -> Tensor:
        """Algorithm 1 once: draw x_0, t and ε, take L_simple's gradient, clip it, step AdamW
        and move the EMA a fraction ``ema_weight`` towards the new weights; the loss, detached.

        ``ema_weight`` is a float, or a 0-d tensor when the step is captured in a CUDA graph
        (``fast.GraphedTrainStep``), which also turns off autocast's cache of cast weights.
        """
        cfg = self.config
        idx = torch.randint(
            len(self.data), (self.local_batch,), device=self.device, generator=self.data_gen
        )
        x0 = self.data[idx]
        self.model.train()
        if cfg.compile and cfg.compile_mode in GRAPHING_COMPILE_MODES:
            torch.compiler.cudagraph_mark_step_begin()  # a new iteration for CUDA-graph trees
        with torch.autocast(
            self.device.type, dtype=torch.bfloat16, enabled=cfg.bf16, cache_enabled=cache_casts
        ):
            loss = self.diffusion.training_loss(self.net, x0, generator=self.noise_gen).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        with torch.no_grad():
            ema_params = list(self.ema.parameters())
            params = [p.detach() for p in self.model.parameters()]
            if isinstance(ema_weight, Tensor):  # ema += w (θ - ema), w read on the device
                delta = torch._foreach_sub(params, ema_params)
                torch._foreach_mul_(delta, ema_weight)
                torch._foreach_add_(ema_params, delta)
            else:
                torch._foreach_lerp_(ema_params, params, ema_weight)
        return loss.detach()

    def _check_losses(self, losses: list[Tensor], first_step: int) -> float:
        """Mean of a window of losses; raises at the first non-finite one (one host sync)."""
        window = all_mean(torch.stack(losses).float(), self.dist).cpu()
        bad = (~torch.isfinite(window)).nonzero()
        if len(bad):
            step = first_step + int(bad[0])
            kept = (
                f"the last good checkpoint {self.last_checkpoint} is kept"
                if self.last_checkpoint
                else "no checkpoint had been written yet"
            )
            raise NonFiniteLossError(
                f"the loss became {window[int(bad[0])].item()} at step {step}; stopped, and "
                f"{kept}. Lower --lr, keep --grad-clip on, or check the data for NaNs"
            )
        return window.mean().item()

    def run(self, progress: bool = True, callback: Callable[[Trainer], None] | None = None):
        """Train until ``config.steps``, logging every ``log_every`` and saving every
        ``save_every`` steps and at the end. Losses are checked for NaN before each save, so
        a checkpoint never holds weights updated by a non-finite loss.
        """
        cfg = self.config
        main = self.dist.is_main
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if main:
            with open(self.out_dir / "config.json", "w") as f:
                json.dump(cfg.to_dict(), f, indent=2)
        bar = tqdm(
            total=cfg.steps, initial=self.step, desc="training", disable=not (progress and main)
        )
        window: list[Tensor] = []
        window_start = self.step + 1
        start = time.monotonic()
        seconds_before = self.train_seconds
        deadline = start + 60 * cfg.time_limit if cfg.time_limit else math.inf
        log = open(self.out_dir / "metrics.jsonl", "a") if main else None  # noqa: SIM115
        try:
            while self.step < cfg.steps:
                window.append(self.train_step())
                bar.update(1)
                self.train_seconds = seconds_before + time.monotonic() - start
                out_of_time = time.monotonic() > deadline
                if self.dist.enabled:
                    # Every rank must stop at the same step: agree at log boundaries only,
                    # so there is no collective (and no host sync) on the other steps.
                    agreed = torch.tensor(float(out_of_time), device=self.device)
                    out_of_time = self.step % cfg.log_every == 0 and bool(
                        all_mean(agreed, self.dist) > 0
                    )
                at_log = self.step % cfg.log_every == 0 or out_of_time
                at_save = self.step % cfg.save_every == 0 or self.step == cfg.steps or out_of_time
                if at_log or at_save:
                    loss = self._check_losses(window, window_start)
                    window, window_start = [], self.step + 1
                    self.history["step"].append(self.step)
                    self.history["loss"].append(loss)
                    if log is not None:
                        log.write(json.dumps({"step": self.step, "loss": loss}) + "\n")
                        log.flush()
                    bar.set_postfix(loss=f"{loss:.4f}")
                if at_save:
                    self.save()
                if callback is not None:
                    callback(self)
                if out_of_time:
                    if main:
                        print(f"time limit of {cfg.time_limit} min reached at step {self.step}")
                    break
        finally:
            if log is not None:
                log.close()
            bar.close()
        return self.history
