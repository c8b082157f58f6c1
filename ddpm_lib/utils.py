"""Device choice and seeding, shared by every chapter."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def cuda_capturing(x: torch.Tensor) -> bool:
    """True while ``x``'s CUDA stream is being captured into a graph: no host reads allowed."""
    return x.is_cuda and torch.cuda.is_current_stream_capturing()


def get_device(prefer: str | None = None) -> torch.device:
    """Return the best available device: CUDA, then Apple MPS, then CPU.

    ``prefer`` ("cuda", "mps", "cpu" or a full spec such as "cuda:1") forces a choice; asking for
    an accelerator that is not present raises a ``RuntimeError`` that says which devices exist.
    The environment variable ``DDPM_DEVICE`` plays the same role when ``prefer`` is None.
    """
    prefer = prefer or os.environ.get("DDPM_DEVICE") or None
    available = ["cpu"]
    if torch.cuda.is_available():
        available.insert(0, "cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        available.insert(len(available) - 1, "mps")
    if prefer is None:
        return torch.device(available[0])
    kind = prefer.split(":")[0]
    if kind not in ("cuda", "mps", "cpu"):
        raise ValueError(f"unknown device {prefer!r}: use 'cuda', 'mps' or 'cpu'")
    if kind not in available:
        raise RuntimeError(
            f"device {prefer!r} was asked for but is not available here; "
            f"available: {', '.join(available)}"
        )
    return torch.device(prefer)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (CPU and every GPU); return a CPU generator seeded alike."""
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (notebooks may use the global NumPy RNG)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)
