"""Specification of data-parallel training (ddpm_lib.accel.distributed) on CPU with gloo."""

import os
import socket
import subprocess
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ddpm_lib.accel.distributed import DistInfo, all_mean, current
from ddpm_lib.training import TrainConfig, Trainer
from ddpm_lib.training.checkpoint import load_checkpoint


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(out_dir: str) -> TrainConfig:
    return TrainConfig(
        dataset="moons",
        toy_size=256,
        model={"type": "mlp", "hidden": 32},
        num_timesteps=50,
        steps=20,
        batch_size=16,
        lr=1e-3,
        log_every=5,
        save_every=10,
        out_dir=out_dir,
    )


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        trainer = Trainer(_config(os.path.join(out, "run")), device="cpu")
        first = trainer.data[:4].clone()
        trainer.run(progress=False)
        torch.save(
            {
                "model": trainer.model.state_dict(),
                "ema": trainer.ema.state_dict(),
                "first": first,
                "n": len(trainer.data),
            },
            os.path.join(out, f"rank{rank}.pt"),
        )
        dist.barrier()  # as the CLI does: every rank done before the group is destroyed
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_end_with_identical_weights(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    for key in ("model", "ema"):
        for name, value in r0[key].items():
            assert torch.equal(value, r1[key][name]), (key, name)
    # Each rank trained on its own half of the 256 points (a distributed sampler).
    assert r0["n"] == r1["n"] == 128 and not torch.equal(r0["first"], r1["first"])
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["step"] == 20 and {"torch.0", "torch.1"} <= set(ckpt["rng"])


def test_without_a_process_group_everything_is_rank_zero_of_one():
    info = current()
    assert info == DistInfo() and info.is_main and not info.enabled
    x = torch.tensor([1.0, 2.0])
    assert all_mean(x, info) is x


def _torchrun(*args: str, nproc: int = 2) -> str:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
    cmd += [str(nproc), "-m", "ddpm_lib", "train", *args, "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_torchrun_with_one_process_still_takes_the_ddp_path(tmp_path):
    args = ["--dataset", "moons", "--toy-size", "64", "--num-timesteps", "50", "--steps", "5"]
    out = _torchrun(*args, "--batch-size", "16", "--out-dir", str(tmp_path), nproc=1)
    assert "x 1 processes" in out
    assert "torch.0" in load_checkpoint(tmp_path / "last.pt")["rng"]


def test_torchrun_training_resumes_exactly(tmp_path):
    common = ["--dataset", "moons", "--toy-size", "256", "--num-timesteps", "50"]
    common += ["--batch-size", "16", "--save-every", "10", "--log-every", "10"]
    _torchrun(*common, "--steps", "30", "--out-dir", str(tmp_path / "full"))
    _torchrun(*common, "--steps", "10", "--out-dir", str(tmp_path / "part"))
    _torchrun("--resume", str(tmp_path / "part" / "last.pt"), "--steps", "30")
    full = load_checkpoint(tmp_path / "full" / "last.pt")
    part = load_checkpoint(tmp_path / "part" / "last.pt")
    assert full["step"] == part["step"] == 30
    for key in ("model", "ema"):
        for name, value in full[key].items():
            assert torch.equal(value, part[key][name]), (key, name)
