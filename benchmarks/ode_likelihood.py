"""Probability-flow-ODE likelihood of the shipped checkpoints, with a step-count check.

    python benchmarks/ode_likelihood.py --out-dir benchmarks/results/quality

For each image checkpoint: bits/dim of 1,000 held-out images (100 log-spaced Heun steps, one
Hutchinson probe per image, uniform dequantization; ``ddpm_lib.evaluation.metrics.ode_bits_per_dim``), and
the same for the first 100 of them at 50, 100 and 200 steps, to show the step count suffices.
For the Gaussian-mixture toy: the mean log-likelihood of 10,000 fresh points (exact divergence)
beside their exact log-density. Writes ode_<checkpoint>.json per checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ddpm_lib.evaluation.evaluate import evaluate_checkpoint  # noqa: E402
from ddpm_lib.training.pretrained import find_checkpoint  # noqa: E402
from ddpm_lib.training.trainer import device_name  # noqa: E402
from ddpm_lib.utils import get_device  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out-dir", type=Path, required=True)
    checkpoints = "mnist,fashion_mnist,fashion_mnist_fast,fashion_mnist_hybrid,fashion_mnist_large"
    checkpoints += ",toy_gmm"
    p.add_argument("--checkpoints", default=checkpoints)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--check-n", type=int, default=100)
    p.add_argument("--device", default=None)
    args = p.parse_args()
    device = get_device(args.device)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name in args.checkpoints.split(","):
        start = time.perf_counter()
        toy = name.startswith("toy")

        def run(n: int, steps: int, name: str = name) -> dict:
            # n=8 and no samplers: only the ODE part of evaluate_checkpoint does real work here;
            # the feature classifier is the checkpoint's dataset's shipped one.
            r = evaluate_checkpoint(
                find_checkpoint(name), n=8, samplers=(), elbo_n=0, device=device,
                progress=False, ode_n=n, ode_steps=steps,
            )  # fmt: skip
            return r["ode_likelihood"]

        result = {"checkpoint": f"checkpoints/{name}.pt", "device": device_name(device)}
        result["main"] = run(10_000 if toy else args.n, 100)
        if not toy:
            result["step_check"] = {s: run(args.check_n, s) for s in (50, 100, 200)}
        result["wall_seconds"] = round(time.perf_counter() - start, 1)
        result["command"] = "python benchmarks/ode_likelihood.py " + " ".join(sys.argv[1:])
        (args.out_dir / f"ode_{name}.json").write_text(json.dumps(result, indent=2) + "\n")
        print(name, json.dumps(result["main"]), flush=True)


if __name__ == "__main__":
    main()
