"""Time to quality: train from scratch on the GPU fast path and measure FD as training goes.

Trains the chapters' Fashion-MNIST network (UNet preset mnist_small, 1.62M parameters) from
scratch with bf16 autocast, channels_last, fused AdamW and torch.compile, in chunks of
--eval-every steps. After each chunk (the clock is paused) the EMA model draws --n samples with
DDIM-50 and their Fréchet distance to --n test images is measured in the feature space of the
shipped classifier, beside the real-data floor at the same n. Writes a JSON with the curve
(training seconds, step, FD), one PNG with a row of samples per evaluation, and the final
model as a release checkpoint.

    python benchmarks/time_to_quality.py --minutes 6 --out-dir runs/ttq
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ddpm_lib.training.checkpoint import export_release  # noqa: E402
from ddpm_lib.data import load_image_dataset  # noqa: E402
from ddpm_lib.evaluation.evaluate import draw_samples, load_classifier  # noqa: E402
from ddpm_lib.evaluation.metrics import extract_features, frechet_distance_features  # noqa: E402
from ddpm_lib.training import TrainConfig, Trainer  # noqa: E402
from ddpm_lib.training.trainer import device_name  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=6.0, help="training time budget")
    p.add_argument("--eval-every", type=int, default=2000, help="steps between evaluations")
    p.add_argument("--n", type=int, default=2000, help="samples and real images per FD")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--classifier", default="checkpoints/classifier_fashion_mnist.pt")
    p.add_argument("--out-dir", type=Path, default=Path("runs/ttq"))
    p.add_argument("--smoke", action="store_true", help="CPU, tiny: check the script runs")
    args = p.parse_args()

    device = torch.device("cpu" if args.smoke else "cuda")
    fast = not args.smoke
    cfg = TrainConfig(
        dataset="fashion_mnist",
        model={"type": "unet", "preset": "mnist_small"},
        batch_size=args.batch_size,
        lr=args.lr,
        warmup=1000,
        ema_decay=0.9995,
        steps=args.eval_every,
        bf16=fast,
        channels_last=fast,
        compile=fast,
        compile_mode="reduce-overhead" if fast else None,
        log_every=100,
        save_every=10**9,  # only the final save
        out_dir=str(args.out_dir / "run"),
    )
    trainer = Trainer(cfg, device=device)
    classifier, clf_card = load_classifier(args.classifier, device)
    test = load_image_dataset("fashion_mnist", "test").to_model_range()
    train = load_image_dataset("fashion_mnist", "train").to_model_range()
    gen = torch.Generator().manual_seed(0)
    ref = test[torch.randperm(len(test), generator=gen)[: args.n]]
    floor_set = train[torch.randperm(len(train), generator=gen)[: args.n]]
    ref_f = extract_features(classifier, ref, device=device)
    floor = frechet_distance_features(extract_features(classifier, floor_set, device=device), ref_f)
    print(f"real-data floor at n = {args.n}: {floor:.4f}", flush=True)

    curve, rows = [], []
    budget = 60 * args.minutes
    while trainer.train_seconds < budget:
        trainer.config = dataclasses.replace(trainer.config, steps=trainer.step + args.eval_every)
        trainer.run(progress=False)
        start = time.perf_counter()
        x, _ = draw_samples(
            trainer.diffusion, trainer.ema, (1, 28, 28), args.n, "ddim-50",
            batch_size=args.n, device=device, bf16=fast, seed=1, progress=False,
        )  # fmt: skip
        fd = frechet_distance_features(extract_features(classifier, x, device=device), ref_f)
        point = {
            "step": trainer.step,
            "images_seen": trainer.step * args.batch_size,
            "train_seconds": round(trainer.train_seconds, 1),
            "loss": trainer.history["loss"][-1],
            "fd_ddim50": fd,
            "fd_over_floor": fd / floor,
            "eval_seconds": round(time.perf_counter() - start, 1),
        }
        curve.append(point)
        rows.append(x[:16])
        print(json.dumps(point), flush=True)
        if args.smoke:
            break

    args.out_dir.mkdir(parents=True, exist_ok=True)
    trainer.save()
    release = export_release(
        trainer.last_checkpoint, args.out_dir / "fashion_mnist_fast.pt",
        card={"note": "time-to-quality run of benchmarks/time_to_quality.py"},
    )  # fmt: skip
    from ddpm_lib.viz import save_grid

    save_grid(torch.cat(rows), args.out_dir / "time_to_quality.png", nrow=16)
    result = {
        "command": "python benchmarks/time_to_quality.py " + " ".join(sys.argv[1:]),
        "device": device_name(device),
        "torch": torch.__version__,
        "config": trainer.config.to_dict(),
        "classifier": clf_card,
        "n": args.n,
        "sampler": "ddim-50 (eta 0), bf16" if fast else "ddim-50",
        "floor_fd": floor,
        "curve": curve,
        "release_checkpoint": str(release),
        "note": "train_seconds counts training only (compile included), not the evaluations",
    }
    (args.out_dir / "time_to_quality.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out_dir / 'time_to_quality.json'}")


if __name__ == "__main__":
    main()
