"""Pieces every network shares: the sinusoidal time embedding, config dataclasses, input checks."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of time steps, as in the Transformer and DDPM (Chapter 4).

    ``t`` has shape [B] and may be integer or fractional (continuous-time samplers pass
    fractional steps). Returns a float32 tensor [B, dim]: the first half holds
    ``sin(t * w_j)``, the second half ``cos(t * w_j)``, with frequencies
    ``w_j = max_period ** (-j / (dim // 2 - 1))`` running geometrically from 1 down to
    ``1 / max_period``. An odd ``dim`` gets a final zero column. Networks receive the code index
    ``t = i`` (book step i + 1); Chapter 4 ("The network") plots the code.
    """
    if t.ndim != 1:
        raise ValueError(
            f"timestep_embedding expects t of shape [B], got shape {tuple(t.shape)}: "
            "pass one time step per batch item, e.g. t.reshape(-1)"
        )
    if dim < 1:
        raise ValueError(f"embedding dim must be a positive integer, got {dim}: use e.g. dim=64")
    half = dim // 2
    # DDPM divides by (half - 1) so that the last frequency is exactly 1 / max_period.
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device)
    freqs = torch.exp(exponent / max(half - 1, 1))
    args = t.to(torch.float32)[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if dim % 2 == 1:
        emb = F.pad(emb, (0, 1))
    return emb


def setting(default: Any, help: str) -> Any:
    """A config field with its help text (the command line shows it)."""
    return field(default=default, metadata={"help": help})


class ConfigDict:
    """Shared ``to_dict`` / ``from_dict`` for the networks' config dataclasses."""

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as JSON-ready primitives (tuples become lists)."""
        out = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        """Build and validate a config from ``to_dict`` output; unknown keys are an error."""
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(d) - set(fields))
        if unknown:
            raise ValueError(
                f"unknown {cls.__name__} key(s) {unknown}: remove them; "
                f"valid keys are {sorted(fields)}"
            )
        kwargs = {}
        for name, value in d.items():
            if isinstance(fields[name].default, tuple) or isinstance(value, list):
                value = tuple(value)
            kwargs[name] = value
        config = cls(**kwargs)
        config.validate()  # type: ignore[attr-defined]
        return config


def check_positive(config: object, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or value < 1:
            raise ValueError(
                f"{type(config).__name__}.{name} must be a positive integer, got {value!r}: "
                f"set it to e.g. {getattr(type(config)(), name)}"
            )


def check_image_batch(x: Tensor, want: tuple[int, int, int], owner: str, fix: str) -> None:
    """Raise ValueError unless x is a batch [B, *want]; ``fix`` names the config to build."""
    if x.ndim != 4:
        hint = " (add a batch dimension with x.unsqueeze(0))" if x.ndim == 3 else ""
        raise ValueError(
            f"{owner} expects images shaped [B, C, H, W], got shape {tuple(x.shape)}{hint}: "
            "pass a 4-D batch"
        )
    got = tuple(x.shape[1:])
    if got != want:
        raise ValueError(
            f"{owner} configured for {'×'.join(map(str, want))} images got "
            f"{'×'.join(map(str, got))}: build the model with {fix} whose "
            "image_size/in_channels match the data"
        )


def check_time_input(t: Tensor | float, batch: int, device: torch.device, owner: str) -> Tensor:
    """Return t as a [batch] tensor on ``device``; a 0-d t (or Python number) is broadcast."""
    t = torch.as_tensor(t, device=device)
    if t.ndim == 0:
        return t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(
            f"{owner} got t of shape {tuple(t.shape)} for a batch of {batch}: "
            f"pass one time step per item (shape [{batch}]) or a single 0-d tensor"
        )
    return t


def check_num_classes(config: Any) -> None:
    """``num_classes`` is 0 (unconditional) or the number of labels (the null label is extra)."""
    k = config.num_classes
    if not isinstance(k, int) or isinstance(k, bool) or k < 0:
        raise ValueError(
            f"{type(config).__name__}.num_classes must be 0 (unconditional) or the number of "
            f"classes, got {k!r}: use e.g. 10 for Fashion-MNIST"
        )


def label_input(
    y: Tensor | int | None, batch: int, num_classes: int, device: torch.device, owner: str
) -> Tensor | None:
    """The labels as an int64 [batch] tensor on ``device``; None (no label given) becomes the
    null label ∅, whose index is ``num_classes`` (Chapter 8: one network for ε(x, y) and ε(x, ∅)).

    An unconditional network (``num_classes == 0``) takes no labels and returns None. Labels on
    the CPU are range-checked here; labels already on a GPU are trusted (reading them back would
    stop every step, and a captured CUDA graph cannot), so the callers that make them
    (:mod:`ddpm_lib.guidance`, the trainer, the command line) check them first.
    """
    if num_classes == 0:
        if y is not None:
            raise ValueError(
                f"{owner} is unconditional (num_classes=0) but was given labels: drop y, or use "
                "a network built with num_classes > 0 (train --class-cond)"
            )
        return None
    if y is None:
        return torch.full((batch,), num_classes, dtype=torch.long, device=device)
    y = torch.as_tensor(y, device=device)
    if y.is_floating_point() or y.dtype == torch.bool:
        raise ValueError(f"{owner} labels must be integers, got dtype {y.dtype}")
    if y.ndim == 0:
        y = y.expand(batch)
    if y.shape != (batch,):
        raise ValueError(
            f"{owner} got labels of shape {tuple(y.shape)} for a batch of {batch}: pass one "
            f"label per item (shape [{batch}]), a single int, or None for the null label"
        )
    # (Not while torch.compile traces: reading values back would split its graph.)
    on_host = y.device.type == "cpu" and len(y) > 0 and not torch.compiler.is_compiling()
    if on_host and not (0 <= int(y.min()) and int(y.max()) <= num_classes):
        raise ValueError(
            f"{owner} labels must lie in 0..{num_classes - 1} (or {num_classes}, the null label "
            f"∅), got values from {int(y.min())} to {int(y.max())}"
        )
    return y.long()
