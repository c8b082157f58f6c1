"""The chapters' checkpoints: find, download (in Colab), load, or train (load-or-train).

A chapter calls ``load_or_train(name)``: it uses the shipped checkpoint ``checkpoints/<name>.pt``
when it can find or fetch it, and otherwise trains with the recipe that made that checkpoint
(:data:`~ddpm_lib.training.recipes.RECIPES`), cut to a few steps in quick mode.
"""

from __future__ import annotations

import os
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..diffusion import GaussianDiffusion
from ..utils import get_device, quick_mode
from .checkpoint import load_model
from .config import diffusion_for
from .recipes import recipe
from .trainer import Trainer

# The repository's address; _config.yml's repository.url must match (tests/test_pretrained.py).
REPO_URL = "https://github.com/ddpm-book/ddpm-book"
CHECKPOINT_ENV = "DDPM_CHECKPOINTS"


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
    *,
    device: str | torch.device | None = None,
    download: bool = True,
    progress: bool = True,
) -> Pretrained:
    """The shipped checkpoint ``name`` if it can be had, else a model trained by its recipe.

    The recipe is ``RECIPES[name]``, the one that made the shipped file; in quick mode
    (``DDPM_QUICK=1``) it is cut to a few steps and trained in a temporary folder. A full
    fallback run writes its checkpoints to ``~/.cache/ddpm_lib/runs/<name>``: the next call
    loads the finished run from there, or continues an interrupted one.
    """
    found = load_pretrained(name, device, download)
    if found is not None:
        return found
    quick = quick_mode()
    config = recipe(name, quick=quick)
    scratch = tempfile.TemporaryDirectory(prefix=f"ddpm_{name}_") if quick else None
    out_dir = Path(scratch.name) if scratch else cache_dir().parent / "runs" / name
    try:
        last = out_dir / "last.pt"
        if last.is_file():
            trainer = Trainer.from_checkpoint(last, device=device)
            print(f"no checkpoint {name!r} found: continuing {last} at step {trainer.step}")
        else:
            trainer = Trainer(config.replace(out_dir=str(out_dir)), device=device)
            print(f"no checkpoint {name!r} found: training its recipe on {trainer.data_note}")
        limit = config.time_limit
        if trainer.step < config.steps and not (limit and trainer.train_seconds >= 60 * limit):
            trainer.run(progress=progress)
    finally:
        if scratch is not None:
            scratch.cleanup()
    card = {"steps": trainer.step, "final_loss": trainer.history["loss"][-1]}
    return Pretrained(trainer.ema, trainer.diffusion, trainer.config.to_dict(), card, "trained now")
