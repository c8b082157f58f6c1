"""The GPU fast path before and after the library was put in layers, side by side in one run.

Before: ``fast.GraphedSampler`` replayed a hand-written copy of Algorithm 2 (``ddpm_step``) and
``fast.GraphedTrainStep`` reached into the trainer. After: ``accel.GraphedSampler`` captures the
library's own ``GaussianDiffusion.p_sample`` and ``accel.GraphedStep`` the trainer's public
``update``. This script times both on the same GPU in one process, interleaved (old, new, old,
new, ...) so that clock drift hits both alike, with the configurations of
``benchmarks/bench_gpu.py``:

- training images/s on the fast path (bf16, channels_last, fused AdamW, torch.compile, the whole
  step as one CUDA graph), batch 128;
- seconds for 1000-step ancestral sampling of 256 images (compiled, channels_last, bf16, one CUDA
  graph per step).

It also checks, on the GPU, that the new graphed sampler draws the right distribution (with the
exact ε of Gaussian data, its output variance is known in closed form) and that the graphed
training step trains as the plain one (``bench_gpu.graph_check``). A path-by-path comparison
of graphed and eager sampling is not possible on a GPU: the capture's warm-up steps draw from
the generator, so the graph's noise is a later part of the stream than the eager loop's.

The old library is the package ``ddpm_lib`` of commit 504d53e, copied under another name:
    mkdir -p .bench_old && git archive 504d53e ddpm_lib | tar -x -C .bench_old \
        && mv .bench_old/ddpm_lib .bench_old/ddpm_lib_prev
    python benchmarks/bench_layers.py --old .bench_old --out layers.json
(its imports are relative, so the renamed copy imports itself, not the new library).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_gpu  # noqa: E402

from ddpm_lib.accel.graphs import GraphedSampler  # noqa: E402
from ddpm_lib.diffusion import GaussianDiffusion  # noqa: E402
from ddpm_lib.nets import build_model  # noqa: E402
from ddpm_lib.schedules import linear_beta_schedule  # noqa: E402
from ddpm_lib.training import TrainConfig, Trainer  # noqa: E402

RESULTS: dict = {}


def save(path: Path) -> None:
    path.write_text(json.dumps(RESULTS, indent=2) + "\n")


def trainer_for(lib: str, kind: str, batch: int, device: str):
    """The fast-path trainer of library ``lib`` ("old" or "new") on fixed random data."""
    if lib == "old":
        from ddpm_lib_prev.train import TrainConfig as Config  # noqa: PLC0415
        from ddpm_lib_prev.train import Trainer as TrainerClass  # noqa: PLC0415
    else:
        Config, TrainerClass = TrainConfig, Trainer
    cuda = device == "cuda"
    cfg = Config(
        dataset="mnist" if kind == "hf_course_mnist" else "cifar10",
        model=bench_gpu.our_spec(kind),
        batch_size=batch,
        steps=10**9,
        bf16=True,
        channels_last=True,
        compile=cuda,
        cuda_graph=True,
        out_dir="/tmp/bench_layers_unused",
    )
    shape = bench_gpu.SHAPES[kind]
    data = torch.rand(4096, *shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    return TrainerClass(cfg, data=data, device=device)


def sampler_for(lib: str, kind: str, n: int, T: int, device: str):
    """The graphed sampler of library ``lib``, its network compiled, channels_last, bf16."""
    if lib == "old":
        from ddpm_lib_prev.diffusion import GaussianDiffusion as Diffusion  # noqa: PLC0415
        from ddpm_lib_prev.fast import GraphedSampler as Sampler  # noqa: PLC0415
        from ddpm_lib_prev.models import build_model as build  # noqa: PLC0415
    else:
        Diffusion, Sampler, build = GaussianDiffusion, GraphedSampler, build_model
    torch.manual_seed(0)
    model = build(bench_gpu.our_spec(kind)).to(device).eval()
    model = model.to(memory_format=torch.channels_last)
    if device == "cuda":
        model = torch.compile(model)
    d = Diffusion(linear_beta_schedule(T))
    shape = (n, *bench_gpu.SHAPES[kind])
    if lib == "old":
        return Sampler(d, model, shape, device, bf16=True)
    return Sampler(d, model, shape, device=device, bf16=True)


def oracle_check(device: str, T: int, n: int = 20_000) -> dict:
    """The graphed sampler with the exact ε of Gaussian data x_0 ~ N(0, s²): every step is
    linear-Gaussian, so the variance of its output is known exactly (the errata page's E9);
    the sample variance must match it within its Monte Carlo error (std v √(2/(n-1)))."""
    from ddpm_lib.oracles import GaussianOracle  # noqa: PLC0415

    d = GaussianDiffusion(linear_beta_schedule(T))
    s2 = 0.25
    oracle = GaussianOracle(d, s2)
    v = 1.0
    for i in reversed(range(T)):  # Var(x_{t-1}) = a² Var(x_t) + σ_t², a = coef1 gain + coef2
        a = d.posterior_mean_coef1[i] * oracle.gain[i] + d.posterior_mean_coef2[i]
        v = float(a**2 * v + (d.posterior_variance[i] if i > 0 else 0.0))
    torch.manual_seed(3)
    x = GraphedSampler(d, oracle, (n, 1), device=device, clip_denoised=False).sample()
    var = float(x.double().var())
    se = v * (2 / (n - 1)) ** 0.5
    return {"n": n, "exact_variance": v, "sample_variance": var, "z": (var - v) / se}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", type=Path, required=True, help="folder holding ddpm_lib_prev")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--kinds", default="hf_course_mnist,ddpm_cifar10")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timings per lib")
    parser.add_argument("--iters", type=int, default=50, help="training steps per timing")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny sizes: check the script")
    parser.add_argument("--checks-only", action="store_true", help="the GPU checks, no timing")
    args = parser.parse_args()
    sys.path.insert(0, str(args.old.resolve()))
    device = "cpu" if args.smoke else "cuda"
    bench_gpu.DEVICE = device
    T, n = (10, 2) if args.smoke else (1000, 256)
    RESULTS.update(
        device=torch.cuda.get_device_name() if device == "cuda" else "cpu",
        torch=torch.__version__,
        old="ddpm_lib of commit 504d53e (fast.GraphedSampler / fast.GraphedTrainStep)",
        new="this commit's ddpm_lib (accel.GraphedSampler of p_sample, accel.GraphedStep)",
        command="python " + " ".join(sys.argv),
    )
    start = time.monotonic()
    RESULTS["oracle_check"] = oracle_check(device, T)
    print("oracle check", RESULTS["oracle_check"], flush=True)
    if args.checks_only:
        save(args.out)
        return
    RESULTS["train_check"] = bench_gpu.graph_check(5 if args.smoke else 50)
    print("train check", RESULTS["train_check"]["graphed_vs_plain"], flush=True)
    save(args.out)
    iters = 2 if args.smoke else args.iters
    for kind in args.kinds.split(","):
        entry = RESULTS.setdefault(kind, {})
        trainers = {}
        for lib in ("old", "new"):
            t0 = time.time()
            trainers[lib] = trainer_for(lib, kind, 128, device)
            trainers[lib].train_step()  # capture (and compile)
            entry[f"train_setup_s_{lib}"] = round(time.time() - t0, 1)
        times: dict[str, list[float]] = {"old": [], "new": []}
        for _ in range(args.rounds):
            for lib in ("old", "new"):
                sec = bench_gpu.cuda_time(trainers[lib].train_step, iters=iters, warmup=5)
                times[lib].append(128 / sec)
        entry["train_images_per_s"] = times
        del trainers
        bench_gpu.free_memory()
        samplers = {}
        for lib in ("old", "new"):
            t0 = time.time()
            samplers[lib] = sampler_for(lib, kind, n, T, device)
            samplers[lib].sample()  # capture (and compile)
            entry[f"sample_setup_s_{lib}"] = round(time.time() - t0, 1)
        secs: dict[str, list[float]] = {"old": [], "new": []}
        for _ in range(args.rounds):
            for lib in ("old", "new"):
                secs[lib].append(bench_gpu.cuda_time(samplers[lib].sample, iters=1, warmup=0))
        entry[f"sample_{T}_steps_{n}_images_s"] = secs
        del samplers
        bench_gpu.free_memory()
        med = {k: statistics.median(v) for k, v in times.items()}
        med_s = {k: statistics.median(v) for k, v in secs.items()}
        entry["new_over_old"] = {
            "train_images_per_s": med["new"] / med["old"],
            "sampling_speed": med_s["old"] / med_s["new"],
        }
        print(kind, entry["new_over_old"], flush=True)
        save(args.out)
    RESULTS["wall_s"] = round(time.monotonic() - start, 1)
    save(args.out)


if __name__ == "__main__":
    main()
