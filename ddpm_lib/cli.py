"""Command line: ``python -m ddpm_lib train | sample | export | classifier | evaluate``.

Each subcommand has ``--help`` (with its defaults and an example); ``--version`` says which
ddpm_lib this is. Mistakes are answered with one line saying what was wrong and what to do.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import sys
import time
import typing
from pathlib import Path
from typing import Any

import torch

from .accel.distributed import DistInfo, barrier, cleanup, setup_distributed
from .data import TOY_DATASETS, DatasetNotFoundError, canonical_name
from .evaluation.inception import INSTALL_COMMAND, InceptionUnavailable
from .guidance import ClassifierFreeGuidance, num_classes_of
from .nets import MODEL_TYPES
from .samplers import ddim_sample, ddpm_sample
from .training import RECIPES, RESUMABLE, TrainConfig, Trainer, diffusion_for, recipe
from .training.checkpoint import (
    CheckpointError,
    export_release,
    is_release,
    load_checkpoint,
    load_model,
)
from .training.config import fields as config_fields
from .training.trainer import NonFiniteLossError
from .utils import get_device, seed_everything

PROG = "python -m ddpm_lib"


def _version() -> str:
    # The installed distribution's version (the package root is not imported here: the CLI
    # sits at the top of the layers and imports modules, tests/test_layers.py).
    try:
        return importlib.metadata.version("ddpm_lib")
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


class _Parser(argparse.ArgumentParser):
    """argparse, but a mistake is answered with the one useful line first (not the usage block,
    which for ``train`` is 40 lines), naming the subcommand, and a pointer to ``--help``."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n(see `{self.prog} --help`)\n")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default in its help (unless the help already says it, or there is none);
    examples in the epilog keep their lines."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in help_text:
            return help_text
        return super()._get_help_string(action) or help_text


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be a positive integer (digits only, e.g. 1000), got {text!r}"
        ) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _int_tuple(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected integers separated by commas, got {text!r}"
        ) from None


def _dataset(text: str) -> str:
    name = text.lower()
    if name in TOY_DATASETS:
        return name
    try:
        return canonical_name(name)
    except ValueError as e:
        raise argparse.ArgumentTypeError(
            f"{e}; or a 2-D toy set: {', '.join(TOY_DATASETS)}"
        ) from None


# Measured on a 2-core laptop-class CPU (../shared/reviews/newcomer_report.md, section 3).
CPU_NOTE = """\
On a CPU the default network (--preset mnist, 6.5 M parameters) takes about 1.5-5 s per step
at --batch-size 128, so the default 10,000 steps take 4-14 hours; train prints its own estimate
after its first steps. On a laptop use --preset mnist_small with fewer --steps, a 2-D toy set
(--dataset moons: seconds), or a shipped checkpoint (checkpoints/*.pt)."""

EXAMPLES = {
    "train": """\
examples:
  python -m ddpm_lib train --dataset moons                      # 2-D toy set, seconds on a CPU
  python -m ddpm_lib train --dataset fashion_mnist --preset mnist_small --steps 2000 \\
      --out-dir runs/fm
  python -m ddpm_lib train --dataset mnist --split test --holdout 1000   # MNIST offline
  python -m ddpm_lib train --resume runs/fm/last.pt --steps 4000      # continue a run
  python -m ddpm_lib train --resume checkpoints/fashion_mnist.pt --steps 10000 \\
      --out-dir runs/ft                                   # fine-tune a shipped model

"""
    + CPU_NOTE,
    "sample": """\
examples:
  python -m ddpm_lib sample --checkpoint checkpoints/fashion_mnist.pt --sampler ddim \\
      --steps 50 --n 64 --out grid.png
  python -m ddpm_lib sample --checkpoint runs/fm/last.pt --out ddpm.png   # all T steps""",
    "export": """\
example:
  python -m ddpm_lib export --checkpoint runs/fm/last.pt --out release/fm.pt""",
    "classifier": """\
example:
  python -m ddpm_lib classifier --dataset fashion_mnist --out classifier_fashion_mnist.pt""",
    "evaluate": """\
examples:
  python -m ddpm_lib evaluate --checkpoint checkpoints/fashion_mnist.pt --n 256 \\
      --samplers ddim-20 --elbo-n 0 --out results.json      # minutes on a CPU
  python -m ddpm_lib evaluate --checkpoint runs/fm/last.pt    # the full set: use a GPU

The defaults (10,000 samples from each of 3 samplers, the ELBO of 1,000 images) take hours on
a CPU. The feature classifier is found like the shipped checkpoints: $DDPM_CHECKPOINTS,
checkpoints/ of this folder or a parent, the download cache, or a download.""",
}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Train and sample DDPM models (ddpm_lib).",
        epilog="Each command has its own help, e.g. python -m ddpm_lib train --help",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ddpm_lib {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name, help=help_text, description=help_text, epilog=EXAMPLES[name],
            formatter_class=_HelpFormatter,
        )  # fmt: skip

    device_help = "cuda, mps or cpu (default: best available)"

    # Every training flag is made from a TrainConfig field or a network config field (its help
    # and type included). Defaults are None so that --resume can tell what was given.
    tr = command("train", "train a model (Algorithm 1)")
    tr.add_argument("--recipe", choices=sorted(RECIPES), help="start from a shipped model's recipe")
    _add_config_flags(tr)
    tr.add_argument("--model", choices=sorted(MODEL_TYPES), help="network type (default unet)")
    presets = sorted({p for _, _, ps in MODEL_TYPES.values() for p in ps})
    tr.add_argument(
        "--preset", choices=presets,
        help="network preset (default: unet's mnist, 6.5 M parameters: hours on a CPU)",
    )  # fmt: skip
    _add_model_flags(tr)
    tr.add_argument(
        "--resume", type=Path,
        help="continue the run of this checkpoint (or fine-tune a shipped one); --steps is the "
        "total step count",
    )  # fmt: skip
    tr.add_argument("--device", help=device_help)
    tr.add_argument("--no-progress", action="store_true", help="no progress bar")

    sa = command("sample", "draw samples from a checkpoint into an image grid")
    sa.add_argument("--checkpoint", type=Path, required=True, help="a .pt from train/export")
    sa.add_argument(
        "--sampler", choices=["ddpm", "ddim", "euler", "heun"],
        help="ddpm or ddim for a diffusion model (default ddpm); euler or heun integrate a "
        "flow-matching model's ODE (default euler)",
    )  # fmt: skip
    sa.add_argument(
        "--steps", type=_positive_int,
        help="DDIM or ODE steps (default 50; DDPM uses T)",
    )  # fmt: skip
    sa.add_argument("--eta", type=float, default=0.0, help="DDIM η (0 deterministic)")
    sa.add_argument("--n", type=_positive_int, default=64, help="number of samples")
    sa.add_argument(
        "--label", type=int,
        help="class to sample (a class-conditional checkpoint, trained with --class-cond)",
    )  # fmt: skip
    sa.add_argument(
        "--guidance", type=float, default=0.0,
        help="classifier-free guidance weight w ≥ 0 with --label (0: the conditional model)",
    )  # fmt: skip
    sa.add_argument("--out", type=Path, default=Path("samples.png"), help="output .png")
    sa.add_argument("--seed", type=int, default=0, help="random seed")
    sa.add_argument("--no-ema", action="store_true", help="use raw weights, not the EMA")
    sa.add_argument("--device", help=device_help)
    sa.add_argument("--no-progress", action="store_true", help="no progress bar")

    ex = command("export", "write a small release checkpoint (fp16 EMA weights)")
    ex.add_argument(
        "--checkpoint", type=Path, required=True, help="a training checkpoint (e.g. last.pt)"
    )
    ex.add_argument("--out", type=Path, required=True, help="the release checkpoint to write (.pt)")
    ex.add_argument(
        "--fp32", action="store_true", help="keep float32 weights (default: float16, half the size)"
    )

    cl = command("classifier", "train the feature classifier that evaluate uses")
    cl.add_argument("--dataset", type=_dataset, required=True, help="mnist or fashion_mnist")
    cl.add_argument("--out", type=Path, help="default checkpoints/classifier_<dataset>.pt")
    cl.add_argument("--epochs", type=_positive_int, default=10, help="passes over the data")
    cl.add_argument("--batch-size", type=_positive_int, default=256, help="images per step")
    cl.add_argument("--seed", type=int, default=0, help="random seed")
    cl.add_argument("--data-root", help="folder with <Name>/raw/...; default $DDPM_DATA_ROOT")
    cl.add_argument("--download", action="store_true", help="download the dataset if missing")
    cl.add_argument("--device", help=device_help)
    cl.add_argument("--no-progress", action="store_true", help="no progress bar")

    ev = command("evaluate", "Fréchet distance (with real-data floor), precision/recall, ELBO")
    ev.add_argument("--checkpoint", type=Path, required=True, help="a .pt from train/export")
    ev.add_argument("--n", type=_positive_int, default=10_000, help="samples per sampler")
    ev.add_argument(
        "--samplers",
        default="ddpm-1000,ddim-100,ddim-50",
        help="comma list of ddpm-T / ddim-K / euler-K / heun-K (the last two: a model's ODE)",
    )
    ev.add_argument(
        "--elbo-n", type=int, default=1000, help="held-out images for the ELBO (0: skip)"
    )
    ev.add_argument("--ode-n", type=int, default=0, help="images for the ODE likelihood (0: skip)")
    ev.add_argument("--ode-steps", type=_positive_int, default=100, help="Heun steps of the ODE")
    ev.add_argument(
        "--classifier", type=Path,
        help="feature classifier (default: the shipped classifier_<dataset>.pt, found or "
        "downloaded)",
    )  # fmt: skip
    ev.add_argument("--batch-size", type=_positive_int, default=1000, help="samples per batch")
    ev.add_argument("--bf16", action="store_true", help="sample under bf16 autocast (GPU)")
    ev.add_argument("--seed", type=int, default=0, help="random seed")
    ev.add_argument("--data-root", help="folder with <Name>/raw/...; default $DDPM_DATA_ROOT")
    ev.add_argument("--download", action="store_true", help="download the dataset if missing")
    ev.add_argument("--out", type=Path, help="write the results here as JSON")
    ev.add_argument(
        "--guidance",
        help="comma list of guidance weights, e.g. 0,0.5,1,2,4,8: evaluate a class-conditional "
        "checkpoint's accuracy and FD at each (with the first of --samplers)",
    )
    ev.add_argument("--grids", type=Path, help="folder for a 64-sample PNG per sampler")
    ev.add_argument(
        "--no-ladder", action="store_true",
        help="skip the calibration ladder (the floor set's FD after known damage)",
    )  # fmt: skip
    ev.add_argument(
        "--inception", action="store_true",
        help="add the standard FID (Inception-v3 features, with its floor); needs "
        f"{INSTALL_COMMAND}",
    )  # fmt: skip
    ev.add_argument("--device", help=device_help)
    ev.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.commands = {  # type: ignore[attr-defined]
        "train": tr, "sample": sa, "export": ex, "classifier": cl, "evaluate": ev,
    }  # fmt: skip
    return parser


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _base_type(hint: Any) -> Any:
    """int for ``int``, float for ``float | None``, ..."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def _config_value(name: str, base: Any) -> Any:
    """An argparse type for TrainConfig field ``name``: convert, then let TrainConfig validate."""

    def parse(text: str) -> Any:
        try:
            value = base(text)
        except ValueError:
            kind = "an integer (digits only, e.g. 1000)" if base is int else "a number"
            if base is int and name in _POSITIVE_FIELDS:
                kind = "a positive integer (digits only, e.g. 1000)"
            raise argparse.ArgumentTypeError(f"must be {kind}, got {text!r}") from None
        try:
            TrainConfig(**{name: value}).validate()
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        return value

    parse.__name__ = base.__name__  # argparse's "invalid int value: ..."
    return parse


_POSITIVE_FIELDS = ("toy_size", "num_timesteps", "steps", "batch_size", "log_every", "save_every")


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field (but ``model``), with the field's help and choices."""
    hints = typing.get_type_hints(TrainConfig)
    for name, f in config_fields().items():
        if name == "model":
            continue
        meta, base = f.metadata, _base_type(hints[name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = f"{meta['help']} (default {default})"
        if meta["resumable"]:
            help_text += "; may change on --resume"
        if base is bool:
            parser.add_argument(
                _flag(name), action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        elif "choices" in meta["argparse"]:
            parser.add_argument(_flag(name), choices=meta["argparse"]["choices"], help=help_text)
        else:
            parser.add_argument(_flag(name), type=_config_value(name, base), help=help_text)


def _model_fields() -> dict[str, tuple[Any, str, list[str]]]:
    """Every network config field: (type, help, the model types that have it)."""
    out: dict[str, tuple[Any, str, list[str]]] = {}
    for kind, (_, config_cls, _) in MODEL_TYPES.items():
        hints = typing.get_type_hints(config_cls)
        for f in dataclasses.fields(config_cls):
            _, help_text, kinds = out.get(f.name, (None, f.metadata.get("help", ""), []))
            hint = hints[f.name]
            base = _int_tuple if typing.get_origin(hint) is tuple else _base_type(hint)
            out[f.name] = (base, help_text, [*kinds, kind])
    return out


def _add_model_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per network config field; each overrides the preset's value."""
    for name, (base, help_text, kinds) in _model_fields().items():
        parser.add_argument(_flag(name), type=base, help=f"{help_text} ({', '.join(kinds)})")


def _train_config(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The TrainConfig fields given explicitly on the command line (the model as a spec)."""
    given = {k: v for k, v in vars(args).items() if v is not None and k in config_fields()}
    overrides = {
        k: list(v) if isinstance(v, tuple) else v
        for k in _model_fields()
        if (v := getattr(args, k)) is not None
    }
    if args.model or args.preset or overrides:
        kind = args.model or "unet"
        config_cls = MODEL_TYPES[kind][1]
        foreign = sorted(set(overrides) - {f.name for f in dataclasses.fields(config_cls)})
        if foreign:
            parser.error(
                f"{', '.join(map(_flag, foreign))} "
                f"{'is not a setting' if len(foreign) == 1 else 'are not settings'} of model "
                f"type {kind!r}; choose the type with --model"
            )
        spec: dict[str, Any] = {"type": kind, **overrides}
        if args.preset or kind == "unet":
            spec["preset"] = args.preset or "mnist"
        given["model"] = spec
    return given


def cmd_train(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    info = setup_distributed()  # a no-op unless started by torchrun
    try:
        code = _train(args, parser, info)
        # Every process reaches the end before the group is torn down: with torch 2.3's gloo,
        # destroying it while another rank still works hung at exit. Not in `finally`: after a
        # crash on one rank the others would wait here forever.
        barrier(info)
        return code
    finally:
        cleanup(info)


def _train(args: argparse.Namespace, parser: argparse.ArgumentParser, info: DistInfo) -> int:
    given = _train_config(args, parser)
    trainer: Trainer | None = None
    try:
        if args.resume is not None:
            trainer = _resume(args, parser, given, info)
        else:
            if given.get("dataset") in TOY_DATASETS and "model" not in given:
                given["model"] = {"type": "mlp"}
            base = recipe(args.recipe) if args.recipe else TrainConfig()
            trainer = Trainer(base.replace(**given), device=args.device)
        procs = f" x {info.world_size} processes" if info.enabled else ""
        if info.is_main:
            print(f"training on {trainer.data_note}; device {trainer.device}{procs}")
        estimate = _CpuEstimate() if trainer.device.type == "cpu" and info.is_main else None
        trainer.run(progress=not args.no_progress, callback=estimate)
    except KeyboardInterrupt:
        if info.is_main:
            print(interrupted_message(trainer), file=sys.stderr)
        return 130
    if info.is_main:
        print(f"done at step {trainer.step}; checkpoint {trainer.last_checkpoint}")
    return 0


def _resume(
    args: argparse.Namespace, parser: argparse.ArgumentParser, given: dict, info: DistInfo
) -> Trainer:
    """The trainer of ``train --resume``: an exact continuation of a training checkpoint, or a
    fine-tuning run from a release checkpoint's weights (said so)."""
    if args.recipe:
        parser.error("--resume continues a run with its own settings: drop --recipe")
    if set(given) - set(RESUMABLE):
        parser.error(
            f"--resume continues the run in {args.resume} with its own settings; only "
            f"{', '.join('--' + k.replace('_', '-') for k in RESUMABLE)} may change "
            f"(got {', '.join(sorted(set(given) - set(RESUMABLE)))})"
        )
    ckpt = load_checkpoint(args.resume)
    release = is_release(ckpt)
    # A release file sits among the shipped ones: a fine-tuning run writes elsewhere.
    default_out = Path("runs") / f"{args.resume.stem}_finetuned" if release else args.resume.parent
    given.setdefault("out_dir", str(default_out))
    steps = given.get("steps", ckpt["config"].get("steps", TrainConfig().steps))
    if steps <= ckpt["step"]:
        said = f"--steps {steps}" if "steps" in given else f"its --steps ({steps})"
        parser.error(
            f"{args.resume} is already at step {ckpt['step']}, and {said} is the total number "
            f"of steps, not how many to add: pass --steps above {ckpt['step']} (e.g. --steps "
            f"{ckpt['step'] + 1000}) to train further"
        )
    trainer = Trainer.from_checkpoint(args.resume, device=args.device, **given)
    if info.is_main:
        if release:
            print(
                f"fine-tuning {args.resume}: a release checkpoint holds its EMA weights only "
                f"(no optimizer or random state), so training starts from those weights at "
                f"step {trainer.step} with a fresh AdamW optimizer; not an exact continuation. "
                f"Checkpoints go to {Path(given['out_dir']) / 'last.pt'}"
            )
        else:
            print(f"resuming {args.resume} at step {trainer.step}")
    return trainer


def interrupted_message(trainer: Trainer | None) -> str:
    """What Ctrl-C during ``train`` leaves: the checkpoint to continue from and the command, or
    that there is none yet."""
    if trainer is None:
        return "interrupted before training started; no checkpoint was written"
    at = f"interrupted at step {trainer.step}"
    if trainer.last_checkpoint is None:
        start = f"--resume {trainer.fine_tuning} " if trainer.fine_tuning else ""
        return (
            f"{at}; no checkpoint of this run was written yet (one is written every "
            f"--save-every {trainer.config.save_every} steps), so there is nothing to resume: "
            f"start again (python -m ddpm_lib train {start}...), with a smaller --save-every "
            "to keep more"
        )
    lost = trainer.step - (trainer.last_checkpoint_step or 0)
    kept = f"{trainer.last_checkpoint} (step {trainer.last_checkpoint_step}"
    kept += f"; the {lost} steps after it are lost)" if lost else ")"
    return (
        f"{at}; the last checkpoint is {kept}. Continue with:\n"
        f"  python -m ddpm_lib train --resume {trainer.last_checkpoint} "
        f"--steps {trainer.config.steps}"
    )


class _CpuEstimate:
    """A training callback that, on a CPU, times a few steps and says how long the run takes."""

    WARMUP, MEASURE = 1, 3

    def __init__(self) -> None:
        self.seen = 0
        self.start = 0.0

    def __call__(self, trainer: Trainer) -> None:
        self.seen += 1
        if self.seen == self.WARMUP:
            self.start = time.perf_counter()
        elif self.seen == self.WARMUP + self.MEASURE:
            per_step = (time.perf_counter() - self.start) / self.MEASURE
            left = trainer.config.steps - trainer.step
            print(estimate_message(per_step, left), file=sys.stderr)


def estimate_message(per_step: float, steps_left: int) -> str:
    """The CPU time estimate ``train`` prints: a warning when the run takes an hour or more."""
    total = per_step * steps_left
    if total < 60:
        span = f"{total:.0f} s"
    elif total < 3600:
        span = f"{total / 60:.0f} min"
    else:
        span = f"{total / 3600:.1f} hours"
    line = f"on this CPU a step takes {per_step:.3g} s: the {steps_left} steps left take ~{span}"
    if total >= 3600:
        line = (
            f"warning: {line}. Stop with Ctrl-C (the last checkpoint is kept) and use a GPU, "
            "fewer --steps, a smaller network (--preset mnist_small) or a shipped checkpoint"
        )
    return line


def cmd_sample(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.out.suffix.lower() != ".png":
        parser.error(f"--out must be a .png file, got {args.out}")
    if args.eta < 0:
        parser.error(f"--eta must be ≥ 0, got {args.eta}")
    if not args.guidance >= 0 or args.guidance == float("inf"):
        parser.error(f"--guidance must be a finite weight ≥ 0, got {args.guidance}")
    if args.guidance > 0 and args.label is None:
        parser.error("--guidance steers towards a class: give the class with --label")
    _check_out(args.out, "--out", parser)
    device = get_device(args.device)
    model, ckpt = load_model(args.checkpoint, use_ema=not args.no_ema, map_location=device)
    cfg = TrainConfig.from_dict(ckpt["config"])
    if args.label is not None:
        k = num_classes_of(model)
        if k == 0:
            parser.error(
                f"--label: {args.checkpoint} is an unconditional model (trained without "
                "--class-cond); leave --label and --guidance out, or use a class-conditional "
                "checkpoint such as checkpoints/fashion_mnist_cond.pt"
            )
        if not 0 <= args.label < k:
            parser.error(f"--label must be a class in 0..{k - 1}, got {args.label}")
        if args.guidance > 0 and cfg.label_dropout == 0:
            parser.error(
                f"--guidance: {args.checkpoint} was trained with --label-dropout 0, so it has no "
                "unconditional prediction to guide with; use --guidance 0"
            )
    net = model
    if args.label is not None:
        net = ClassifierFreeGuidance(model, args.label, args.guidance).to(device)
    diffusion = diffusion_for(ckpt["config"])
    flow = cfg.objective == "flow"
    args.sampler = args.sampler or ("euler" if flow else "ddpm")
    if flow and args.sampler in ("ddpm", "ddim"):
        parser.error(
            f"--sampler {args.sampler}: {args.checkpoint} is a flow-matching model (it predicts "
            "a velocity, not the noise), so there is no ancestral or DDIM step to take; use "
            "--sampler euler or heun, which integrate its ODE"
        )
    if not flow and args.sampler in ("euler", "heun"):
        parser.error(
            f"--sampler {args.sampler} integrates a flow-matching model's velocity, and "
            f"{args.checkpoint} is a diffusion model: use --sampler ddim (with η = 0 it is "
            "Euler's method on its probability-flow ODE, Chapter 7) or ddpm"
        )
    steps = args.steps or (cfg.num_timesteps if args.sampler == "ddpm" else 50)
    if args.sampler == "ddpm" and steps != cfg.num_timesteps:
        parser.error(f"--sampler ddpm runs all T = {cfg.num_timesteps} steps; use ddim for fewer")
    if not flow and steps > cfg.num_timesteps:
        parser.error(f"--steps must be at most T = {cfg.num_timesteps}, got {steps}")
    gen = seed_everything(args.seed)
    gen = torch.Generator(device).manual_seed(args.seed) if device.type != "cpu" else gen
    spec = ckpt["config"]["model"]
    if spec.get("type") == "mlp":
        shape: tuple[int, ...] = (args.n, spec.get("dim", 2))
    else:
        size, channels = _image_shape(model)
        shape = (args.n, channels, size, size)
    # x̂_0 is clipped to the data range [-1, 1] for images only; toy points are unbounded.
    opts = dict(generator=gen, progress=not args.no_progress, clip_denoised=spec["type"] != "mlp")
    x_T = torch.randn(shape, device=device, generator=gen)
    if flow:
        x = diffusion.sample(net, x_T, steps, method=args.sampler)
        if opts["clip_denoised"]:
            x = x.clamp(-1.0, 1.0)
    elif args.sampler == "ddpm":
        x = ddpm_sample(diffusion, net, x_T, **opts)
    else:
        x = ddim_sample(diffusion, net, x_T, steps, eta=args.eta, **opts)
    _save_samples(x.cpu(), args.out)
    what = "" if args.label is None else f" of class {args.label} (guidance w = {args.guidance:g})"
    print(f"wrote {args.n} samples{what} ({args.sampler}, {steps} steps) to {args.out}")
    return 0


def _image_shape(model: torch.nn.Module) -> tuple[int, int]:
    cfg = model.config  # type: ignore[attr-defined]
    return cfg.image_size, cfg.in_channels


def _save_samples(x: torch.Tensor, out: Path) -> None:
    from . import viz

    if x.ndim == 4:
        viz.save_grid(x, out)
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4))
    ax.scatter(x[:, 0], x[:, 1], s=4)
    ax.set_aspect("equal")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)


def _check_out(path: Path, flag: str, parser: argparse.ArgumentParser, folder: bool = False):
    """Refuse an output path that cannot be written (a file where a folder must be, a folder
    where the file goes) before any work is done, so that nothing is lost."""
    for parent in [*reversed(path.parents), *([path] if folder else [])]:
        if parent.exists() and not parent.is_dir():
            parser.error(
                f"{flag} {path}: {parent} is a file, not a folder, so nothing can be written "
                f"{'there' if parent == path else 'under it'}; choose another {flag}"
            )
    if not folder and path.is_dir():
        parser.error(f"{flag} {path} is a folder; give a file name, e.g. {path / 'out'}")


def cmd_export(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.out.suffix.lower() != ".pt":
        parser.error(f"--out must be a .pt file (a checkpoint), got {args.out}")
    _check_out(args.out, "--out", parser)
    path = export_release(args.checkpoint, args.out, half=not args.fp32)
    card = load_checkpoint(path)["card"]
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB); card: {json.dumps(card)}")
    return 0


def cmd_classifier(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .evaluation.evaluate import classifier_data, save_classifier
    from .evaluation.metrics import train_classifier
    from .training.trainer import device_name

    if args.dataset in TOY_DATASETS:
        parser.error("toy sets need no classifier: evaluate uses their 2-D coordinates")
    if args.out is not None:
        if args.out.suffix.lower() != ".pt":
            parser.error(f"--out must be a .pt file, got {args.out}")
        _check_out(args.out, "--out", parser)
    device = get_device(args.device)
    x, y, xt, yt, note = classifier_data(args.dataset, args.data_root, args.download)
    model, card = train_classifier(
        x, y, xt, yt, args.epochs, args.batch_size, seed=args.seed, device=device,
        progress=not args.no_progress,
    )  # fmt: skip
    card = {"dataset": args.dataset, "data": note, **card, "device": device_name(device)}
    out = args.out or Path("checkpoints") / f"classifier_{args.dataset}.pt"
    save_classifier(model.cpu(), card, out)
    out.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    print(f"wrote {out}: test accuracy {card['test_accuracy']:.4f} ({note})")
    return 0


def cmd_evaluate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .evaluation.evaluate import evaluate_checkpoint, parse_sampler

    samplers = tuple(s for s in args.samplers.split(",") if s.strip())
    try:
        for s in samplers:
            parse_sampler(s)
    except ValueError as e:
        parser.error(str(e))
    if args.out is not None and args.out.suffix.lower() != ".json":
        parser.error(f"--out must be a .json file, got {args.out}")
    if args.elbo_n < 0 or args.ode_n < 0:
        parser.error(f"--elbo-n and --ode-n must be ≥ 0, got {args.elbo_n}, {args.ode_n}")
    if args.out is not None:
        _check_out(args.out, "--out", parser)
    if args.grids is not None:
        _check_out(args.grids, "--grids", parser, folder=True)
    if args.inception and args.guidance is not None:
        parser.error("--inception is not measured with --guidance; evaluate without it")
    start = time.perf_counter()
    if args.guidance is not None:
        result = _evaluate_guidance(args, parser, samplers[0])
    else:
        result = evaluate_checkpoint(
        args.checkpoint, args.n, samplers, args.elbo_n, args.classifier, args.batch_size,
        args.device, args.bf16, args.seed, args.data_root, args.grids, not args.no_progress,
        args.ode_n, args.ode_steps, args.download, not args.no_ladder, inception=args.inception,
        )  # fmt: skip
    result["wall_seconds"] = round(time.perf_counter() - start, 1)
    result["command"] = "python -m ddpm_lib " + " ".join(args.argv)
    brief = {k: v for k, v in result.items() if k != "elbo"}
    if "elbo" in result:
        brief["elbo"] = {k: v for k, v in result["elbo"].items() if k != "per_t"}
    print(json.dumps(brief, indent=2))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


def _evaluate_guidance(
    args: argparse.Namespace, parser: argparse.ArgumentParser, sampler: str
) -> dict[str, Any]:
    from .evaluation.guided import evaluate_guidance

    try:
        weights = tuple(float(w) for w in args.guidance.split(",") if w.strip())
    except ValueError:
        parser.error(f"--guidance takes a comma list of numbers, e.g. 0,1,4; got {args.guidance}")
    if not weights or not all(0 <= w < float("inf") for w in weights):
        parser.error(f"--guidance weights must be finite numbers ≥ 0, got {args.guidance}")
    return evaluate_guidance(
        args.checkpoint, weights, args.n, sampler, args.classifier, args.batch_size,
        args.device, args.bf16, args.seed, args.data_root, args.grids, not args.no_progress,
        args.download,
    )  # fmt: skip


# What Ctrl-C leaves behind, by command (train says it itself: see interrupted_message).
_INTERRUPTED = {
    "sample": "interrupted; no samples were written",
    "export": "interrupted; nothing was written (the file is written whole or not at all)",
    "classifier": "interrupted; the classifier was not written",
    "evaluate": "interrupted; no results were written",
    "train": "interrupted",
}


def for_the_command_line(message: str) -> str:
    """A library message with its Python advice turned into command-line flags."""
    message = message.replace(
        "pass download=True (--download on the command line)", "add --download"
    )
    hint = message.find("Only the MNIST test split")
    if hint >= 0:
        message = message[:hint] + (
            "Only the MNIST test split (10,000 digits) is available offline. The book trains on\n"
            "9,000 of them and holds out 1,000: add --split test --holdout 1000, e.g.\n"
            "  python -m ddpm_lib train --dataset mnist --split test --holdout 1000"
        )
    return message


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    sub = parser.commands[args.command]  # type: ignore[attr-defined]
    commands = {
        "train": cmd_train,
        "sample": cmd_sample,
        "export": cmd_export,
        "classifier": cmd_classifier,
        "evaluate": cmd_evaluate,
    }
    if getattr(args, "device", None):  # before any work: a missing GPU is a usage error
        try:
            get_device(args.device)
        except (RuntimeError, ValueError) as e:
            sub.error(f"--device {args.device}: {e}; leave --device out to use the best one")
    try:
        return commands[args.command](args, sub)
    except (
        CheckpointError,
        DatasetNotFoundError,
        FileNotFoundError,
        InceptionUnavailable,
        NonFiniteLossError,
        ValueError,
    ) as e:
        print(f"error: {for_the_command_line(str(e))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(_INTERRUPTED[args.command], file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
