"""Noise-prediction networks: the DDPM UNet (Chapter 4) and a small MLP for 2-D toy data.

Both map a noisy input ``x_t`` and its time step ``t`` to a prediction of the noise ``eps``
with the same shape as ``x_t`` (or twice the channels when a variance is learned as well).
``build_model`` / ``model_spec`` turn a model into a plain dict and back, so checkpoints can
record which network they belong to.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of time steps, as in the Transformer and DDPM (Chapter 4).

    ``t`` has shape [B] and may be integer or fractional (continuous-time samplers pass
    fractional steps). Returns a float32 tensor [B, dim]: the first half holds
    ``sin(t * w_i)``, the second half ``cos(t * w_i)``, with frequencies ``w_i`` running
    geometrically from 1 down to ``1 / max_period``. An odd ``dim`` gets a final zero column.
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


class _ConfigDict:
    """Shared ``to_dict`` / ``from_dict`` for the config dataclasses below."""

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


def _check_positive(config: object, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or value < 1:
            raise ValueError(
                f"{type(config).__name__}.{name} must be a positive integer, got {value!r}: "
                f"set it to e.g. {getattr(type(config)(), name)}"
            )


@dataclass
class UNetConfig(_ConfigDict):
    """Hyper-parameters of the DDPM UNet (Chapter 4).

    The network works at resolutions ``image_size / 2**i`` for ``i < len(ch_mult)``; level
    ``i`` has ``ch * ch_mult[i]`` channels, and self-attention is added at every resolution
    listed in ``attn_resolutions``. ``out_channels=None`` means "same as ``in_channels``"
    (predict eps); use ``2 * in_channels`` to predict a variance too.
    """

    image_size: int = 28
    in_channels: int = 1
    out_channels: int | None = None
    ch: int = 64
    ch_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (14,)
    dropout: float = 0.1
    num_groups: int = 32

    @property
    def resolutions(self) -> list[int]:
        """Spatial size at each level, e.g. [28, 14, 7] for the MNIST preset."""
        return [self.image_size // 2**i for i in range(len(self.ch_mult))]

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first inconsistency and how to fix it."""
        _check_positive(self, "image_size", "in_channels", "ch", "num_res_blocks", "num_groups")
        if self.out_channels is not None:
            _check_positive(self, "out_channels")
        if len(self.ch_mult) == 0 or not all(isinstance(m, int) and m > 0 for m in self.ch_mult):
            raise ValueError(
                f"UNetConfig.ch_mult must be positive integers, one per level, got "
                f"{self.ch_mult!r}: use e.g. (1, 2, 2)"
            )
        factor = 2 ** (len(self.ch_mult) - 1)
        if self.image_size % factor != 0:
            raise ValueError(
                f"image_size {self.image_size} is not divisible by 2**(len(ch_mult)-1) = {factor}, "
                f"so the {len(self.ch_mult)} levels cannot halve it cleanly: use fewer levels "
                f"in ch_mult or an image_size that is a multiple of {factor}"
            )
        valid = self.resolutions
        for r in self.attn_resolutions:
            if r not in valid:
                raise ValueError(
                    f"attention resolution {r} is not one of the network's resolutions {valid}: "
                    "choose attn_resolutions among those (or () for no attention)"
                )
        for c in [self.ch] + [self.ch * m for m in self.ch_mult]:
            if c % self.num_groups != 0:
                raise ValueError(
                    f"{c} channels cannot be split into num_groups={self.num_groups} GroupNorm "
                    "groups: make ch * every ch_mult entry a multiple of num_groups, "
                    "or lower num_groups"
                )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}: use e.g. 0.1 or 0.0")


UNET_PRESETS: dict[str, UNetConfig] = {
    # MNIST and Fashion-MNIST: resolutions 28, 14, 7.
    "mnist": UNetConfig(),
    # The book's shipped MNIST / Fashion-MNIST checkpoints: 1.6M parameters, so that 1000-step
    # sampling stays practical on a laptop CPU (about 0.3 s per batch of 64 per step).
    "mnist_small": UNetConfig(ch=32),
    # The CIFAR-10 network of Ho et al. (2020): 35,746,307 parameters.
    "cifar10": UNetConfig(
        image_size=32, in_channels=3, ch=128, ch_mult=(1, 2, 2, 2), attn_resolutions=(16,)
    ),
    # About 177k parameters, for tests and CPU demos: a batch of 4 takes milliseconds.
    "tiny": UNetConfig(
        image_size=16, ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), num_groups=8
    ),
}


class ResBlock(nn.Module):
    """Residual block with the time embedding added as a per-channel bias.

    x [B, in_ch, H, W], temb [B, temb_dim] -> [B, out_ch, H, W].
    """

    def __init__(self, in_ch: int, out_ch: int, temb_dim: int, dropout: float, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.temb_proj = nn.Linear(temb_dim, out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions, with a residual. [B,C,H,W] -> same."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        # [B, 3, C, HW] -> three [B, 1, HW, C]: one head, positions as the sequence.
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(-1, -2).unbind(1)
        # softmax(q kᵀ/√C) v, through the fused kernel (flash attention on GPUs).
        out = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        return x + self.proj_out(out.transpose(-1, -2).reshape(b, c, h, w))


def _check_image_batch(x: Tensor, want: tuple[int, int, int], owner: str, fix: str) -> None:
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


def _check_t(t: Tensor | float, batch: int, device: torch.device, owner: str) -> Tensor:
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


class UNet(nn.Module):
    """The DDPM noise-prediction UNet (Chapter 4), in the shape of Ho et al. (2020).

    ``forward(x [B, in_channels, S, S], t [B]) -> [B, out_channels, S, S]`` with
    ``S = config.image_size``. ``t`` may be int64 or float, or a 0-d tensor shared by the batch.
    """

    def __init__(self, config: UNetConfig):
        super().__init__()
        config.validate()
        self.config = dataclasses.replace(config)  # a private copy: presets stay untouched
        cfg = self.config
        ch, temb_dim, groups = cfg.ch, 4 * cfg.ch, cfg.num_groups

        def res(i: int, o: int) -> ResBlock:
            return ResBlock(i, o, temb_dim, cfg.dropout, groups)

        def attn(c: int, resolution: int) -> nn.Module:
            return AttnBlock(c, groups) if resolution in cfg.attn_resolutions else nn.Identity()

        self.temb = nn.Sequential(nn.Linear(ch, temb_dim), nn.SiLU(), nn.Linear(temb_dim, temb_dim))
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)

        # Down path; skip_chs records the channels of every tensor pushed for the up path.
        skip_chs, cur, resolution = [ch], ch, cfg.image_size
        self.down = nn.ModuleList()
        for level, mult in enumerate(cfg.ch_mult):
            stage = nn.Module()
            stage.res, stage.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                stage.res.append(res(cur, ch * mult))
                cur = ch * mult
                stage.attn.append(attn(cur, resolution))
                skip_chs.append(cur)
            if level < len(cfg.ch_mult) - 1:
                stage.resample = nn.Conv2d(cur, cur, 3, stride=2, padding=1)
                skip_chs.append(cur)
                resolution //= 2
            else:
                stage.resample = nn.Identity()
            self.down.append(stage)

        self.mid_res1 = res(cur, cur)
        self.mid_attn = AttnBlock(cur, groups)
        self.mid_res2 = res(cur, cur)

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.ch_mult))):
            stage = nn.Module()
            stage.res, stage.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(cfg.num_res_blocks + 1):
                stage.res.append(res(cur + skip_chs.pop(), ch * mult))
                cur = ch * mult
                stage.attn.append(attn(cur, resolution))
            if level > 0:
                stage.resample = nn.Conv2d(cur, cur, 3, padding=1)
                resolution *= 2
            else:
                stage.resample = nn.Identity()
            self.up.append(stage)

        self.norm_out = nn.GroupNorm(groups, cur)
        self.conv_out = nn.Conv2d(cur, cfg.out_channels or cfg.in_channels, 3, padding=1)
        self._init_weights()

    def _init_weights(self) -> None:
        # As in the original: Glorot-uniform weights, zero biases, and a zero last layer in every
        # residual branch and at the output, so each block starts as the identity.
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        last = [m.conv2 for m in self.modules() if isinstance(m, ResBlock)]
        last += [m.proj_out for m in self.modules() if isinstance(m, AttnBlock)]
        for layer in [*last, self.conv_out]:
            nn.init.zeros_(layer.weight)

    def _check_x(self, x: Tensor) -> None:
        cfg = self.config
        got = tuple(x.shape[1:])
        fix = "a UNetConfig"
        for name, p in UNET_PRESETS.items():
            if (p.in_channels, p.image_size, p.image_size) == got:
                fix = f"UNET_PRESETS[{name!r}] or a UNetConfig"
        _check_image_batch(x, (cfg.in_channels, cfg.image_size, cfg.image_size), "UNet", fix)

    def forward(self, x: Tensor, t: Tensor | float) -> Tensor:
        """Predict the noise in ``x`` [B, C, S, S] at time steps ``t`` [B]; same spatial shape."""
        self._check_x(x)
        t = _check_t(t, x.shape[0], x.device, "UNet")
        temb = timestep_embedding(t, self.config.ch).to(self.conv_in.weight.dtype)
        temb = self.temb(temb)

        hs = [self.conv_in(x)]
        for stage in self.down:
            for block, attn in zip(stage.res, stage.attn, strict=True):
                hs.append(attn(block(hs[-1], temb)))
            if not isinstance(stage.resample, nn.Identity):
                hs.append(stage.resample(hs[-1]))

        h = self.mid_res2(self.mid_attn(self.mid_res1(hs[-1], temb)), temb)

        for stage in self.up:
            for block, attn in zip(stage.res, stage.attn, strict=True):
                h = attn(block(torch.cat([h, hs.pop()], dim=1), temb))
            if not isinstance(stage.resample, nn.Identity):
                h = stage.resample(F.interpolate(h, scale_factor=2.0, mode="nearest"))

        return self.conv_out(F.silu(self.norm_out(h)))


@dataclass
class ToyMLPConfig(_ConfigDict):
    """Hyper-parameters of the MLP for 2-D toy data: ``num_layers`` hidden layers of ``hidden``."""

    dim: int = 2
    hidden: int = 128
    num_layers: int = 3
    time_embed_dim: int = 32

    def validate(self) -> None:
        """Raise ``ValueError`` if any size is not a positive integer."""
        _check_positive(self, "dim", "hidden", "num_layers", "time_embed_dim")


class ToyMLP(nn.Module):
    """Noise predictor for points: ``forward(x [B, dim], t [B]) -> eps [B, dim]``.

    Each hidden layer computes ``silu(W h + U e(t))``: the sinusoidal embedding ``e(t)`` is
    added to every layer, which conditions on ``t`` far more strongly than feeding it once.
    """

    def __init__(self, config: ToyMLPConfig):
        super().__init__()
        config.validate()
        self.config = dataclasses.replace(config)
        cfg = self.config
        widths = [cfg.dim] + [cfg.hidden] * cfg.num_layers
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True)
        )
        self.time_proj = nn.ModuleList(
            nn.Linear(cfg.time_embed_dim, cfg.hidden) for _ in range(cfg.num_layers)
        )
        self.out = nn.Linear(cfg.hidden, cfg.dim)

    def forward(self, x: Tensor, t: Tensor | float) -> Tensor:
        """Predict the noise in ``x`` [B, dim] at time steps ``t`` [B]; returns [B, dim]."""
        if x.ndim != 2 or x.shape[1] != self.config.dim:
            raise ValueError(
                f"ToyMLP configured for points of dim {self.config.dim} got a tensor of shape "
                f"{tuple(x.shape)}: pass [B, {self.config.dim}] or build the model with "
                "ToyMLPConfig(dim=...) matching the data"
            )
        t = _check_t(t, x.shape[0], x.device, "ToyMLP")
        emb = timestep_embedding(t, self.config.time_embed_dim).to(self.out.weight.dtype)
        h = x
        for layer, proj in zip(self.layers, self.time_proj, strict=True):
            h = F.silu(layer(h) + proj(emb))
        return self.out(h)


_MODEL_TYPES: dict[str, tuple[type[nn.Module], type[_ConfigDict]]] = {
    "unet": (UNet, UNetConfig),
    "mlp": (ToyMLP, ToyMLPConfig),
}


def build_model(spec: dict[str, Any]) -> nn.Module:
    """Build a model from a plain dict, the inverse of ``model_spec``; see :func:`model_config`."""
    config = model_config(spec)  # raises for an unknown type
    return _MODEL_TYPES[spec["type"]][0](config)


def model_config(spec: dict[str, Any]) -> _ConfigDict:
    """The validated configuration a model spec describes, without building the network.

    ``spec`` is ``{"type": "unet", **UNetConfig fields}``, ``{"type": "mlp", **ToyMLPConfig
    fields}`` or ``{"type": "resunet", **resunet.ResUNetConfig fields}``. For the UNet,
    ``"preset": name`` starts from ``UNET_PRESETS[name]`` and any other keys override it,
    e.g. ``{"type": "unet", "preset": "mnist", "dropout": 0.0}``.
    """
    spec = dict(spec)
    kind = spec.pop("type", None)
    if kind not in _MODEL_TYPES:
        raise ValueError(
            f"unknown model type {kind!r}: set spec['type'] to one of {sorted(_MODEL_TYPES)}"
        )
    config_cls = _MODEL_TYPES[kind][1]
    if "preset" in spec:
        name = spec.pop("preset")
        if kind != "unet" or name not in UNET_PRESETS:
            raise ValueError(
                f"unknown preset {name!r} for model type {kind!r}: presets exist only for "
                f"'unet' and are {sorted(UNET_PRESETS)}"
            )
        spec = {**UNET_PRESETS[name].to_dict(), **spec}
    return config_cls.from_dict(spec)


def model_spec(model: nn.Module) -> dict[str, Any]:
    """Return the JSON-ready dict that ``build_model`` turns back into an equal architecture."""
    for kind, (model_cls, _) in _MODEL_TYPES.items():
        if isinstance(model, model_cls):
            return {"type": kind, **model.config.to_dict()}
    raise ValueError(
        f"model_spec knows only {[c.__name__ for c, _ in _MODEL_TYPES.values()]}, "
        f"got {type(model).__name__}: save that model's configuration yourself"
    )


def count_parameters(model: nn.Module) -> int:
    """Total number of parameter elements in ``model`` (trainable or not)."""
    return sum(p.numel() for p in model.parameters())


# The benchmark network (the denoising-diffusion-pytorch layout) builds on the helpers above;
# importing its module last registers it in _MODEL_TYPES as "resunet".
from . import resunet as _resunet  # noqa: E402, F401
