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
import re
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
    if path.is_dir():
        raise CheckpointError(
            f"{path} is a folder, not a checkpoint file; pass the .pt file inside it "
            f"(a training run writes {path / 'last.pt'})"
        )
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {path} does not exist; train one with `python -m ddpm_lib train` "
            "or pass the path of an existing .pt file"
        )
    kind = _file_kind(path)
    if kind is not None:
        raise CheckpointError(
            f"{path} is not a ddpm_lib checkpoint ({kind}); pass a .pt file written by "
            "`python -m ddpm_lib train` or `export`, e.g. checkpoints/fashion_mnist.pt"
        )
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # A torch file holding Python objects other than tensors and plain values. torch's own
        # message advises weights_only=False, which would run the file's code: never repeat it.
        raise CheckpointError(
            f"{path} is not a ddpm_lib checkpoint: it holds Python objects that a safe load "
            "refuses (ddpm_lib checkpoints hold only tensors and plain values); do not load "
            "files you do not trust with weights_only=False"
        ) from e
    except Exception as e:  # truncated zip, bad CRC, ...: torch raises many kinds
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated ({type(e).__name__}: "
            f"{(str(e).splitlines() or [''])[0][:200]}); use an earlier checkpoint, re-download "
            "the shipped one, or train again"
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


def _file_kind(path: Path) -> str | None:
    """What ``path`` is when it cannot be a torch file (e.g. "a PNG image"); None when it may be.

    torch writes a zip archive holding ``<name>/data.pkl`` (or, before torch 1.6, a pickle
    starting with protocol byte 0x80); anything else is not a checkpoint of any version.
    """
    with open(path, "rb") as f:
        head = f.read(512)
    if not head:
        return "the file is empty"
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as z:
                if any(n.endswith("/data.pkl") or n == "data.pkl" for n in z.namelist()):
                    return None
        except zipfile.BadZipFile:
            return None  # a torch file cut short: reported as truncated
        return "a zip archive, but not one written by torch.save"
    if head.startswith(b"\x80"):
        return None
    signatures = {
        b"\x89PNG": "a PNG image",
        b"\xff\xd8\xff": "a JPEG image",
        b"GIF8": "a GIF image",
        b"%PDF": "a PDF document",
        b"\x1f\x8b": "a gzip file",
    }
    for magic, name in signatures.items():
        if head.startswith(magic):
            return name
    text = head.lstrip()
    if text[:1] in (b"{", b"["):
        return "a JSON or text file"
    try:
        if b"\x00" not in head:
            head.decode("utf-8")
            return "a text file"
    except UnicodeDecodeError:
        pass
    return "its first bytes are not those of a file written by torch.save"


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
    if spec is None and "feature_dim" in ckpt["config"]:
        raise CheckpointError(
            f"{path} is a feature classifier (the one `evaluate` measures samples with), not a "
            "diffusion model; pass a checkpoint written by `python -m ddpm_lib train` or "
            "`export`, e.g. checkpoints/fashion_mnist.pt"
        )
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


_DATA_PATH = re.compile(r"from \S*?([A-Za-z]+/raw|cifar-10-batches-py)\b")


def without_machine_paths(note: str | None) -> str | None:
    """A data note with the folder it was read from cut to the dataset's own folder:
    "... from /home/me/data/FashionMNIST/raw" → "... from <data root>/FashionMNIST/raw"."""
    return None if note is None else _DATA_PATH.sub(r"from <data root>/\1", note)


def release_config(config: dict[str, Any], name: str) -> dict[str, Any]:
    """A training config as a shipped file should hold it: no folder of the machine that trained
    it (``data_root`` is None, so the usual search applies; ``out_dir`` is ``runs/<name>``)."""
    if "dataset" not in config:  # a classifier's constructor config: no paths in it
        return dict(config)
    return {**config, "data_root": None, "out_dir": f"runs/{name}"}


def release_card(card: dict[str, Any]) -> dict[str, Any]:
    """A model card without machine paths in its ``data`` line."""
    if isinstance(card.get("data"), str):
        return {**card, "data": without_machine_paths(card["data"])}
    return dict(card)


def is_release(ckpt: dict[str, Any]) -> bool:
    """A release checkpoint (:func:`export_release`): weights only, no optimizer or RNG state,
    so it can be fine-tuned but not continued exactly."""
    return ckpt.get("optimizer") is None or ckpt.get("rng") is None


def export_release(
    src: str | Path, dst: str | Path, card: dict[str, Any] | None = None, half: bool = True
) -> Path:
    """Write a small release checkpoint: EMA weights (fp16 by default), config, model card.

    The card holds :func:`model_card`'s figures, updated with ``card``. Folders of the machine
    that trained the model are left out (:func:`release_config`, :func:`without_machine_paths`).
    """
    ckpt = load_checkpoint(src)
    weights = ckpt.get("ema") or ckpt["model"]
    if half:
        weights = {k: v.half() if v.is_floating_point() else v for k, v in weights.items()}
    release = {
        "config": release_config(ckpt["config"], Path(dst).stem),
        "step": ckpt["step"],
        "model": weights,
        "ema": None,
        "card": release_card({**model_card(ckpt), **(card or {})}),
        "history": ckpt.get("history", {}),
        "data_note": without_machine_paths(ckpt.get("data_note")),
        "train_seconds": ckpt.get("train_seconds", 0.0),
        "device_name": ckpt.get("device_name"),
    }
    return save_checkpoint(release, dst)
