"""The DDPM noise-prediction UNet of Ho et al. (2020), Chapter 4.

``UNet(config)(x_t [B, C, S, S], t [B]) -> [B, C, S, S]`` (twice the channels when a variance is
learned as well); :data:`UNET_PRESETS` holds the book's sizes. With ``num_classes > 0`` it is
class-conditional (Chapter 8): ``UNet(config)(x_t, t, y [B])``, ``y = None`` for the null label.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .common import (
    ConfigDict,
    check_image_batch,
    check_num_classes,
    check_positive,
    check_time_input,
    label_input,
    setting,
    timestep_embedding,
)


@dataclass
class UNetConfig(ConfigDict):
    """Hyper-parameters of the DDPM UNet (Chapter 4).

    The network works at resolutions ``image_size / 2**i`` for ``i < len(ch_mult)``; level
    ``i`` has ``ch * ch_mult[i]`` channels, and self-attention is added at every resolution
    listed in ``attn_resolutions``. ``out_channels=None`` means "same as ``in_channels``"
    (predict eps); use ``2 * in_channels`` to predict a variance too.
    """

    image_size: int = setting(28, "height = width of the images")
    in_channels: int = setting(1, "image channels (1 grey, 3 colour)")
    out_channels: int | None = setting(None, "output channels (default in_channels)")
    ch: int = setting(64, "UNet base channels")
    ch_mult: tuple[int, ...] = setting((1, 2, 2), "UNet channel multipliers, e.g. 1,2,2")
    num_res_blocks: int = setting(2, "residual blocks per level")
    attn_resolutions: tuple[int, ...] = setting((14,), "attention resolutions, e.g. 14")
    dropout: float = setting(0.1, "dropout probability")
    num_groups: int = setting(32, "GroupNorm groups")
    num_classes: int = setting(0, "class labels for conditioning (0: unconditional)")

    @property
    def resolutions(self) -> list[int]:
        """Spatial size at each level, e.g. [28, 14, 7] for the MNIST preset."""
        return [self.image_size // 2**i for i in range(len(self.ch_mult))]

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first inconsistency and how to fix it."""
        check_positive(self, "image_size", "in_channels", "ch", "num_res_blocks", "num_groups")
        check_num_classes(self)
        if self.out_channels is not None:
            check_positive(self, "out_channels")
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
    """Residual block with the time embedding added as a per-channel bias (Chapter 4).

    x [B, in_ch, H, W], temb [B, temb_dim] -> [B, out_ch, H, W]. The branch is GroupNorm → SiLU →
    3×3 conv, plus a linear map of the time code (one number per channel, the same at every
    pixel), then GroupNorm → SiLU → dropout → 3×3 conv; the result is added to the input (through
    a 1×1 conv when the channel count changes). ``conv2`` starts at zero (``UNet._init_weights``),
    so the block starts as the identity.
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


class UNet(nn.Module):
    """The DDPM noise-prediction UNet (Chapter 4), in the shape of Ho et al. (2020).

    ``forward(x [B, in_channels, S, S], t [B]) -> [B, out_channels, S, S]`` with
    ``S = config.image_size``. ``t`` may be int64 or float, or a 0-d tensor shared by the batch.

    Layout (Chapter 4 draws it from these modules): ``temb`` lifts the sinusoidal code of ``t``
    (:func:`~ddpm_lib.nets.common.timestep_embedding`, ``ch`` numbers) to ``4 * ch``;
    ``conv_in``; ``down`` (per level: ``num_res_blocks`` ResBlocks, attention where the level's
    resolution is in ``attn_resolutions``, then a stride-2 conv except at the last level);
    ``mid_res1``, ``mid_attn``, ``mid_res2``; ``up`` (per level: ``num_res_blocks + 1``
    ResBlocks, each reading one skip tensor saved on the way down, last saved first used, then a
    nearest-neighbour upsampling and conv except at the top level); ``norm_out``, ``conv_out``.

    Class-conditional (``num_classes = K > 0``, Chapter 8): ``label_emb`` holds K + 1 vectors of
    size ``4 * ch``, the last one for the null label ∅; the label's vector is added to the time
    code, so every ResBlock sees both (as in Ho & Salimans 2022). ``forward(x, t, y)`` takes
    ``y`` [B] in 0..K-1, or K or None for ∅.
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
        if cfg.num_classes:
            self.label_emb = nn.Embedding(cfg.num_classes + 1, temb_dim)
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
        check_image_batch(x, (cfg.in_channels, cfg.image_size, cfg.image_size), "UNet", fix)

    def forward(self, x: Tensor, t: Tensor | float, y: Tensor | int | None = None) -> Tensor:
        """Predict the noise in ``x`` [B, C, S, S] at time steps ``t`` [B], given labels ``y``
        [B] (class-conditional networks only; None: the null label); same spatial shape."""
        self._check_x(x)
        t = check_time_input(t, x.shape[0], x.device, "UNet")
        y = label_input(y, x.shape[0], self.config.num_classes, x.device, "UNet")
        temb = timestep_embedding(t, self.config.ch).to(self.conv_in.weight.dtype)
        temb = self.temb(temb)
        if y is not None:
            temb = temb + self.label_emb(y)

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
