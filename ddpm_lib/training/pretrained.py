"""The chapters' checkpoints: find, download (in Colab), load, or train (load-or-train).

A chapter calls ``load_or_train(name)``: it uses the shipped checkpoint ``checkpoints/<name>.pt``
when it can find or fetch it, and otherwise trains with the recipe that made that checkpoint
(:data:`~ddpm_lib.training.recipes.RECIPES`), cut to a few steps in quick mode, downloading its
data when missing. It never returns nothing: what cannot be had is said, with the ways to
provide it (:class:`CheckpointNotFoundError`).
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data import DatasetNotFoundError
from ..diffusion import GaussianDiffusion
from ..utils import fetch_url, get_device, quick_mode
from .checkpoint import load_model
from .config import diffusion_for
from .recipes import recipe
from .trainer import Trainer, device_name

# The repository's address; _config.yml's repository.url must match (tests/test_pretrained.py).
REPO_URL = "https://github.com/ddpm-book/ddpm-book"
CHECKPOINT_ENV = "DDPM_CHECKPOINTS"


class CheckpointNotFoundError(FileNotFoundError):
    """A shipped checkpoint is in none of the searched places and could not be downloaded.

    ``reason`` says in a few words why (not downloaded, or the download's error).
    """

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason


def cache_dir() -> Path:
    """Where downloaded checkpoints go: ``~/.cache/ddpm_lib/checkpoints``."""
    return Path.home() / ".cache" / "ddpm_lib" / "checkpoints"


def runs_dir() -> Path:
    """Where the load-or-train fallback trains in full mode: ``~/.cache/ddpm_lib/runs``."""
    return Path.home() / ".cache" / "ddpm_lib" / "runs"


def checkpoint_url(name: str) -> str:
    """Where ``download_checkpoint`` fetches ``<name>.pt``: the repository's ``checkpoints/``."""
    return f"{REPO_URL}/raw/main/checkpoints/{name}.pt"


def checkpoint_candidates(name: str) -> list[Path]:
    """The places searched for ``<name>.pt``, in order: $DDPM_CHECKPOINTS, ``checkpoints/`` of
    the working directory and of each of its parents (a clone of the book), the download cache."""
    candidates = []
    if os.environ.get(CHECKPOINT_ENV):
        candidates.append(Path(os.environ[CHECKPOINT_ENV]) / f"{name}.pt")
    for folder in (Path.cwd(), *Path.cwd().parents):
        candidates.append(folder / "checkpoints" / f"{name}.pt")
    candidates.append(cache_dir() / f"{name}.pt")
    return candidates


def find_checkpoint(name: str) -> Path | None:
    """The first of :func:`checkpoint_candidates` that exists, or None."""
    return next((p for p in checkpoint_candidates(name) if p.is_file()), None)


def download_checkpoint(name: str, timeout: float = 30.0) -> Path:
    """Fetch ``checkpoints/<name>.pt`` from the book's repository into the cache (Colab).

    Raises OSError (offline, or the file is not there) and leaves no partial file behind.
    """
    url = checkpoint_url(name)
    dst = cache_dir() / f"{name}.pt"
    dst.parent.mkdir(parents=True, exist_ok=True)
    fetch_url(url, dst, timeout)
    print(f"downloaded {url} to {dst}")
    return dst


def _not_found_message(name: str, download_error: str | None) -> str:
    """What was searched, what the download said, and the ways to provide checkpoint ``name``."""
    lines = [f"The checkpoint {name!r} ({name}.pt) was not found. Looked in:"]
    lines += [f"  {p}" for p in checkpoint_candidates(name)]
    url = checkpoint_url(name)
    if download_error is None:
        lines.append(f"Not downloaded (download=False); it is at {url}")
    else:
        lines.append(f"Downloading {url} failed: {download_error}")
    lines += [
        "To provide it:",
        "  - when online, call with download=True (the default) to fetch it into the cache;"
        if download_error is None
        else "  - when online again, run this once more: it is fetched into the cache;",
        f"  - or download {url} yourself and put it in {cache_dir()}, or in a folder named by "
        f"${CHECKPOINT_ENV};",
        "  - or run from a clone of the book, whose checkpoints/ folder holds it;",
        f"  - or train it: load_or_train({name!r}) trains the recipe that made it "
        f"(python -m ddpm_lib train --recipe {name} on the command line).",
    ]
    return "\n".join(lines)


def _find_or_download(name: str, download: bool) -> Path:
    path = find_checkpoint(name)
    if path is not None:
        return path
    if not download:
        raise CheckpointNotFoundError(_not_found_message(name, None), "not found, download=False")
    try:
        return download_checkpoint(name)
    except OSError as err:  # offline, HTTP 404, disk full...
        reason = f"not found, and the download failed: {err}"
        raise CheckpointNotFoundError(_not_found_message(name, str(err)), reason) from err


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
) -> Pretrained:
    """Load the EMA model of checkpoint ``name`` (found, or downloaded when ``download``).

    Raises :class:`CheckpointNotFoundError`, naming the places searched, the download's error
    and the ways to provide the file, when it can be had neither way.
    """
    path = _find_or_download(name, download)
    device = get_device(str(device) if device is not None else None)
    model, ckpt = load_model(path, map_location=device)
    return Pretrained(
        model, diffusion_for(ckpt["config"]), ckpt["config"], ckpt.get("card", {}), str(path)
    )


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class _Progress:
    """The fallback's own reports: the measured pace (after a few steps) and a save each
    minute, so an interrupted full run is continued by the next call, not restarted."""

    def __init__(self, trainer: Trainer, limit_s: float, save: bool, every_s: float = 60.0):
        self.first_step, self.first_seconds = trainer.step, trainer.train_seconds
        self.limit_s, self.save, self.every_s = limit_s, save, every_s
        self.last_save = time.monotonic()
        self.reported = False

    def __call__(self, trainer: Trainer) -> None:
        done = trainer.step - self.first_step
        if not self.reported and done == 5:
            self.reported = True
            pace = (trainer.train_seconds - self.first_seconds) / done
            left = min(pace * (trainer.config.steps - trainer.step), self.limit_s)
            print(f"measured {pace:.2f} s per step on this device: about {_duration(left)} to go")
        if self.save and time.monotonic() - self.last_save > self.every_s:
            trainer.save()
            self.last_save = time.monotonic()


def load_or_train(
    name: str,
    *,
    device: str | torch.device | None = None,
    download: bool = True,
    progress: bool = True,
) -> Pretrained:
    """The shipped checkpoint ``name`` if it can be had, else a model trained by its recipe.

    The recipe is ``RECIPES[name]``, the one that made the shipped file; its data is downloaded
    when missing if ``download``. In quick mode (``DDPM_QUICK=1``) it is cut to a few steps and
    trained in a temporary folder. A full fallback run says first how long it may take and
    where it writes, saves to ``~/.cache/ddpm_lib/runs/<name>`` each minute and at the end, and
    the next call loads the finished run from there, or continues an interrupted one. When the
    data cannot be had either, :class:`CheckpointNotFoundError` says how to provide either.
    """
    try:
        return load_pretrained(name, device, download)
    except CheckpointNotFoundError as err:
        missing = err
    reason = missing.reason
    quick = quick_mode()
    config = recipe(name, quick=quick).replace(download=download)
    if get_device(str(device) if device is not None else None).type != "cuda":
        # The GPU fast path's options (how the run goes, not what it trains) only slow a CPU:
        # torch.compile takes minutes there and bf16 autocast is slower than float32.
        config = config.replace(bf16=False, channels_last=False, compile=False, cuda_graph=False)
    scratch = tempfile.TemporaryDirectory(prefix=f"ddpm_{name}_") if quick else None
    out_dir = Path(scratch.name) if scratch else runs_dir() / name
    limit_s = 60 * config.time_limit if config.time_limit else math.inf
    try:
        last = out_dir / "last.pt"
        try:
            if last.is_file():
                trainer = Trainer.from_checkpoint(
                    last, device=device, download=download, out_dir=str(out_dir), steps=config.steps
                )
            else:
                trainer = Trainer(config.replace(out_dir=str(out_dir)), device=device)
        except DatasetNotFoundError as data_err:
            needs = "Training it here instead needs its data, which cannot be had:"
            raise CheckpointNotFoundError(f"{missing}\n{needs}\n{data_err}", reason) from data_err
        left_s = limit_s - trainer.train_seconds
        finished = trainer.step >= config.steps or left_s <= 0
        if not last.is_file():
            print(f"no checkpoint {name!r} ({reason}): training its recipe on {trainer.data_note}")
        elif finished:
            print(f"no checkpoint {name!r} ({reason}): using the run trained earlier, {last}")
        else:
            print(f"no checkpoint {name!r} ({reason}): continuing {last} at step {trainer.step}")
        if not finished:
            if config.time_limit:  # the limit counts over resumes; Trainer.run's over one run
                trainer.config = trainer.config.replace(time_limit=left_s / 60)
            bound = f"{config.steps:,} steps"
            if math.isfinite(left_s):
                bound += f" or {_duration(left_s)} of training, whichever comes first"
            where = "a temporary folder (quick mode)" if quick else str(out_dir)
            print(
                f"training on {device_name(trainer.device)} from step {trainer.step}: up to "
                f"{bound}; checkpoints go to {where}"
                + ("" if quick else " (interrupted, the next call continues from there)")
            )
            trainer.run(progress=progress, callback=_Progress(trainer, left_s, save=not quick))
    finally:
        if scratch is not None:
            scratch.cleanup()
    losses = trainer.history["loss"]
    card = {"steps": trainer.step, "final_loss": losses[-1] if losses else None}
    return Pretrained(trainer.ema, trainer.diffusion, trainer.config.to_dict(), card, "trained now")
