"""ddpm_lib vs diffusers vs denoising-diffusion-pytorch on one GPU, side by side in one run.

For each peer configuration, our UNet is built with the same architecture (parameter count and
forward FLOPs per image are measured for both and recorded). Measured, in this order:
  1. the bf16 matmul peak of this GPU (8192³ products), the denominator of every MFU;
  2. training images/s (one step = forward, backward, optimizer; ours also updates the EMA)
     at batch 128 and larger batches, peers in fp32 and bf16 autocast as people run them,
     ours plain (fp32 eager) and on the fast path (bf16, channels_last, fused AdamW, compile);
  3. 1000-step ancestral sampling of 256 images (peers' own samplers; ours eager and graphed).
Results are written to --out (JSON) after every measurement, so a cut-short run keeps its data.

Usage (GPU machine, peers' wheels on PYTHONPATH):  python benchmarks/bench_gpu.py --out r.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ddpm_lib.diffusion import GaussianDiffusion  # noqa: E402
from ddpm_lib.fast import GraphedSampler  # noqa: E402
from ddpm_lib.models import UNet, UNetConfig, count_parameters  # noqa: E402
from ddpm_lib.schedules import linear_beta_schedule  # noqa: E402
from ddpm_lib.train import TrainConfig, Trainer  # noqa: E402

RESULTS: dict = {}
START = time.monotonic()
DEADLINE = float("inf")  # seconds after START; measurements past it are skipped and listed


def out_of_time(what: str) -> bool:
    """True (and ``what`` recorded under "skipped") once the run's deadline has passed."""
    if time.monotonic() - START < DEADLINE:
        return False
    RESULTS.setdefault("skipped", []).append(what)
    return True


DEVICE = "cuda"  # --smoke runs every code path on the CPU at tiny sizes, to check the script
T = 1000  # diffusion steps of every sampler (10 in --smoke)


def save(path: Path) -> None:
    path.write_text(json.dumps(RESULTS, indent=2))


def cuda_time(fn, iters: int, warmup: int) -> float:
    """Seconds per call: ``warmup`` calls, then ``iters`` calls timed with CUDA events."""
    for _ in range(warmup):
        fn()
    if DEVICE == "cpu":
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        return (time.perf_counter() - t0) / iters
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1000 / iters


def matmul_peak() -> float:
    n = 8192 if DEVICE == "cuda" else 256
    a = torch.randn(n, n, device=DEVICE, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=DEVICE, dtype=torch.bfloat16)
    runs = [cuda_time(lambda: a @ b, iters=10, warmup=3) for _ in range(3)]
    return 2 * n**3 / statistics.median(runs) / 1e12


def forward_flops(model, shape) -> float:
    x = torch.randn(1, *shape, device=DEVICE)
    t = torch.tensor([10], device=DEVICE)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x, t)
    return counter.get_total_flops() / 1e9


# ----------------------------------------------------------------------------- peers
class DiffusersEps(torch.nn.Module):
    """UNet2DModel called as model(x, t) -> ε, for FLOP counting."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, x, t):
        return self.unet(x, t).sample


def diffusers_model(kind: str):
    from diffusers import UNet2DModel

    if kind == "hf_course_mnist":
        return UNet2DModel(
            sample_size=28,
            in_channels=1,
            out_channels=1,
            layers_per_block=2,
            block_out_channels=(32, 64, 64),
            down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        )
    return UNet2DModel(  # google/ddpm-cifar10-32
        sample_size=32,
        in_channels=3,
        out_channels=3,
        layers_per_block=2,
        block_out_channels=(128, 256, 256, 256),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    )


OURS = {
    "hf_course_mnist": UNetConfig(
        image_size=28, ch=32, ch_mult=(1, 2, 2), attn_resolutions=(14, 7), dropout=0.0
    ),
    "ddpm_cifar10": UNetConfig(
        image_size=32,
        in_channels=3,
        ch=128,
        ch_mult=(1, 2, 2, 2),
        attn_resolutions=(16,),
        dropout=0.0,
    ),
}
SHAPES = {"hf_course_mnist": (1, 28, 28), "ddpm_cifar10": (3, 32, 32)}


def diffusers_train_step(unet, batch: int, shape, bf16: bool):
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(num_train_timesteps=1000)
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    data = torch.rand(4096, *shape, device=DEVICE) * 2 - 1

    def step():
        x0 = data[torch.randint(len(data), (batch,), device=DEVICE)]
        noise = torch.randn_like(x0)
        t = torch.randint(0, 1000, (batch,), device=DEVICE)
        with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=bf16):
            pred = unet(sched.add_noise(x0, noise, t), t).sample
            loss = F.mse_loss(pred.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def lucidrains_parts():
    from denoising_diffusion_pytorch import GaussianDiffusion as LucidDiffusion
    from denoising_diffusion_pytorch import Unet

    net = Unet(dim=64, dim_mults=(1, 2, 4, 8)).to(DEVICE)
    diff = LucidDiffusion(
        net,
        image_size=32,
        timesteps=1000,
        sampling_timesteps=1000,
        objective="pred_noise",
        beta_schedule="linear",
    ).to(DEVICE)
    return net, diff


def lucidrains_train_step(diff, batch: int, bf16: bool):
    opt = torch.optim.Adam(diff.parameters(), lr=8e-5)
    data = torch.rand(4096, 3, 32, 32, device=DEVICE)

    def step():
        x0 = data[torch.randint(len(data), (batch,), device=DEVICE)]
        with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=bf16):
            loss = diff(x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


# ----------------------------------------------------------------------------- ours
def ours_trainer(
    kind: str, batch: int, fast: bool, compile_mode: str | None = "reduce-overhead"
) -> Trainer:
    cfg = TrainConfig(
        dataset="mnist" if kind == "hf_course_mnist" else "cifar10",
        model={"type": "unet", **OURS[kind].to_dict()},
        batch_size=batch,
        steps=10**9,
        bf16=fast,
        channels_last=fast,
        compile=fast and DEVICE == "cuda",
        compile_mode=compile_mode,
        out_dir="/tmp/bench_unused",
    )
    data = torch.rand(4096, *SHAPES[kind]) * 2 - 1
    return Trainer(cfg, data=data, device=DEVICE)


def images_per_second(step, batch: int, iters: int, warmup: int) -> float:
    return batch / cuda_time(step, iters=iters, warmup=warmup)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--batches", default="128,512")
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--skip-sampling", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny sizes: check the script")
    parser.add_argument("--deadline", type=float, default=float("inf"), help="seconds")
    parser.add_argument("--only", default="hf_course_mnist,ddpm_cifar10,lucidrains")
    args = parser.parse_args()
    global DEVICE, T, DEADLINE
    DEADLINE = args.deadline
    only = set(args.only.split(","))
    if args.smoke:
        DEVICE, T = "cpu", 10
        args.batches, args.iters = "2", 1
    batches = [int(b) for b in args.batches.split(",")]
    import denoising_diffusion_pytorch as ddp_pkg
    import diffusers

    RESULTS["env"] = {
        "gpu": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu (smoke test)",
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "denoising_diffusion_pytorch": getattr(ddp_pkg, "__version__", "2.3.4"),
        "command": " ".join(sys.argv),
    }
    peak = matmul_peak()
    RESULTS["bf16_matmul_peak_tflops"] = peak
    print(f"bf16 matmul peak {peak:.0f} TFLOP/s", flush=True)
    save(args.out)

    for kind in ("hf_course_mnist", "ddpm_cifar10"):
        if kind not in only:
            continue
        shape = SHAPES[kind]
        peer = diffusers_model(kind).to(DEVICE)
        ours = UNet(OURS[kind]).to(DEVICE)
        entry = RESULTS.setdefault(kind, {})
        entry["params"] = {"diffusers": count_parameters(peer), "ours": count_parameters(ours)}
        entry["fwd_gflop_per_image"] = {
            "diffusers": forward_flops(DiffusersEps(peer), shape),
            "ours": forward_flops(ours, shape),
        }
        print(kind, entry["params"], entry["fwd_gflop_per_image"], flush=True)
        train = entry.setdefault("train_images_per_s", {})
        for batch in batches:
            for bf16 in (False, True):
                name = f"diffusers_{'bf16' if bf16 else 'fp32'}_b{batch}"
                if out_of_time(f"{kind}/{name}"):
                    continue
                step = diffusers_train_step(peer, batch, shape, bf16)
                train[name] = images_per_second(step, batch, args.iters, 5)
                print(name, round(train[name]), flush=True)
                save(args.out)
            for fast in (False, True):
                name = f"ours_{'fast' if fast else 'plain_fp32'}_b{batch}"
                if out_of_time(f"{kind}/{name}"):
                    continue
                t0 = time.time()
                trainer = ours_trainer(kind, batch, fast)
                train[name] = images_per_second(trainer.train_step, batch, args.iters, 10)
                train[name + "_setup_s"] = time.time() - t0
                print(name, round(train[name]), flush=True)
                save(args.out)
                del trainer
        flop_img = 3 * entry["fwd_gflop_per_image"]["ours"] * 1e9
        best = {
            side: max(
                (v for k, v in train.items() if k.startswith(side) and "setup" not in k),
                default=None,
            )
            for side in ("diffusers", "ours_fast")
        }
        entry["best_train_images_per_s"] = best
        if best["ours_fast"] and best["diffusers"]:
            entry["ours_fast_mfu"] = best["ours_fast"] * flop_img / (peak * 1e12)
            entry["speedup_vs_diffusers_train_best"] = best["ours_fast"] / best["diffusers"]
        b0 = batches[0]
        if f"ours_fast_b{b0}" in train and f"diffusers_bf16_b{b0}" in train:
            entry[f"speedup_vs_diffusers_train_b{b0}"] = train[f"ours_fast_b{b0}"] / max(
                train[f"diffusers_fp32_b{b0}"], train[f"diffusers_bf16_b{b0}"]
            )
        save(args.out)

        if args.skip_sampling or out_of_time(f"{kind}/sampling"):
            continue
        sample = entry.setdefault("sample_1000_steps_256_images_s", {})
        from diffusers import DDPMScheduler

        sched = DDPMScheduler(num_train_timesteps=T)
        peer.eval()
        for bf16 in (False, True):
            x = torch.randn(256 if DEVICE == "cuda" else 2, *shape, device=DEVICE)

            @torch.no_grad()
            def run_peer(x=x, bf16=bf16, peer=peer, sched=sched):
                sched.set_timesteps(T)
                y = x
                for t in sched.timesteps:
                    with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=bf16):
                        out = peer(y, t).sample
                    y = sched.step(out.float(), t, y).prev_sample
                return y

            name = f"diffusers_{'bf16' if bf16 else 'fp32'}"
            sample[name] = cuda_time(run_peer, iters=1, warmup=0)
            print("sample", name, round(sample[name], 1), flush=True)
            save(args.out)
        d = GaussianDiffusion(linear_beta_schedule(T))
        t0 = time.time()
        fast_model = ours.eval().to(memory_format=torch.channels_last)
        if DEVICE == "cuda":
            fast_model = torch.compile(fast_model)
        n = 256 if DEVICE == "cuda" else 2
        sampler = GraphedSampler(d, fast_model, (n, *shape), DEVICE, bf16=True)
        sampler.sample()  # capture (and compile)
        sample["ours_fast_setup_s"] = time.time() - t0
        sample["ours_fast"] = cuda_time(sampler.sample, iters=1, warmup=0)
        print("sample ours_fast", round(sample["ours_fast"], 2), flush=True)
        sample["speedup_vs_diffusers"] = (
            min(sample["diffusers_fp32"], sample["diffusers_bf16"]) / sample["ours_fast"]
        )
        save(args.out)

    # denoising-diffusion-pytorch: its own Unet(64, (1,2,4,8)); our UNet does not express
    # that layout within 1% parameters / 5% FLOPs, so its figures stand alone (no ratio).
    if "lucidrains" not in only or out_of_time("lucidrains"):
        print(json.dumps(RESULTS, indent=1))
        return
    net, diff = lucidrains_parts()
    entry = RESULTS.setdefault("lucidrains_unet64", {})
    entry["params"] = count_parameters(net)
    entry["fwd_gflop_per_image"] = forward_flops(net, (3, 32, 32))
    train = entry.setdefault("train_images_per_s", {})
    for batch in batches:
        for bf16 in (False, True):
            name = f"lucidrains_{'bf16' if bf16 else 'fp32'}_b{batch}"
            if out_of_time(f"lucidrains/{name}"):
                continue
            train[name] = images_per_second(
                lucidrains_train_step(diff, batch, bf16), batch, args.iters, 5
            )
            print(name, round(train[name]), flush=True)
            save(args.out)
    if not args.skip_sampling and not out_of_time("lucidrains/sampling"):
        diff.eval()
        entry["sample_1000_steps_256_images_s"] = cuda_time(
            lambda: diff.sample(batch_size=256 if DEVICE == "cuda" else 2), iters=1, warmup=0
        )
        save(args.out)
    print(json.dumps(RESULTS, indent=1))


if __name__ == "__main__":
    main()
