"""The GPU and multi-GPU machinery: CUDA graphs of the library's own functions, channels_last
and ``torch.compile`` (:mod:`~ddpm_lib.accel.graphs`), and data-parallel training under
``torchrun`` (:mod:`~ddpm_lib.accel.distributed`). The maths never imports this package."""

from .graphs import GRAPHING_COMPILE_MODES, GraphedSampler, GraphedStep, prepare_model

__all__ = ["GRAPHING_COMPILE_MODES", "GraphedSampler", "GraphedStep", "prepare_model"]
