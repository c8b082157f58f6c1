"""Where the time goes: torch.profiler over our fast training step and graphed sampling step.

    python benchmarks/profile_fast.py --out profile.txt

For the two architectures of bench_gpu.py (the HF-course MNIST UNet and the 35.7M DDPM-CIFAR
UNet), at batch 128 on the fast path (bf16, channels_last, fused AdamW, torch.compile): warm up,
then profile 10 training steps, and 20 steps of the sampler at batch 256. CUDA graphs are off
while profiling so that every kernel is visible; the benchmark's graphs remove launch gaps, not
kernel time. Writes the top kernels by GPU time, grouped, and a summary of the
shares of convolution, matmul (attention, linear), normalization, elementwise and optimizer
kernels.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench_gpu  # noqa: E402

from ddpm_lib.diffusion import GaussianDiffusion  # noqa: E402
from ddpm_lib.accel.graphs import GraphedSampler  # noqa: E402
from ddpm_lib.nets import UNet  # noqa: E402
from ddpm_lib.schedules import linear_beta_schedule  # noqa: E402

GROUPS = {
    "convolution": ("conv", "cudnn", "implicit", "winograd", "fprop", "dgrad", "wgrad"),
    "matmul / attention": ("gemm", "matmul", "flash", "attention", "sm90_xmma", "cutlass"),
    "normalization": ("norm", "welford"),
    "optimizer / EMA": ("adam", "foreach", "lerp", "multi_tensor"),
}


def group_of(name: str) -> str:
    low = name.lower()
    for group, keys in GROUPS.items():
        if any(k in low for k in keys):
            return group
    return "elementwise / other (incl. triton fused)"


def summarize(prof, title: str, steps: int) -> str:
    events = [
        e for e in prof.key_averages() if e.device_time_total > 0 and e.key != "ProfilerStep*"
    ]
    kernels = [e for e in events if e.device_type.name == "CUDA"]
    total = sum(e.device_time_total for e in kernels)
    shares: dict[str, float] = {}
    for e in kernels:
        shares[group_of(e.key)] = shares.get(group_of(e.key), 0.0) + e.device_time_total
    lines = [f"== {title}: GPU kernel time {total / steps / 1e3:.2f} ms per step"]
    for g, t in sorted(shares.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {g:45s} {100 * t / total:5.1f}%  {t / steps / 1e3:7.3f} ms/step")
    lines.append("  top kernels:")
    for e in sorted(kernels, key=lambda e: -e.device_time_total)[:15]:
        lines.append(
            f"    {100 * e.device_time_total / total:5.1f}%  {e.count // steps:4d}x  {e.key[:110]}"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--only", default="hf_course_mnist,ddpm_cifar10", help="comma list")
    args = p.parse_args()
    report = [f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}"]
    for kind in args.only.split(","):
        # compile without CUDA graphs here, so that the profiler sees each kernel; the kernels
        # are those of the benchmarked run, whose graphs remove only the launch gaps.
        trainer = bench_gpu.ours_trainer(kind, 128, fast=True, cuda_graph=False)
        for _ in range(30):
            trainer.train_step()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(10):
                trainer.train_step()
            torch.cuda.synchronize()
        report.append(summarize(prof, f"{kind} training step, batch 128, fast path", 10))
        model = UNet(bench_gpu.OURS[kind]).cuda().eval().to(memory_format=torch.channels_last)
        d = GaussianDiffusion(linear_beta_schedule(1000))
        sampler = GraphedSampler(
            d, torch.compile(model), (256, *bench_gpu.SHAPES[kind]), device="cuda", bf16=True
        )
        sampler.sample()  # compile and capture
        sampler.T = 20
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            sampler.sample()
            torch.cuda.synchronize()
        report.append(
            summarize(
                prof, f"{kind} sampling step (compiled; graphs off for the profile), batch 256", 20
            )
        )
        print(report[-2], report[-1], sep="\n", flush=True)
        args.out.write_text("\n\n".join(report) + "\n")


if __name__ == "__main__":
    main()
