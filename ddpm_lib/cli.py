"""Command line: ``python -m ddpm_lib train | sample | export | classifier | evaluate``.

Each subcommand has ``--help``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import typing
from pathlib import Path
from typing import Any

import torch

from .accel.distributed import DistInfo, cleanup, setup_distributed
from .data import TOY_DATASETS, DatasetNotFoundError, canonical_name
from .nets import MODEL_TYPES
from .samplers import ddim_sample, ddpm_sample
from .training import RECIPES, RESUMABLE, TrainConfig, Trainer, diffusion_for, recipe
from .training.checkpoint import CheckpointError, export_release, load_checkpoint, load_model
from .training.config import fields as config_fields
from .training.trainer import NonFiniteLossError
from .utils import get_device, seed_everything


def _positive_int(text: str) -> int:
    value = int(text)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ddpm_lib", description="Train and sample DDPM models (ddpm_lib)."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    # Every training flag is made from a TrainConfig field or a network config field (its help
    # and type included). Defaults are None so that --resume can tell what was given.
    tr = sub.add_parser("train", help="train a model (Algorithm 1)")
    tr.add_argument("--recipe", choices=sorted(RECIPES), help="start from a shipped model's recipe")
    _add_config_flags(tr)
    tr.add_argument("--model", choices=sorted(MODEL_TYPES), help="network type")
    presets = sorted({p for _, _, ps in MODEL_TYPES.values() for p in ps})
    tr.add_argument("--preset", choices=presets, help="network preset (default: unet's mnist)")
    _add_model_flags(tr)
    tr.add_argument("--resume", type=Path, help="continue from this checkpoint")
    tr.add_argument("--device", help="cuda, mps or cpu (default: best available)")
    tr.add_argument("--no-progress", action="store_true", help="no progress bar")

    sa = sub.add_parser("sample", help="draw samples from a checkpoint into an image grid")
    sa.add_argument("--checkpoint", type=Path, required=True, help="a .pt from train/export")
    sa.add_argument("--sampler", choices=["ddpm", "ddim"], default="ddpm")
    sa.add_argument("--steps", type=_positive_int, help="DDIM steps (default 50; DDPM uses T)")
    sa.add_argument("--eta", type=float, default=0.0, help="DDIM η (0 deterministic)")
    sa.add_argument("--n", type=_positive_int, default=64, help="number of samples")
    sa.add_argument("--out", type=Path, default=Path("samples.png"), help="output .png")
    sa.add_argument("--seed", type=int, default=0)
    sa.add_argument("--no-ema", action="store_true", help="use raw weights, not the EMA")
    sa.add_argument("--device", help="cuda, mps or cpu (default: best available)")
    sa.add_argument("--no-progress", action="store_true", help="no progress bar")

    ex = sub.add_parser("export", help="write a small release checkpoint (fp16 EMA weights)")
    ex.add_argument("--checkpoint", type=Path, required=True)
    ex.add_argument("--out", type=Path, required=True)
    ex.add_argument("--fp32", action="store_true", help="keep float32 weights")

    cl = sub.add_parser("classifier", help="train the feature classifier that evaluate uses")
    cl.add_argument("--dataset", type=_dataset, required=True, help="mnist or fashion_mnist")
    cl.add_argument("--out", type=Path, help="default checkpoints/classifier_<dataset>.pt")
    cl.add_argument("--epochs", type=_positive_int, default=10)
    cl.add_argument("--batch-size", type=_positive_int, default=256)
    cl.add_argument("--seed", type=int, default=0)
    cl.add_argument("--data-root", help="folder with <Name>/raw/...; default $DDPM_DATA_ROOT")
    cl.add_argument("--device", help="cuda, mps or cpu (default: best available)")
    cl.add_argument("--no-progress", action="store_true", help="no progress bar")

    ev = sub.add_parser(
        "evaluate", help="Fréchet distance (with real-data floor), precision/recall, ELBO"
    )
    ev.add_argument("--checkpoint", type=Path, required=True, help="a .pt from train/export")
    ev.add_argument("--n", type=_positive_int, default=10_000, help="samples per sampler")
    ev.add_argument(
        "--samplers",
        default="ddpm-1000,ddim-100,ddim-50",
        help="comma list of ddpm-T / ddim-K (default ddpm-1000,ddim-100,ddim-50)",
    )
    ev.add_argument(
        "--elbo-n", type=int, default=1000, help="held-out images for the ELBO (0: skip)"
    )
    ev.add_argument("--ode-n", type=int, default=0, help="images for the ODE likelihood (0: skip)")
    ev.add_argument("--ode-steps", type=_positive_int, default=100, help="Heun steps of the ODE")
    ev.add_argument("--classifier", type=Path, help="default checkpoints/classifier_<dataset>.pt")
    ev.add_argument("--batch-size", type=_positive_int, default=1000)
    ev.add_argument("--bf16", action="store_true", help="sample under bf16 autocast (GPU)")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--data-root", help="folder with <Name>/raw/...; default $DDPM_DATA_ROOT")
    ev.add_argument("--out", type=Path, help="write the results here as JSON")
    ev.add_argument("--grids", type=Path, help="folder for a 64-sample PNG per sampler")
    ev.add_argument("--device", help="cuda, mps or cpu (default: best available)")
    ev.add_argument("--no-progress", action="store_true", help="no progress bars")
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
        value = base(text)
        try:
            TrainConfig(**{name: value}).validate()
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        return value

    parse.__name__ = base.__name__  # argparse's "invalid int value: ..."
    return parse


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
        return _train(args, parser, info)
    finally:
        cleanup(info)


def _train(args: argparse.Namespace, parser: argparse.ArgumentParser, info: DistInfo) -> int:
    given = _train_config(args, parser)
    if args.resume is not None:
        if args.recipe:
            parser.error("--resume continues a run with its own settings: drop --recipe")
        if set(given) - set(RESUMABLE):
            parser.error(
                f"--resume continues the run in {args.resume} with its own settings; only "
                f"{', '.join('--' + k.replace('_', '-') for k in RESUMABLE)} may change "
                f"(got {', '.join(sorted(set(given) - set(RESUMABLE)))})"
            )
        given.setdefault("out_dir", str(args.resume.parent))
        trainer = Trainer.from_checkpoint(args.resume, device=args.device, **given)
        if info.is_main:
            print(f"resuming {args.resume} at step {trainer.step}")
    else:
        if given.get("dataset") in TOY_DATASETS and "model" not in given:
            given["model"] = {"type": "mlp"}
        base = recipe(args.recipe) if args.recipe else TrainConfig()
        trainer = Trainer(base.replace(**given), device=args.device)
    procs = f" x {info.world_size} processes" if info.enabled else ""
    if info.is_main:
        print(f"training on {trainer.data_note}; device {trainer.device}{procs}")
    trainer.run(progress=not args.no_progress)
    if info.is_main:
        print(f"done at step {trainer.step}; checkpoint {trainer.last_checkpoint}")
    return 0


def cmd_sample(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.out.suffix.lower() != ".png":
        parser.error(f"--out must be a .png file, got {args.out}")
    if args.eta < 0:
        parser.error(f"--eta must be ≥ 0, got {args.eta}")
    device = get_device(args.device)
    model, ckpt = load_model(args.checkpoint, use_ema=not args.no_ema, map_location=device)
    cfg = TrainConfig.from_dict(ckpt["config"])
    diffusion = diffusion_for(ckpt["config"])
    steps = args.steps or (50 if args.sampler == "ddim" else cfg.num_timesteps)
    if args.sampler == "ddpm" and steps != cfg.num_timesteps:
        parser.error(f"--sampler ddpm runs all T = {cfg.num_timesteps} steps; use ddim for fewer")
    if steps > cfg.num_timesteps:
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
    if args.sampler == "ddpm":
        x = ddpm_sample(diffusion, model, x_T, **opts)
    else:
        x = ddim_sample(diffusion, model, x_T, steps, eta=args.eta, **opts)
    _save_samples(x.cpu(), args.out)
    print(f"wrote {args.n} samples ({args.sampler}, {steps} steps) to {args.out}")
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


def cmd_export(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
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
    device = get_device(args.device)
    x, y, xt, yt, note = classifier_data(args.dataset, args.data_root)
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
    start = time.perf_counter()
    result = evaluate_checkpoint(
        args.checkpoint, args.n, samplers, args.elbo_n, args.classifier, args.batch_size,
        args.device, args.bf16, args.seed, args.data_root, args.grids, not args.no_progress,
        args.ode_n, args.ode_steps,
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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    commands = {
        "train": cmd_train,
        "sample": cmd_sample,
        "export": cmd_export,
        "classifier": cmd_classifier,
        "evaluate": cmd_evaluate,
    }
    try:
        return commands[args.command](args, parser)
    except (
        CheckpointError,
        DatasetNotFoundError,
        FileNotFoundError,
        NonFiniteLossError,
        ValueError,
    ) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; the last checkpoint is kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
