"""The chapters' checkpoints: find, download (in Colab), load, or train (load-or-train).

A chapter calls ``load_or_train(name, config)``: it uses the shipped checkpoint
``checkpoints/<name>.pt`` when it can find or fetch it, and trains with ``config`` otherwise.
``quick_mode()`` is the switch (environment variable ``DDPM_QUICK=1``) that ``make test`` sets
so that every notebook runs its same code with tiny step counts.
"""

from __future__ import annotations

import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import load_model
from .diffusion import GaussianDiffusion, diffusion_for
from .train import TrainConfig, Trainer
from .utils import get_device

# The repository's address; _config.yml's repository.url must match (tests/test_pretrained.py).
REPO_URL = "https://github.com/ddpm-book/ddpm-book"
CHECKPOINT_ENV = "DDPM_CHECKPOINTS"
QUICK_ENV = "DDPM_QUICK"


def quick_mode() -> bool:
    """True when ``DDPM_QUICK`` is set to 1/true/yes: notebooks shrink their step counts."""
    return os.environ.get(QUICK_ENV, "").strip().lower() in ("1", "true", "yes")


def cache_dir() -> Path:
    return Path.home() / ".cache" / "ddpm_lib" / "checkpoints"


def find_checkpoint(name: str) -> Path | None:
    """Look for ``<name>.pt`` in $DDPM_CHECKPOINTS, in ``checkpoints/`` of the working directory
    or any of its parents (a clone of the book), then in the download cache."""
    candidates = []
    if os.environ.get(CHECKPOINT_ENV):
        candidates.append(Path(os.environ[CHECKPOINT_ENV]) / f"{name}.pt")
    for folder in (Path.cwd(), *Path.cwd().parents):
        candidates.append(folder / "checkpoints" / f"{name}.pt")
    candidates.append(cache_dir() / f"{name}.pt")
    return next((p for p in candidates if p.is_file()), None)


def download_checkpoint(name: str, timeout: float = 30.0) -> Path | None:
    """Fetch ``checkpoints/<name>.pt`` from the book's repository into the cache (Colab).

    Returns None, with a printed reason, when offline or the file does not exist there.
    """
    url = f"{REPO_URL}/raw/main/checkpoints/{name}.pt"
    dst = cache_dir() / f"{name}.pt"
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as f:
            f.write(response.read())
    except OSError as e:
        print(f"could not download {url} ({e}); will train instead")
        tmp.unlink(missing_ok=True)
        return None
    os.replace(tmp, dst)
    return dst


@dataclass
class Pretrained:
    """A loaded (or freshly trained) model with its diffusion and where it came from."""

    model: nn.Module
    diffusion: GaussianDiffusion
    config: dict[str, Any]
    card: dict[str, Any]
    source: str  # the checkpoint path, or "trained now"


def load_pretrained(
    name: str, device: str | torch.device | None = None, download: bool = True
) -> Pretrained | None:
    """Load the EMA model of checkpoint ``name`` (found, or downloaded when ``download``)."""
    path = find_checkpoint(name) or (download_checkpoint(name) if download else None)
    if path is None:
        return None
    device = get_device(str(device) if device is not None else None)
    model, ckpt = load_model(path, map_location=device)
    return Pretrained(
        model, diffusion_for(ckpt["config"]), ckpt["config"], ckpt.get("card", {}), str(path)
    )


def load_or_train(
    name: str,
    config: TrainConfig,
    device: str | torch.device | None = None,
    download: bool = True,
    progress: bool = True,
) -> Pretrained:
    """The shipped checkpoint ``name`` if it can be had, else a model trained with ``config``."""
    found = load_pretrained(name, device, download)
    if found is not None:
        return found
    trainer = Trainer(config, device=device)
    print(f"no checkpoint {name!r} found: training on {trainer.data_note}")
    trainer.run(progress=progress)
    card = {"steps": trainer.step, "final_loss": trainer.history["loss"][-1]}
    return Pretrained(trainer.ema, trainer.diffusion, trainer.config.to_dict(), card, "trained now")
