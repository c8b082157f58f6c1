"""What defines a training run: :class:`TrainConfig`, the one source of every training default.

Each field carries its help text and whether a resumed run may change it; the command line
(``python -m ddpm_lib train``) builds its flags, their help and its resume rule from these
fields, and :class:`~ddpm_lib.training.trainer.Trainer` enforces the same rule.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from ..accel.graphs import GRAPHING_COMPILE_MODES
from ..data import NUM_CLASSES, TOY_DATASETS, canonical_name
from ..diffusion import MEAN_TYPES, GaussianDiffusion
from ..flow import FlowMatching, LinearPath
from ..learned_variance import LearnedRangeDiffusion
from ..nets import model_config, resolve_spec
from ..schedules import SCHEDULES, get_beta_schedule

VAR_TYPES = LearnedRangeDiffusion.var_types
OBJECTIVES = ("diffusion", "flow")


def _field(default: Any, help: str, *, resumable: bool = False, **argparse: Any) -> Any:
    """A dataclass field with its command-line help; ``resumable``: a resumed run may change it
    (it says how long or where the run goes, not what is trained)."""
    meta = {"help": help, "resumable": resumable, "argparse": argparse}
    if callable(default):
        return field(default_factory=default, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Everything that defines a training run; stored in every checkpoint."""

    dataset: str = _field("fashion_mnist", "mnist, fashion_mnist, cifar10 or a 2-D toy set")
    split: str = _field("train", "which split to train on", choices=("train", "test"))
    holdout: int = _field(0, "hold out this many images (fixed seed 0), train on the rest")
    data_root: str | None = _field(
        None, "folder with <Name>/raw/...; default $DDPM_DATA_ROOT", resumable=True
    )
    download: bool = _field(False, "download the dataset if it is missing", resumable=True)
    toy_size: int = _field(10_000, "points drawn for a 2-D toy dataset")
    model: dict[str, Any] = _field(
        lambda: {"type": "unet", "preset": "mnist"},
        "the network: {'type': ..., 'preset': ..., fields of its config}",
    )
    schedule: str = _field("linear", "β schedule", choices=tuple(sorted(SCHEDULES)))
    num_timesteps: int = _field(1000, "T, the number of diffusion steps")
    objective: str = _field(
        "diffusion",
        "diffusion: DDPM's ε-regression (Chapters 4-7); flow: flow matching on the linear path, "
        "the network predicts a velocity (Chapter 9)",
        choices=OBJECTIVES,
    )
    mean_type: str = _field("eps", "what the network predicts", choices=MEAN_TYPES)
    var_type: str = _field(
        "fixed_small",
        "reverse-step variance; learned_range: the network learns it on the hybrid loss "
        "(twice the output channels)",
        choices=VAR_TYPES,
    )
    class_cond: bool = _field(
        False, "class-conditional: the network also reads the image's label (Chapter 8)"
    )
    label_dropout: float = _field(
        0.1,
        "with class_cond: the rate at which a label is replaced by the null label ∅, so the "
        "same network also learns ε(x, ∅) (classifier-free guidance)",
    )
    steps: int = _field(10_000, "total optimizer steps", resumable=True)
    batch_size: int = _field(128, "images per step (the global batch under torchrun)")
    lr: float = _field(2e-4, "AdamW learning rate")
    weight_decay: float = _field(0.0, "AdamW weight decay")
    warmup: int = _field(0, "linear learning-rate warm-up steps")
    grad_clip: float = _field(1.0, "gradient norm clip (0 = off)")
    ema_decay: float = _field(0.9999, "EMA decay")
    bf16: bool = _field(False, "bf16 autocast", resumable=True)
    channels_last: bool = _field(False, "NHWC layout for the convolutions (GPU)", resumable=True)
    compile: bool = _field(False, "torch.compile the network (GPU)", resumable=True)
    compile_mode: str | None = _field(
        None, "torch.compile mode, e.g. reduce-overhead (CUDA graphs)", resumable=True
    )
    cuda_graph: bool = _field(
        False, "capture the whole training step in one CUDA graph (GPU, one process)",
        resumable=True,
    )  # fmt: skip
    seed: int = _field(0, "random seed")
    log_every: int = _field(100, "steps between loss logs", resumable=True)
    save_every: int = _field(1000, "steps between checkpoints", resumable=True)
    out_dir: str = _field(
        "runs/default", "where last.pt, config.json and metrics.jsonl go", resumable=True
    )
    time_limit: float | None = _field(
        None, "minutes; stop and save at the first step past it", resumable=True
    )

    def __post_init__(self) -> None:
        # One spelling of each dataset ("Fashion-MNIST" → "fashion_mnist"), so that configs
        # compare equal; an unknown name is left for validate() to report.
        name = self.dataset.lower()
        if name not in TOY_DATASETS:
            try:
                name = canonical_name(name)
            except ValueError:
                pass
        self.dataset = name

    def validate(self) -> None:
        positive = ("toy_size", "num_timesteps", "steps", "batch_size", "log_every", "save_every")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.lr <= 0 or not math.isfinite(self.lr):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be ≥ 0, got {self.weight_decay}")
        for name in ("split", "objective", "schedule", "mean_type", "var_type"):
            choices = fields()[name].metadata["argparse"]["choices"]
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {getattr(self, name)!r}")
        if self.objective == "flow" and (self.mean_type, self.var_type) != ("eps", "fixed_small"):
            raise ValueError(
                "objective='flow' trains a velocity on the linear path: mean_type and var_type "
                f"belong to the diffusion objective; leave them at their defaults (got "
                f"{self.mean_type!r}, {self.var_type!r})"
            )
        if self.var_type == "learned_range" and self.dataset.lower() in TOY_DATASETS:
            raise ValueError(
                "var_type='learned_range' trains on the hybrid loss, whose decoder term L_0 is a "
                "likelihood of 8-bit images; the 2-D toy data is continuous: use fixed_small"
            )
        if self.time_limit is not None and self.time_limit <= 0:
            raise ValueError(
                f"time_limit must be a positive number of minutes, got {self.time_limit}"
            )
        if not 0.0 <= self.label_dropout < 1.0:
            raise ValueError(
                f"label_dropout is a rate in [0, 1), got {self.label_dropout}: use e.g. 0.1 "
                "(0 trains no unconditional model, so guidance cannot be used; 1 never trains "
                "the conditional one)"
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

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` applied (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """The config ``d`` describes; keys a checkpoint predates take their defaults."""
        unknown = sorted(set(d) - set(fields()))
        if unknown:
            raise ValueError(f"unknown training config keys {unknown}; valid: {sorted(fields())}")
        return cls(**d)


def fields() -> dict[str, dataclasses.Field]:
    """TrainConfig's fields by name, each with its ``metadata`` (help, resumable, argparse)."""
    return {f.name: f for f in dataclasses.fields(TrainConfig)}


RESUMABLE = tuple(name for name, f in fields().items() if f.metadata["resumable"])


def resume_conflicts(saved: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """The settings that would change what a resumed run trains, described; empty if none.

    Every field that is not ``resumable`` must be equal in the checkpoint's config ``saved``
    and the resumed run's ``wanted`` (keys a checkpoint predates take their defaults; model
    specs are compared with their presets expanded).
    """
    defaults = TrainConfig().to_dict()
    saved, wanted = {**defaults, **saved}, {**defaults, **wanted}
    out = []
    for name in fields():
        if name in RESUMABLE:
            continue
        a, b = saved[name], wanted[name]
        if name == "model":  # as the trainer builds them
            a, b = _as_built(a, saved), _as_built(b, wanted)
        if a != b:
            out.append(f"{name}: checkpoint has {a!r}, requested {b!r}")
    return out


def _as_built(spec: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """A model spec as the trainer builds it from ``config``: variance channels added, the
    image datasets' number of classes for a class-conditional run whose spec names none."""
    spec = with_variance_channels(spec, config["var_type"])
    if config.get("class_cond") and not getattr(model_config(spec), "num_classes", 0):
        spec = {**spec, "num_classes": NUM_CLASSES}
    return resolve_spec(spec)


def with_variance_channels(spec: dict[str, Any], var_type: str) -> dict[str, Any]:
    """``spec`` with out_channels = 2 × in_channels when the variance is learned.

    A learned-variance network returns [prediction | ν] (``LearnedRangeDiffusion.split_output``).
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


def with_num_classes(spec: dict[str, Any], class_cond: bool, num_classes: int) -> dict[str, Any]:
    """``spec`` with ``num_classes`` set for a class-conditional run (0 otherwise), Chapter 8.

    A spec that already names a number of classes must agree with the run.
    """
    want = num_classes if class_cond else 0
    have = model_config(spec)
    if not hasattr(have, "num_classes"):
        if class_cond:
            raise ValueError(f"model type {spec.get('type')!r} cannot be class-conditional")
        return spec
    if have.num_classes not in (0, want):
        raise ValueError(
            f"the model is built for num_classes={have.num_classes} but the run "
            + (f"has {want} classes" if class_cond else "is unconditional: add --class-cond")
        )
    return {**spec, "num_classes": want} if want else spec


def diffusion_for(config: dict[str, Any] | TrainConfig) -> GaussianDiffusion | FlowMatching:
    """The diffusion a training config describes (schedule, T, parameterization, variance).

    A learned variance gives a :class:`~ddpm_lib.learned_variance.LearnedRangeDiffusion`;
    configs written before ``var_type`` existed mean the fixed posterior variance. The flow
    objective gives a :class:`~ddpm_lib.flow.FlowMatching` on the linear path, whose network
    time input spans 0..T like a diffusion model's.
    """
    if isinstance(config, TrainConfig):
        config = config.to_dict()
    if config.get("objective", "diffusion") == "flow":
        return FlowMatching(LinearPath(), time_scale=config["num_timesteps"])
    betas = get_beta_schedule(config["schedule"], config["num_timesteps"])
    var_type = config.get("var_type", "fixed_small")
    cls = LearnedRangeDiffusion if var_type == "learned_range" else GaussianDiffusion
    return cls(betas, config["mean_type"], var_type)
