"""The "lucidrains" DDPM UNet, for like-for-like GPU benchmarks.

This network has the layout of ``Unet`` in Phil Wang's widely used denoising-diffusion-pytorch
package (version 2.3.4): a 7×7 stem, residual blocks with RMSNorm and a FiLM scale/shift from
the time embedding, linear attention with learned memory key/values at the outer levels and
softmax attention at the innermost level and in the middle, pixel-unshuffle downsampling, and
a final residual block that sees the stem's output again. With ``dim=64`` and
``dim_mults=(1, 2, 4, 8)`` on 3×32×32 images it has that package's 35,711,491 parameters, the
same parameter tensors in the same order (RMSNorm gains stored as [C], not [1, C, 1, 1]), and the
same forward cost.

The book's chapters use :class:`ddpm_lib.nets.unet.UNet` (the network of Ho et al., 2020);
``ResUNet`` is benchmark code: it exists so that our benchmarks can time the same architecture
that other code bases train.

``forward(x [B, C, S, S], t [B]) -> eps [B, C, S, S]``; level ``i`` of ``len(dim_mults)``
works at ``S / 2**i`` with ``dim * dim_mults[i-1]`` channels (``dim`` at level 0).
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
    check_positive,
    check_time_input,
    setting,
    timestep_embedding,
)


@dataclass
class ResUNetConfig(ConfigDict):
    """Hyper-parameters of ``ResUNet``; the defaults are the 35.7M-parameter CIFAR-10 network.

    Level ``i`` turns ``dim * dim_mults[i-1]`` channels (``dim`` for ``i = 0``) into
    ``dim * dim_mults[i]`` on its way down; every attention layer has ``attn_heads`` heads of
    ``attn_dim_head`` features and ``num_mem_kv`` learned memory key/value pairs.
    """

    image_size: int = setting(32, "height = width of the images")
    in_channels: int = setting(3, "image channels (1 grey, 3 colour)")
    dim: int = setting(64, "ResUNet base channels")
    dim_mults: tuple[int, ...] = setting((1, 2, 4, 8), "ResUNet channel multipliers")
    attn_heads: int = setting(4, "ResUNet attention heads")
    attn_dim_head: int = setting(32, "ResUNet features per attention head")
    num_mem_kv: int = setting(4, "ResUNet learned memory key/value pairs")
    dropout: float = setting(0.0, "dropout probability")

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first inconsistency and how to fix it."""
        names = ("image_size", "in_channels", "dim", "attn_heads", "attn_dim_head", "num_mem_kv")
        check_positive(self, *names)
        mults = self.dim_mults
        if len(mults) == 0 or not all(isinstance(m, int) and m > 0 for m in mults):
            raise ValueError(
                f"ResUNetConfig.dim_mults must be positive integers, one per level, got "
                f"{mults!r}: use e.g. (1, 2, 4, 8)"
            )
        factor = 2 ** (len(mults) - 1)
        if self.image_size % factor != 0:
            raise ValueError(
                f"image_size {self.image_size} is not divisible by 2**(len(dim_mults)-1) = "
                f"{factor}, so the {len(mults)} levels cannot halve it cleanly: use fewer "
                f"levels in dim_mults or an image_size that is a multiple of {factor}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}: use e.g. 0.0")


class RMSNorm2d(nn.Module):
    """Scale each pixel's channel vector to length √C, then apply a learned per-channel gain."""

    def __init__(self, channels: int):
        super().__init__()
        # Stored as [C], not [1, C, 1, 1] as in the peer: the same parameters, and a 4-D
        # gain broke torch.compile's backward for channels_last models (torch 2.11, H100).
        self.gain = nn.Parameter(torch.ones(channels))
        self.scale = channels**0.5

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=1) * self.gain.view(1, -1, 1, 1) * self.scale


class FiLMResBlock(nn.Module):
    """Two conv-RMSNorm-SiLU layers; the first is modulated by ``(1 + scale) h + shift``.

    x [B, in_ch, H, W], temb [B, temb_dim] -> [B, out_ch, H, W]; ``scale`` and ``shift`` are
    per-channel values computed from the time embedding.
    """

    def __init__(self, in_ch: int, out_ch: int, temb_dim: int, dropout: float):
        super().__init__()
        self.film = nn.Linear(temb_dim, 2 * out_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm1 = RMSNorm2d(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.norm2 = RMSNorm2d(out_ch)
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        scale, shift = self.film(F.silu(temb))[:, :, None, None].chunk(2, dim=1)
        h = F.silu(self.norm1(self.conv1(x)) * (scale + 1) + shift)
        h = F.silu(self.norm2(self.conv2(self.dropout(h))))
        return h + self.shortcut(x)


class LinearAttention(nn.Module):
    """Attention whose cost grows linearly with the H*W positions, plus a residual.

    Per head, queries are softmax-normalised over their features and keys over the positions
    (with ``num_mem_kv`` learned memory positions in front); the [d, d] summary ``k vᵀ`` is
    read out by each query. [B, C, H, W] -> same.
    """

    def __init__(self, channels: int, heads: int, dim_head: int, num_mem_kv: int):
        super().__init__()
        self.heads, self.dim_head = heads, dim_head
        self.norm = RMSNorm2d(channels)
        self.mem_kv = nn.Parameter(torch.randn(2, heads, dim_head, num_mem_kv))
        self.qkv = nn.Conv2d(channels, 3 * heads * dim_head, 1, bias=False)
        self.proj_out = nn.Conv2d(heads * dim_head, channels, 1)
        self.norm_out = RMSNorm2d(channels)

    def forward(self, x: Tensor) -> Tensor:
        b, _, height, width = x.shape
        # Three [B, heads, d, HW]: features along dim -2, positions along dim -1.
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, self.dim_head, height * width)
        q, k, v = qkv.unbind(1)
        mem_k, mem_v = self.mem_kv.unsqueeze(1).expand(-1, b, -1, -1, -1)
        k = torch.cat([mem_k, k], dim=-1).softmax(dim=-1)
        v = torch.cat([mem_v, v], dim=-1)
        q = q.softmax(dim=-2) * self.dim_head**-0.5
        context = k @ v.transpose(-1, -2)  # [B, heads, d_k, d_v]
        out = (context.transpose(-1, -2) @ q).reshape(b, -1, height, width)
        return x + self.norm_out(self.proj_out(out))


class SoftmaxAttention(nn.Module):
    """Multi-head softmax(q kᵀ/√d) v over the H*W positions and ``num_mem_kv`` learned memory
    key/values, plus a residual. [B, C, H, W] -> same.
    """

    def __init__(self, channels: int, heads: int, dim_head: int, num_mem_kv: int):
        super().__init__()
        self.heads, self.dim_head = heads, dim_head
        self.norm = RMSNorm2d(channels)
        self.mem_kv = nn.Parameter(torch.randn(2, heads, num_mem_kv, dim_head))
        self.qkv = nn.Conv2d(channels, 3 * heads * dim_head, 1, bias=False)
        self.proj_out = nn.Conv2d(heads * dim_head, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, _, height, width = x.shape
        # Three [B, heads, HW, d]: positions are the sequence.
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, self.dim_head, height * width)
        q, k, v = qkv.transpose(-1, -2).unbind(1)
        mem_k, mem_v = self.mem_kv.unsqueeze(1).expand(-1, b, -1, -1, -1)
        k, v = torch.cat([mem_k, k], dim=-2), torch.cat([mem_v, v], dim=-2)
        out = F.scaled_dot_product_attention(q, k, v)  # flash attention on GPUs
        return x + self.proj_out(out.transpose(-1, -2).reshape(b, -1, height, width))


class ResUNet(nn.Module):
    """The denoising-diffusion-pytorch UNet layout (see the module docstring).

    ``forward(x [B, in_channels, S, S], t [B]) -> [B, in_channels, S, S]`` with
    ``S = config.image_size``. ``t`` may be int64 or float, or a 0-d tensor shared by the batch.
    """

    def __init__(self, config: ResUNetConfig):
        super().__init__()
        config.validate()
        self.config = dataclasses.replace(config)  # a private copy
        cfg = self.config
        dim, temb_dim = cfg.dim, 4 * cfg.dim

        def res(i: int, o: int) -> FiLMResBlock:
            return FiLMResBlock(i, o, temb_dim, cfg.dropout)

        def attn(c: int, full: bool) -> nn.Module:
            kind = SoftmaxAttention if full else LinearAttention
            return kind(c, cfg.attn_heads, cfg.attn_dim_head, cfg.num_mem_kv)

        def stage(r1: nn.Module, r2: nn.Module, a: nn.Module, resample: nn.Module) -> nn.Module:
            s = nn.Module()
            s.res1, s.res2, s.attn, s.resample = r1, r2, a, resample
            return s

        self.conv_in = nn.Conv2d(cfg.in_channels, dim, 7, padding=3)
        self.temb = nn.Sequential(
            nn.Linear(dim, temb_dim), nn.GELU(), nn.Linear(temb_dim, temb_dim)
        )

        widths = [dim] + [dim * m for m in cfg.dim_mults]
        levels = list(zip(widths[:-1], widths[1:], strict=True))  # (c_in, c_out) per level
        last = len(levels) - 1
        # Registered down, up, middle: the parameter order of denoising-diffusion-pytorch, so
        # its state_dict maps onto ours tensor by tensor.
        self.down, self.up = nn.ModuleList(), nn.ModuleList()
        for i, (c_in, c_out) in enumerate(levels):
            # 2×2 space-to-depth then a 1×1 conv halves the resolution; the last level keeps it.
            if i < last:
                resample = nn.Sequential(nn.PixelUnshuffle(2), nn.Conv2d(4 * c_in, c_out, 1))
            else:
                resample = nn.Conv2d(c_in, c_out, 3, padding=1)
            r1, r2 = res(c_in, c_in), res(c_in, c_in)
            self.down.append(stage(r1, r2, attn(c_in, i == last), resample))

        self.mid_res1 = res(widths[-1], widths[-1])
        self.mid_attn = attn(widths[-1], full=True)
        self.mid_res2 = res(widths[-1], widths[-1])

        for i, (c_in, c_out) in reversed(list(enumerate(levels))):
            if i > 0:
                resample = nn.Sequential(
                    nn.Upsample(scale_factor=2, mode="nearest"),
                    nn.Conv2d(c_out, c_in, 3, padding=1),
                )
            else:
                resample = nn.Conv2d(c_out, c_in, 3, padding=1)
            # Each residual block sees the skip (c_in channels) concatenated to its input.
            r1, r2 = res(c_out + c_in, c_out), res(c_out + c_in, c_out)
            self.up.append(stage(r1, r2, attn(c_out, i == last), resample))

        self.res_out = res(2 * dim, dim)  # input: the up path's output and conv_in's, stacked
        self.conv_out = nn.Conv2d(dim, cfg.in_channels, 1)

    def _check_x(self, x: Tensor) -> None:
        cfg = self.config
        want = (cfg.in_channels, cfg.image_size, cfg.image_size)
        check_image_batch(x, want, "ResUNet", "a ResUNetConfig")

    def forward(self, x: Tensor, t: Tensor | float) -> Tensor:
        """Predict the noise in ``x`` [B, C, S, S] at time steps ``t`` [B]; same shape."""
        self._check_x(x)
        t = check_time_input(t, x.shape[0], x.device, "ResUNet")
        temb = timestep_embedding(t, self.config.dim).to(self.conv_in.weight.dtype)
        temb = self.temb(temb)

        h = stem = self.conv_in(x)
        skips = []
        for s in self.down:
            h = s.res1(h, temb)
            skips.append(h)
            h = s.attn(s.res2(h, temb))
            skips.append(h)
            h = s.resample(h)

        h = self.mid_res2(self.mid_attn(self.mid_res1(h, temb)), temb)

        for s in self.up:
            h = s.res1(torch.cat([h, skips.pop()], dim=1), temb)
            h = s.attn(s.res2(torch.cat([h, skips.pop()], dim=1), temb))
            h = s.resample(h)

        return self.conv_out(self.res_out(torch.cat([h, stem], dim=1), temb))
