"""ddpm_lib vs diffusers vs denoising-diffusion-pytorch on one GPU, side by side in one run.

For each of the three peer configurations, our network is built with the same architecture
(parameter count and forward FLOPs per image are measured for both and recorded): our UNet for
the two diffusers configs, our ResUNet for denoising-diffusion-pytorch's Unet(64, (1,2,4,8)).
Measured, in this order, all in one process:
  1. the bf16 matmul peak of this GPU (8192³ products), the denominator of every MFU;
  2. a check that the CUDA-graphed training step trains as the plain one does (fp32);
  3. per config, training images/s (one step = batch draw, forward, backward, optimizer; ours
     also updates the EMA) at batch 128 and larger batches, peers in fp32 and bf16 autocast as
     people run them, ours plain (fp32 eager, batch 128) and on the fast path (bf16,
     channels_last, fused AdamW, torch.compile, the whole step as one CUDA graph);
  4. per config, 1000-step ancestral sampling of 256 images (peers' own samplers in fp32 and
     bf16; ours compiled, bf16, one CUDA graph per step).
Results are written to --out (JSON) after every measurement, so a cut-short run keeps its data;
--table writes the markdown table of the book's performance page from the JSON.

Usage (GPU machine, peers' wheels on PYTHONPATH):
    python benchmarks/bench_gpu.py --out r.json --table r.md      # about 15 min on an H100
    python benchmarks/bench_gpu.py --table r.md --from-json r.json  # the table again, no GPU
"""

from __future__ import annotations

import argparse
import gc
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
from ddpm_lib.accel.graphs import GraphedSampler  # noqa: E402
from ddpm_lib.nets import UNetConfig, build_model, count_parameters  # noqa: E402
from ddpm_lib.nets.resunet import ResUNetConfig  # noqa: E402
from ddpm_lib.schedules import linear_beta_schedule  # noqa: E402
from ddpm_lib.training import TrainConfig, Trainer  # noqa: E402

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
N_SAMPLE = 256  # images per sampling run (2 in --smoke)


def save(path: Path) -> None:
    path.write_text(json.dumps(RESULTS, indent=2))


def free_memory() -> None:
    """Drop what the last measurement left (trainers hold reference cycles, graphs pools)."""
    gc.collect()
    if DEVICE == "cuda":
        torch.cuda.empty_cache()


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


KINDS = ("hf_course_mnist", "ddpm_cifar10", "lucidrains_unet64")
PEER = {
    "hf_course_mnist": "diffusers",
    "ddpm_cifar10": "diffusers",
    "lucidrains_unet64": "lucidrains",
}
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
    "lucidrains_unet64": ResUNetConfig(
        image_size=32, in_channels=3, dim=64, dim_mults=(1, 2, 4, 8)
    ),
}
SHAPES = {
    "hf_course_mnist": (1, 28, 28),
    "ddpm_cifar10": (3, 32, 32),
    "lucidrains_unet64": (3, 32, 32),
}
BATCHES = {"hf_course_mnist": (128, 512, 1024), "ddpm_cifar10": (128, 256, 512)}
BATCHES["lucidrains_unet64"] = BATCHES["ddpm_cifar10"]


def our_spec(kind: str) -> dict:
    model_type = "resunet" if kind == "lucidrains_unet64" else "unet"
    return {"type": model_type, **OURS[kind].to_dict()}


def our_model(kind: str) -> torch.nn.Module:
    return build_model(our_spec(kind))


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
        timesteps=T,
        sampling_timesteps=T,
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


def peer_parts(kind: str):
    """(ε-network for counting, diffusion object or None) of the peer library's config."""
    if PEER[kind] == "lucidrains":
        return lucidrains_parts()
    return diffusers_model(kind).to(DEVICE), None


def peer_train_step(kind: str, net, diff, batch: int, bf16: bool):
    if PEER[kind] == "lucidrains":
        return lucidrains_train_step(diff, batch, bf16)
    return diffusers_train_step(net, batch, SHAPES[kind], bf16)


def peer_sampler(kind: str, net, diff, bf16: bool):
    """A function drawing N_SAMPLE images by the peer's own 1000-step ancestral sampler."""
    shape = SHAPES[kind]
    if PEER[kind] == "lucidrains":
        diff.eval()

        @torch.no_grad()
        def run_lucid():
            with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=bf16):
                return diff.sample(batch_size=N_SAMPLE)

        return run_lucid
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(num_train_timesteps=T)
    net.eval()

    @torch.no_grad()
    def run_diffusers():
        sched.set_timesteps(T)
        y = torch.randn(N_SAMPLE, *shape, device=DEVICE)
        for t in sched.timesteps:
            with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=bf16):
                out = net(y, t).sample
            y = sched.step(out.float(), t, y).prev_sample
        return y

    return run_diffusers


# ----------------------------------------------------------------------------- ours
def ours_trainer(kind: str, batch: int, fast: bool, cuda_graph: bool | None = None) -> Trainer:
    """Our Trainer on fixed random data of the config's shape; ``fast`` turns on the GPU fast
    path, whose CUDA graph of the whole step ``cuda_graph`` may switch on or off alone."""
    cfg = TrainConfig(
        dataset="mnist" if kind == "hf_course_mnist" else "cifar10",
        model=our_spec(kind),
        batch_size=batch,
        steps=10**9,
        bf16=fast,
        channels_last=fast,
        compile=fast and DEVICE == "cuda",
        cuda_graph=fast if cuda_graph is None else cuda_graph,
        out_dir="/tmp/bench_unused",
    )
    data = torch.rand(4096, *SHAPES[kind], generator=torch.Generator().manual_seed(0)) * 2 - 1
    return Trainer(cfg, data=data, device=DEVICE)


def images_per_second(step, batch: int, iters: int, warmup: int) -> float:
    return batch / cuda_time(step, iters=iters, warmup=warmup)


def graph_check(steps: int) -> dict:
    """The graphed step against the plain one, fp32 (TF32 off) without compile, same seed: they
    draw the same batches, t and ε, so the losses agree up to rounding. A second plain run
    calibrates: its differences from the first are cuDNN's run-to-run rounding. Adam turns a
    gradient entry's rounding into a ±lr step where that entry is near zero, so weights can
    differ by a few times lr (2e-4) even when every step computes the same function."""
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    runs = []
    for graphed in (False, False, True):
        trainer = ours_trainer("hf_course_mnist", 128, fast=False, cuda_graph=graphed)
        losses = torch.stack([trainer.train_step() for _ in range(steps)])
        runs.append((trainer, losses))
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32

    @torch.no_grad()
    def max_diff(m1, m2):
        pairs = zip(m1.parameters(), m2.parameters(), strict=True)
        return max(float((x - y).abs().max()) for x, y in pairs)

    out: dict = {"steps": steps, "loss_first_last": [float(runs[0][1][0]), float(runs[0][1][-1])]}
    for name, (other, losses) in (("plain_vs_plain", runs[1]), ("graphed_vs_plain", runs[2])):
        plain = runs[0][0]
        out[name] = {
            "max_abs_loss_difference": float((losses - runs[0][1]).abs().max()),
            "max_abs_weight_difference": max_diff(plain.model, other.model),
            "max_abs_ema_difference": max_diff(plain.ema, other.ema),
            "same_generator_states": all(
                torch.equal(a.get_state(), b.get_state())
                for a, b in ((plain.data_gen, other.data_gen), (plain.noise_gen, other.noise_gen))
            ),
        }
    del runs
    free_memory()
    return out


def best(train: dict, prefix: str) -> tuple[float | None, str | None]:
    keys = [k for k in train if k.startswith(prefix) and "setup" not in k]
    if not keys:
        return None, None
    key = max(keys, key=lambda k: train[k])
    return train[key], key


def measure(kind: str, args) -> None:
    shape, peer_name = SHAPES[kind], PEER[kind]
    entry = RESULTS.setdefault(kind, {"peer": peer_name})
    net, diff = peer_parts(kind)
    ours = our_model(kind).to(DEVICE)
    peer_eps = DiffusersEps(net) if peer_name == "diffusers" else net
    entry["params"] = {peer_name: count_parameters(net), "ours": count_parameters(ours)}
    entry["fwd_gflop_per_image"] = {
        peer_name: forward_flops(peer_eps, shape),
        "ours": forward_flops(ours, shape),
    }
    print(kind, entry["params"], entry["fwd_gflop_per_image"], flush=True)
    save(args.out)
    batches = [int(b) for b in args.batches.split(",")] if args.batches else BATCHES[kind]
    train = entry.setdefault("train_images_per_s", {})
    for batch in batches:
        for bf16 in (False, True):
            name = f"{peer_name}_{'bf16' if bf16 else 'fp32'}_b{batch}"
            if out_of_time(f"{kind}/{name}"):
                continue
            step = peer_train_step(kind, net, diff, batch, bf16)
            train[name] = images_per_second(step, batch, args.iters, 5)
            print(name, round(train[name]), flush=True)
            save(args.out)
            del step
            free_memory()
        for fast in (False, True) if batch == batches[0] else (True,):
            name = f"ours_{'fast' if fast else 'plain_fp32'}_b{batch}"
            if out_of_time(f"{kind}/{name}"):
                continue
            t0 = time.time()
            trainer = ours_trainer(kind, batch, fast)
            train[name] = images_per_second(trainer.train_step, batch, args.iters, 10)
            train[name + "_setup_s"] = time.time() - t0
            print(name, round(train[name]), f"(setup {train[name + '_setup_s']:.0f} s)", flush=True)
            save(args.out)
            del trainer
            free_memory()
    flop_img = 3 * entry["fwd_gflop_per_image"]["ours"] * 1e9
    peak = RESULTS["bf16_matmul_peak_tflops"] * 1e12
    peer_best, peer_key = best(train, peer_name)
    ours_best, ours_key = best(train, "ours_fast")
    entry["best_train"] = {peer_name: [peer_key, peer_best], "ours_fast": [ours_key, ours_best]}
    ratio = entry.setdefault(f"speedup_vs_{peer_name}", {})
    b0 = batches[0]
    if ours_best and peer_best:
        entry["ours_fast_mfu_best"] = ours_best * flop_img / peak
        ratio["train_best_batch"] = ours_best / peer_best
    if f"ours_fast_b{b0}" in train and f"{peer_name}_bf16_b{b0}" in train:
        entry[f"ours_fast_mfu_b{b0}"] = train[f"ours_fast_b{b0}"] * flop_img / peak
        ratio[f"train_b{b0}"] = train[f"ours_fast_b{b0}"] / max(
            train[f"{peer_name}_fp32_b{b0}"], train[f"{peer_name}_bf16_b{b0}"]
        )
    save(args.out)

    if args.skip_sampling:
        return
    sample = entry.setdefault(f"sample_1000_steps_{N_SAMPLE}_images_s", {})
    for bf16 in (False, True):
        name = f"{peer_name}_{'bf16' if bf16 else 'fp32'}"
        if out_of_time(f"{kind}/sample/{name}"):
            continue
        sample[name] = cuda_time(peer_sampler(kind, net, diff, bf16), iters=1, warmup=0)
        print("sample", name, round(sample[name], 1), flush=True)
        save(args.out)
    del net, diff, peer_eps
    free_memory()
    if out_of_time(f"{kind}/sample/ours_fast"):
        return
    d = GaussianDiffusion(linear_beta_schedule(T))
    t0 = time.time()
    fast_model = ours.eval().to(memory_format=torch.channels_last)
    if DEVICE == "cuda":
        fast_model = torch.compile(fast_model)
    sampler = GraphedSampler(d, fast_model, (N_SAMPLE, *shape), device=DEVICE, bf16=True)
    sampler.sample()  # capture (and compile)
    sample["ours_fast_setup_s"] = time.time() - t0
    sample["ours_fast"] = cuda_time(sampler.sample, iters=1, warmup=0)
    print("sample ours_fast", round(sample["ours_fast"], 2), flush=True)
    peer_times = [v for k, v in sample.items() if k.startswith(peer_name)]
    if peer_times:
        ratio["sample"] = min(peer_times) / sample["ours_fast"]
    save(args.out)
    del sampler, fast_model
    free_memory()


# ----------------------------------------------------------------------------- table
TARGETS = {
    ("ddpm_cifar10", "train_b128"): "≥ 3× (≥ 26% MFU)",
    ("ddpm_cifar10", "train_best_batch"): "≥ 3×",
    ("ddpm_cifar10", "sample"): "≥ 5×",
    ("hf_course_mnist", "train_b128"): "≥ 5×",
    ("hf_course_mnist", "train_best_batch"): "≥ 5×",
    ("hf_course_mnist", "sample"): "≥ 5×",
}
TITLES = {
    "hf_course_mnist": "1.7M MNIST UNet (diffusers HF-course config)",
    "ddpm_cifar10": "35.7M DDPM-CIFAR UNet (diffusers google/ddpm-cifar10-32 config)",
    "lucidrains_unet64": "35.7M denoising-diffusion-pytorch Unet(64, (1,2,4,8))",
}


def table(results: dict) -> str:
    """Markdown table of the run: one row per (config, measurement), the peer's best of
    fp32/bf16 beside ours, the ratio and the target."""
    peak = results["bf16_matmul_peak_tflops"]
    lines = [
        "| configuration | measurement | peer (library) | ddpm_lib | ratio | target |",
        "|---|---|---|---|---|---|",
    ]
    for kind in KINDS:
        e = results.get(kind)
        if not e or "train_images_per_s" not in e:
            continue
        peer, tr = e["peer"], e["train_images_per_s"]
        ratio = e.get(f"speedup_vs_{peer}", {})
        first = min(int(k.rsplit("_b", 1)[1]) for k in tr if k.startswith(peer))
        rows = []
        pk = [tr.get(f"{peer}_fp32_b{first}"), tr.get(f"{peer}_bf16_b{first}")]
        if all(pk) and f"ours_fast_b{first}" in tr:
            mfu = e.get(f"ours_fast_mfu_b{first}", 0)
            rows.append(
                (
                    f"training images/s, batch {first}",
                    f"{max(pk):,.0f}",
                    f"{tr[f'ours_fast_b{first}']:,.0f} ({mfu:.0%} MFU)",
                    ratio.get(f"train_b{first}"),
                    "train_b128",
                )
            )
        (pkey, pval), (okey, oval) = e["best_train"][peer], e["best_train"]["ours_fast"]
        if pval and oval:
            rows.append(
                (
                    "training images/s, each side's best batch",
                    f"{pval:,.0f} (b{pkey.rsplit('_b', 1)[1]}, {pkey.split('_')[1]})",
                    f"{oval:,.0f} (b{okey.rsplit('_b', 1)[1]}, {e['ours_fast_mfu_best']:.0%} MFU)",
                    ratio.get("train_best_batch"),
                    "train_best_batch",
                )
            )
        sm = e.get(f"sample_1000_steps_{N_SAMPLE}_images_s", {})
        peer_s = {k: v for k, v in sm.items() if k.startswith(peer)}
        if peer_s and "ours_fast" in sm:
            k = min(peer_s, key=peer_s.get)
            rows.append(
                (
                    f"1000-step sampling of {N_SAMPLE} images",
                    f"{peer_s[k]:.1f} s ({k.split('_')[1]})",
                    f"{sm['ours_fast']:.2f} s",
                    ratio.get("sample"),
                    "sample",
                )
            )
        for what, theirs, mine, r, key in rows:
            target = TARGETS.get((kind, key), "–")
            rtxt = f"{r:.2f}×" if r else "–"
            lines.append(f"| {TITLES[kind]} | {what} | {theirs} | {mine} | {rtxt} | {target} |")
    gpu = results["env"]["gpu"]
    lines.append("")
    lines.append(
        f"{gpu}, bf16 matmul peak measured in the same run: {peak:.0f} TFLOP/s; "
        "MFU = 3 × forward FLOPs per image × images/s ÷ that peak."
    )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path)
    parser.add_argument("--table", type=Path, help="also write the markdown table here")
    parser.add_argument("--from-json", type=Path, help="only write --table from this JSON")
    parser.add_argument("--batches", help="comma list for every config (default: per config)")
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--graph-check-steps", type=int, default=20)
    parser.add_argument("--skip-sampling", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny sizes: check the script")
    parser.add_argument("--deadline", type=float, default=float("inf"), help="seconds")
    parser.add_argument("--only", default=",".join(KINDS))
    args = parser.parse_args()
    if args.from_json:
        if not args.table:
            parser.error("--from-json needs --table")
        args.table.write_text(table(json.loads(args.from_json.read_text())))
        return
    if not args.out:
        parser.error("--out is required (or --from-json with --table)")
    global DEVICE, T, DEADLINE, N_SAMPLE
    DEADLINE = args.deadline
    if args.smoke:
        DEVICE, T, N_SAMPLE = "cpu", 10, 2
        args.batches, args.iters, args.graph_check_steps = "2", 1, 2
    import denoising_diffusion_pytorch as ddp_pkg
    import diffusers

    RESULTS["env"] = {
        "gpu": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu (smoke test)",
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "denoising_diffusion_pytorch": getattr(ddp_pkg, "__version__", "2.3.4"),
        "command": " ".join(sys.argv),
        "date": time.strftime("%Y-%m-%d"),
    }
    if DEVICE == "cuda":  # both sides: cuDNN times its algorithms once per shape, keeps the best
        torch.backends.cudnn.benchmark = True
    RESULTS["env"]["cudnn_benchmark"] = torch.backends.cudnn.benchmark
    peak = matmul_peak()
    RESULTS["bf16_matmul_peak_tflops"] = peak
    print(f"bf16 matmul peak {peak:.0f} TFLOP/s", flush=True)
    RESULTS["graph_check"] = graph_check(args.graph_check_steps)
    print("graph check", RESULTS["graph_check"], flush=True)
    save(args.out)
    for kind in KINDS:
        if kind in args.only.split(",") and not out_of_time(kind):
            measure(kind, args)
    RESULTS["wall_s"] = time.monotonic() - START
    save(args.out)
    if args.table:
        args.table.write_text(table(RESULTS))
    print(json.dumps(RESULTS, indent=1))


if __name__ == "__main__":
    main()
