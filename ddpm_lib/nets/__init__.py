"""The networks, and the registry that turns a plain dict into one and back.

- :mod:`~ddpm_lib.nets.unet`: the DDPM UNet (Chapter 4), with presets.
- :mod:`~ddpm_lib.nets.mlp`: a small MLP for 2-D toy data.
- :mod:`~ddpm_lib.nets.resunet`: the denoising-diffusion-pytorch layout, for the benchmarks.

Every network maps ``(x_t, t)`` to a tensor shaped like ``x_t`` (twice the channels when it
also predicts a variance). A *spec* ``{"type": name, **config fields}`` names a network;
``build_model(spec)`` builds it and ``model_spec(model)`` gives the spec back, so checkpoints
record which network they hold. :func:`register` adds a network type.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .common import ConfigDict, timestep_embedding
from .mlp import ToyMLP, ToyMLPConfig
from .resunet import ResUNet, ResUNetConfig
from .unet import UNET_PRESETS, UNet, UNetConfig

__all__ = [
    "MODEL_TYPES",
    "ResUNet",
    "ResUNetConfig",
    "ToyMLP",
    "ToyMLPConfig",
    "UNET_PRESETS",
    "UNet",
    "UNetConfig",
    "build_model",
    "count_parameters",
    "model_config",
    "model_spec",
    "register",
    "resolve_spec",
    "timestep_embedding",
]

# name -> (network class, config class, presets)
MODEL_TYPES: dict[str, tuple[type[nn.Module], type[ConfigDict], dict[str, Any]]] = {}


def register(
    name: str,
    model_cls: type[nn.Module],
    config_cls: type[ConfigDict],
    presets: dict[str, Any] | None = None,
) -> None:
    """Make ``{"type": name, ...}`` buildable: ``model_cls(config_cls(**fields))``."""
    MODEL_TYPES[name] = (model_cls, config_cls, dict(presets or {}))


register("unet", UNet, UNetConfig, UNET_PRESETS)
register("mlp", ToyMLP, ToyMLPConfig)
register("resunet", ResUNet, ResUNetConfig)


def model_config(spec: dict[str, Any]) -> ConfigDict:
    """The validated configuration a model spec describes, without building the network.

    ``spec`` is ``{"type": name, **fields of that type's config}``. ``"preset": p`` starts from
    that type's preset ``p`` and any other keys override it, e.g.
    ``{"type": "unet", "preset": "mnist", "dropout": 0.0}``.
    """
    spec = dict(spec)
    kind = spec.pop("type", None)
    if kind not in MODEL_TYPES:
        raise ValueError(
            f"unknown model type {kind!r}: set spec['type'] to one of {sorted(MODEL_TYPES)}"
        )
    _, config_cls, presets = MODEL_TYPES[kind]
    if "preset" in spec:
        name = spec.pop("preset")
        if name not in presets:
            have = f"are {sorted(presets)}" if presets else "do not exist"
            raise ValueError(f"unknown preset {name!r} for model type {kind!r}: its presets {have}")
        spec = {**presets[name].to_dict(), **spec}
    return config_cls.from_dict(spec)


def resolve_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` with its preset expanded and every field spelled out (comparable, storable)."""
    return {"type": spec.get("type"), **model_config(spec).to_dict()}


def build_model(spec: dict[str, Any]) -> nn.Module:
    """Build a model from a plain dict, the inverse of :func:`model_spec`."""
    config = model_config(spec)  # raises for an unknown type
    return MODEL_TYPES[spec["type"]][0](config)


def model_spec(model: nn.Module) -> dict[str, Any]:
    """Return the JSON-ready dict that :func:`build_model` turns back into an equal network."""
    for kind, (model_cls, _, _) in MODEL_TYPES.items():
        if type(model) is model_cls:
            return {"type": kind, **model.config.to_dict()}
    raise ValueError(
        f"model_spec knows only {[c.__name__ for c, _, _ in MODEL_TYPES.values()]}, "
        f"got {type(model).__name__}: save that model's configuration yourself"
    )


def count_parameters(model: nn.Module) -> int:
    """Total number of parameter elements in ``model`` (trainable or not)."""
    return sum(p.numel() for p in model.parameters())
