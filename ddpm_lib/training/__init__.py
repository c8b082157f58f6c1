"""Training: the config (one source of every default), the recipes of the shipped checkpoints,
the trainer (Algorithm 1 with AdamW, EMA, exact resume), checkpoint files and load-or-train."""

from .checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from .config import RESUMABLE, TrainConfig, diffusion_for
from .pretrained import Pretrained, load_or_train, load_pretrained
from .recipes import RECIPES, recipe
from .trainer import NonFiniteLossError, Trainer

__all__ = [
    "RECIPES",
    "RESUMABLE",
    "CheckpointError",
    "NonFiniteLossError",
    "Pretrained",
    "TrainConfig",
    "Trainer",
    "diffusion_for",
    "load_checkpoint",
    "load_model",
    "load_or_train",
    "load_pretrained",
    "recipe",
    "save_checkpoint",
]
