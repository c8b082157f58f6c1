"""Training (Algorithm 1, Chapter 4): AdamW, EMA, clipping, checkpoints, exact resume.

``Trainer(config).run()`` trains; ``Trainer.from_checkpoint(path).run()`` continues a run that
stopped (or was killed) at its last checkpoint and reproduces the uninterrupted run exactly:
the checkpoint holds the model, EMA, optimizer, step and every random generator state. (Bitwise
so where the kernels are deterministic; a multi-threaded CPU BLAS may round differently from
run to run, which the tests avoid by using one thread.)
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..accel.distributed import all_mean, current, gather
from ..accel.graphs import GRAPHING_COMPILE_MODES, GraphedStep
from ..data import IMAGE_SHAPES, NUM_CLASSES, TOY_DATASETS, holdout_split, load_image_dataset
from ..data import toy_dataset as make_toy_dataset
from ..elbo import check_data_range
from ..guidance import num_classes_of
from ..nets import build_model, model_config, model_spec
from ..utils import get_device
from .checkpoint import CheckpointError, is_release, load_checkpoint, save_checkpoint
from .config import (
    RESUMABLE,
    TrainConfig,
    diffusion_for,
    resume_conflicts,
    with_num_classes,
    with_variance_channels,
)

Tensor = torch.Tensor


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def load_training_data(config: TrainConfig) -> tuple[Tensor, Tensor | None, str]:
    """The training set in model range: [N, C, H, W] images in [-1, 1] or [N, 2] points.

    Returns the tensor, the int64 labels [N] (None for the unlabelled 2-D toy sets) and a
    one-line description of what it is (printed and stored).
    """
    name = config.dataset.lower()
    if name in TOY_DATASETS:
        if config.class_cond:
            raise ValueError(
                f"class_cond needs labelled data, and the 2-D toy set {name!r} has no labels: "
                "train on mnist, fashion_mnist or cifar10, or pass data and labels to Trainer"
            )
        gen = torch.Generator().manual_seed(config.seed)
        points = make_toy_dataset(name, config.toy_size, gen)
        return points, None, f"{config.toy_size} {name} points"
    data = load_image_dataset(name, config.split, config.data_root, config.download)
    if config.holdout:
        keep, _ = holdout_split(len(data), config.holdout, seed=0)
        data = data.subset(keep)
    note = f"{len(data)} images of {data.name} split {data.split!r} from {data.source}"
    if config.holdout:
        note += f" ({config.holdout} held out by holdout_split(seed=0))"
    return data.to_model_range(), data.labels, note


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
        labels: Tensor | None = None,
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
        num_classes = NUM_CLASSES
        if data is None:
            data, labels, self.data_note = load_training_data(config)
        else:
            self.data_note = f"{len(data)} items given directly"
            if labels is not None:
                num_classes = int(labels.max()) + 1
        if model is None:
            spec = with_variance_channels(config.model, config.var_type)
            spec = with_num_classes(spec, config.class_cond, num_classes)
            config = config.replace(model=spec)
        self.labels: Tensor | None = None
        self.null_label = 0
        if config.class_cond:
            self.labels, self.null_label = self._check_labels(labels, data, config, model)
        _check_data_fits_model(data, config.model, config.dataset)
        if config.var_type == "learned_range":  # the hybrid loss's decoder term reads [-1, 1]
            check_data_range(data, "training data for var_type='learned_range'")
        # A distributed sampler: rank r trains on the disjoint shard r, r + W, r + 2W, ...
        # Held on the device: MNIST-size sets fit, and batches are then gathered there.
        self.data = data[self.dist.rank :: self.dist.world_size].to(self.device)
        if self.labels is not None:
            self.labels = self.labels[self.dist.rank :: self.dist.world_size].to(self.device)
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
            config = config.replace(model=model_spec(self.model))
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
        self.last_checkpoint: Path | None = None  # the latest checkpoint of this run
        self.last_checkpoint_step: int | None = None
        self.fine_tuning: Path | None = None  # the release checkpoint this run started from
        self.graphed: GraphedStep | None = None
        if config.cuda_graph:
            self._capture_updates()

    @staticmethod
    def _check_labels(
        labels: Tensor | None, data: Tensor, config: TrainConfig, model: nn.Module | None
    ) -> tuple[Tensor, int]:
        """The labels of a class-conditional run, checked, and the null label's index."""
        num_classes = (
            num_classes_of(model) if model is not None else model_config(config.model).num_classes  # type: ignore[attr-defined]
        )
        if labels is None:
            raise ValueError("class_cond needs one label per training item: pass labels=")
        if labels.shape != (len(data),) or labels.is_floating_point():
            raise ValueError(
                f"labels must be integers of shape [{len(data)}], got {labels.dtype} "
                f"{tuple(labels.shape)}"
            )
        if not num_classes or labels.min() < 0 or labels.max() >= num_classes:
            raise ValueError(
                f"the labels run from {int(labels.min())} to {int(labels.max())}, but the network "
                f"takes num_classes={num_classes}: build it with num_classes > every label"
            )
        return labels.long(), num_classes

    def _capture_updates(self) -> None:
        """Set up :meth:`update` as one CUDA graph: the learning rate and the EMA weight become
        device tensors that the graph reads, filled before each replay."""
        self.lr_tensor = torch.tensor(self.config.lr, dtype=torch.float32, device=self.device)
        self.ema_weight = torch.zeros((), dtype=torch.float32, device=self.device)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_tensor
        self.graphed = GraphedStep(
            lambda: self.update(self.ema_weight, cache_casts=False),
            modules=[self.model, self.ema],
            optimizer=self.optimizer,
            generators=[self.data_gen, self.noise_gen],
            device=self.device,
        )

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
        conflicts = resume_conflicts(ckpt["config"], self.config.to_dict())
        if conflicts:
            raise CheckpointError(
                f"the checkpoint's config does not match this run ({'; '.join(conflicts)}); "
                "resume with the original settings or start a fresh run in a new --out-dir"
            )
        if is_release(ckpt):
            self._start_from_release(ckpt)
            return
        self.model.load_state_dict(ckpt["model"])
        self.ema.load_state_dict(ckpt["ema"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.graphed is not None:  # new optimizer-state tensors: capture again
            self._capture_updates()
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

    def _start_from_release(self, ckpt: dict[str, Any]) -> None:
        """Fine-tune from a release checkpoint's weights: it holds the EMA weights only (no raw
        weights, optimizer or random state), so the model and its EMA both start from them,
        with a fresh AdamW and generators seeded by the config; the step count goes on."""
        weights = {k: v.float() if v.is_floating_point() else v for k, v in ckpt["model"].items()}
        self.model.load_state_dict(weights)
        self.ema.load_state_dict(weights)
        self.step = int(ckpt["step"])
        self.train_seconds = float(ckpt.get("train_seconds", 0.0))
        history = ckpt.get("history") or {}
        self.history = {k: list(history.get(k, [])) for k in ("step", "loss")}

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, device: str | torch.device | None = None, **overrides: Any
    ) -> Trainer:
        """Rebuild the trainer a checkpoint came from and restore its state.

        ``overrides`` may change the resumable settings (``config.RESUMABLE``: ``steps``,
        ``save_every``, ``out_dir``, ...); changing what is trained (model, data, schedule,
        optimizer) is an error.

        A release checkpoint (``export``: weights only) cannot be continued exactly; it is
        fine-tuned instead (:meth:`_start_from_release`; ``trainer.fine_tuning`` is its path),
        and neither the data folder nor the time limit of the run that made it is used.
        """
        ckpt = load_checkpoint(path)
        release = is_release(ckpt)
        if release:  # the shipped run's data folder and time budget are not this run's
            overrides.setdefault("data_root", None)
            overrides.setdefault("time_limit", None)
        conflicts = resume_conflicts(ckpt["config"], {**ckpt["config"], **overrides})
        if conflicts:
            raise CheckpointError(
                f"the checkpoint's config does not match this run ({'; '.join(conflicts)}): "
                f"resuming {path} continues that run with its own settings, and only "
                f"{', '.join(RESUMABLE)} may change"
            )
        config_dict = {**ckpt["config"], **overrides}
        trainer = cls(TrainConfig.from_dict(config_dict), device=device)
        trainer.load_state_dict(ckpt)
        if release:
            trainer.fine_tuning = Path(path)
        else:
            trainer.last_checkpoint, trainer.last_checkpoint_step = Path(path), trainer.step
        return trainer

    def save(self, name: str = "last.pt") -> Path:
        """Write a checkpoint (rank 0 only; every rank must call this: states are gathered)."""
        state = self.state_dict()
        path = self.out_dir / name
        if self.dist.enabled:
            self._check_replicas_agree()
        if self.dist.is_main:
            save_checkpoint(state, path)
        self.last_checkpoint, self.last_checkpoint_step = path, self.step
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
            self.lr_tensor.fill_(self._lr())
            self.ema_weight.fill_(1.0 - self.ema_decay())
            loss = self.graphed()
        else:
            for group in self.optimizer.param_groups:
                group["lr"] = self._lr()
            loss = self.update(1.0 - self.ema_decay())
        self.step += 1
        # A copy: with CUDA graphs the next replay reuses the output's memory.
        return loss.clone()

    def update(self, ema_weight: float | Tensor, *, cache_casts: bool = True) -> Tensor:
        """Algorithm 1 (alg-ch4-training) once; returns the loss, detached. Chapter 4.

        1. Draw a batch x_0 from the data (with replacement); for a class-conditional run, its
           labels, each replaced by the null label ∅ with probability ``label_dropout``
           (the loss is then eq-ch8-cond-loss, Chapter 8).
        2. Draw t and ε and take the loss of ``diffusion.training_loss`` (L_simple, or the
           hybrid loss for a learned variance).
        3. Backpropagate, clip the gradient norm, step AdamW.
        4. Move the EMA a fraction ``ema_weight`` towards the new weights.

        ``ema_weight`` is a float, or a 0-d tensor when the update is captured in a CUDA graph
        (:class:`~ddpm_lib.accel.graphs.GraphedStep`), which also turns off autocast's cache of
        cast weights (``cache_casts``).
        """
        cfg = self.config
        idx = torch.randint(
            len(self.data), (self.local_batch,), device=self.device, generator=self.data_gen
        )
        x0 = self.data[idx]
        net = self.net
        if self.labels is not None:  # labels dropped to ∅ at rate label_dropout (Chapter 8)
            y = self.labels[idx]
            drop = torch.rand(len(idx), device=self.device, generator=self.data_gen)
            y = torch.where(drop < cfg.label_dropout, self.null_label, y)

            def net(x_t: Tensor, t: Tensor) -> Tensor:
                return self.net(x_t, t, y)

        self.model.train()
        if cfg.compile and cfg.compile_mode in GRAPHING_COMPILE_MODES:
            torch.compiler.cudagraph_mark_step_begin()  # a new iteration for CUDA-graph trees
        with torch.autocast(
            self.device.type, dtype=torch.bfloat16, enabled=cfg.bf16, cache_enabled=cache_casts
        ):
            loss = self.diffusion.training_loss(net, x0, generator=self.noise_gen).mean()
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
