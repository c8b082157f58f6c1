"""Data-parallel training over several processes (``torchrun``), one GPU each.

``python -m ddpm_lib train`` runs unchanged under ``torchrun --nproc_per_node N``: every
process trains a replica wrapped in DistributedDataParallel on its own shard of the data;
gradients are averaged, so the replicas stay identical; rank 0 alone logs and writes checkpoints.
NCCL on GPUs, gloo on CPUs (the tests run two CPU processes).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

Tensor = torch.Tensor


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job; rank 0 of 1 when not distributed."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launched: bool = False  # a process group exists (torchrun), even with one process

    @property
    def enabled(self) -> bool:
        return self.launched or self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed() -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    Uses NCCL when CUDA is available (pinning this process to GPU ``LOCAL_RANK``), else gloo.
    Returns the process's DistInfo; a plain ``python`` run returns rank 0 of 1. Under
    ``torchrun --nproc_per_node 1`` the group is formed too, so one GPU runs the DDP path.
    """
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistInfo()
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return current()


def current() -> DistInfo:
    """DistInfo of an already initialised process group (rank 0 of 1 if there is none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo()
    local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    return DistInfo(dist.get_rank(), dist.get_world_size(), local, launched=True)


def all_mean(x: Tensor, info: DistInfo) -> Tensor:
    """The mean of ``x`` over all processes (``x`` itself when not distributed)."""
    if not info.enabled:
        return x
    x = x.clone()
    dist.all_reduce(x)
    return x / info.world_size


def gather(obj: Any, info: DistInfo) -> list[Any]:
    """Every process's ``obj``, in rank order (a one-element list when not distributed)."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    """Wait until every process gets here (nothing to wait for when not distributed)."""
    if info.enabled and dist.is_initialized():
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
