"""A small MLP noise predictor for 2-D toy data (Chapters 4-7 use it on the Gaussian mixture)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from .common import (
    ConfigDict,
    check_num_classes,
    check_positive,
    check_time_input,
    label_input,
    setting,
    timestep_embedding,
)


@dataclass
class ToyMLPConfig(ConfigDict):
    """Hyper-parameters of the MLP for 2-D toy data: ``num_layers`` hidden layers of ``hidden``."""

    dim: int = setting(2, "dimension of the toy points")
    hidden: int = setting(128, "MLP hidden width")
    num_layers: int = setting(3, "MLP hidden layers")
    time_embed_dim: int = setting(32, "MLP time-embedding width")
    num_classes: int = setting(0, "class labels for conditioning (0: unconditional)")

    def validate(self) -> None:
        """Raise ``ValueError`` if any size is not a positive integer."""
        check_positive(self, "dim", "hidden", "num_layers", "time_embed_dim")
        check_num_classes(self)


class ToyMLP(nn.Module):
    """Noise predictor for points: ``forward(x [B, dim], t [B]) -> eps [B, dim]``.

    Each hidden layer computes ``silu(W h + U e(t))``: the sinusoidal embedding ``e(t)`` is
    added to every layer, which conditions on ``t`` far more strongly than feeding it once.
    With ``num_classes = K > 0`` a learned vector of the label (K + 1 of them, the last for the
    null label ∅) is added to ``e(t)``'s projection in the same way (Chapter 8).
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
        if cfg.num_classes:
            self.label_emb = nn.Embedding(cfg.num_classes + 1, cfg.time_embed_dim)

    def forward(self, x: Tensor, t: Tensor | float, y: Tensor | int | None = None) -> Tensor:
        """Predict the noise in ``x`` [B, dim] at time steps ``t`` [B], given labels ``y`` [B]
        (class-conditional networks only; None: the null label); returns [B, dim]."""
        if x.ndim != 2 or x.shape[1] != self.config.dim:
            raise ValueError(
                f"ToyMLP configured for points of dim {self.config.dim} got a tensor of shape "
                f"{tuple(x.shape)}: pass [B, {self.config.dim}] or build the model with "
                "ToyMLPConfig(dim=...) matching the data"
            )
        t = check_time_input(t, x.shape[0], x.device, "ToyMLP")
        emb = timestep_embedding(t, self.config.time_embed_dim).to(self.out.weight.dtype)
        y = label_input(y, x.shape[0], self.config.num_classes, x.device, "ToyMLP")
        if y is not None:
            emb = emb + self.label_emb(y)
        h = x
        for layer, proj in zip(self.layers, self.time_proj, strict=True):
            h = F.silu(layer(h) + proj(emb))
        return self.out(h)
