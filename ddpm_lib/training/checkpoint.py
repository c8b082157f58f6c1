"""Checkpoints: atomic writes, safe loading (``weights_only=True``) and clear errors.

A training checkpoint is a dict of tensors and plain values only, so it loads with
``torch.load(..., weights_only=True)``: no pickled code ever runs on load.

    {"format": "ddpm_lib.checkpoint", "version": 1, "config": {...}, "step": int,
     "model": state_dict, "ema": state_dict, "optimizer": state_dict | None,
     "rng": {name: ByteTensor}, "history": {"step": [...], "loss": [...]}}

A release checkpoint (``export_release``) keeps only the EMA weights in half precision, the
config and the model card's figures; it loads the same way.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..nets import build_model

FORMAT = "ddpm_lib.checkpoint"
VERSION = 1
REQUIRED = ("format", "version", "config", "step", "model")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: missing, corrupt, truncated or for another model."""


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically: to ``path.tmp``, fsync, then rename.

    A crash mid-write leaves the previous file at ``path`` untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save({"format": FORMAT, "version": VERSION, **state}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and check a checkpoint written by :func:`save_checkpoint` or :func:`export_release`.

    Raises :class:`CheckpointError` naming the file and the remedy when it is missing,
    truncated, corrupt, not a ddpm_lib checkpoint, or lacks a required entry.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {path} does not exist; train one with `python -m ddpm_lib train` "
            "or pass the path of an existing .pt file"
        )
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200]}); use an earlier checkpoint, re-download the "
            "shipped one, or train again"
        ) from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a ddpm_lib checkpoint (no 'format': '{FORMAT}' entry); "
            "checkpoints from other libraries must be converted first"
        )
    if ckpt.get("version", 0) > VERSION:
        raise CheckpointError(
            f"{path} has format version {ckpt['version']}, newer than this ddpm_lib reads "
            f"({VERSION}); upgrade ddpm_lib"
        )
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {missing}; it is incomplete")
    return ckpt


def config_mismatch(saved: dict[str, Any], wanted: dict[str, Any], keys: tuple[str, ...]) -> str:
    """Describe the differences between two configs on ``keys``; empty when they agree."""
    diffs = [
        f"{k}: checkpoint has {saved.get(k)!r}, requested {wanted.get(k)!r}"
        for k in keys
        if saved.get(k) != wanted.get(k)
    ]
    return "; ".join(diffs)


def load_model(
    path: str | Path,
    use_ema: bool = True,
    map_location: str | torch.device = "cpu",
    expected_model: dict[str, Any] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Build the network a checkpoint describes and load its (EMA) weights, in float32.

    Returns ``(model, checkpoint)`` with the model in eval mode. ``expected_model`` (a model
    spec) makes a checkpoint for another architecture an error instead of a surprise.
    """
    ckpt = load_checkpoint(path, map_location)
    spec = ckpt["config"].get("model")
    if expected_model is not None and spec != expected_model:
        raise CheckpointError(
            f"checkpoint {path} holds a different model: "
            f"{config_mismatch(spec or {}, expected_model, tuple(expected_model))}; "
            "load it without expected_model or pick the matching checkpoint"
        )
    try:
        model = build_model(spec)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"checkpoint {path} has an unusable model config: {e}") from e
    key = "ema" if use_ema and ckpt.get("ema") is not None else "model"
    state = {k: v.float() if v.is_floating_point() else v for k, v in ckpt[key].items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(
            f"the weights in {path} do not fit the model its config describes "
            f"({str(e).splitlines()[0][:200]}); the file was edited or is from another "
            "version: re-export it or train again"
        ) from e
    return model.eval().to(map_location), ckpt


def model_card(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The figures a model card needs, read from a training checkpoint's own record."""
    config, history = ckpt["config"], ckpt.get("history") or {}
    losses = history.get("loss") or []
    return {
        "data": ckpt.get("data_note", config.get("dataset")),
        "steps": ckpt["step"],
        "batch_size": config.get("batch_size"),
        "device": ckpt.get("device_name"),
        "train_minutes": round(float(ckpt.get("train_seconds", 0.0)) / 60, 2),
        "final_loss": losses[-1] if losses else None,
        "bf16": config.get("bf16"),
    }


def export_release(
    src: str | Path, dst: str | Path, card: dict[str, Any] | None = None, half: bool = True
) -> Path:
    """Write a small release checkpoint: EMA weights (fp16 by default), config, model card.

    The card holds :func:`model_card`'s figures, updated with ``card``.
    """
    ckpt = load_checkpoint(src)
    weights = ckpt.get("ema") or ckpt["model"]
    if half:
        weights = {k: v.half() if v.is_floating_point() else v for k, v in weights.items()}
    release = {
        "config": ckpt["config"],
        "step": ckpt["step"],
        "model": weights,
        "ema": None,
        "card": {**model_card(ckpt), **(card or {})},
        "history": ckpt.get("history", {}),
        "data_note": ckpt.get("data_note"),
        "train_seconds": ckpt.get("train_seconds", 0.0),
        "device_name": ckpt.get("device_name"),
    }
    return save_checkpoint(release, dst)
