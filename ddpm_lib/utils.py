"""Device choice, seeding, the quick-mode switch, and the mark of a checked input.

Shared by every chapter and every module; imports nothing else of ``ddpm_lib``.
"""

from __future__ import annotations

import os
import random
import urllib.request
from pathlib import Path

import numpy as np
import torch

QUICK_ENV = "DDPM_QUICK"
_CHECKED = "_ddpm_checked"


def quick_mode() -> bool:
    """True when ``DDPM_QUICK`` is set to 1/true/yes: notebooks shrink their step counts."""
    return os.environ.get(QUICK_ENV, "").strip().lower() in ("1", "true", "yes")


def mark_checked(x: torch.Tensor, what: object) -> torch.Tensor:
    """Mark ``x`` as validated for ``what`` (e.g. ``("steps", T)``) and return it.

    Inputs are validated once, where a caller hands them in; a validated tensor carries this
    mark, so the inner calls it is passed on to trust it instead of reading it back from the
    device (a host sync on a GPU, and an error inside a CUDA-graph capture). A new tensor made
    from it (``t + 1``, ``t.to(...)``) carries no mark and is checked again.
    """
    setattr(x, _CHECKED, what)
    return x


def is_checked(x: object, what: object) -> bool:
    """True when ``x`` is a tensor that :func:`mark_checked` marked for ``what``."""
    return isinstance(x, torch.Tensor) and getattr(x, _CHECKED, None) == what


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


def fetch_url(url: str, dst: Path, timeout: float = 60.0) -> None:
    """``url`` into the file ``dst``, through ``dst.part``: an interrupted fetch leaves no half
    file behind (datasets and checkpoints are downloaded this way)."""
    tmp = dst.with_name(dst.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as f:
            while chunk := response.read(1 << 20):
                f.write(chunk)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, dst)
