"""ddpm_lib: the library behind "DDPM, derived and run".

The maths (``schedules``, ``diffusion``, ``losses``, ``samplers``, ``sde``) is kept apart from
the networks (``models``); ``data``, ``train``, ``viz`` and ``utils`` serve the chapters, and
``python -m ddpm_lib`` is the command line.
"""

from .diffusion import GaussianDiffusion
from .schedules import cosine_beta_schedule, get_beta_schedule, linear_beta_schedule

__all__ = [
    "GaussianDiffusion",
    "cosine_beta_schedule",
    "get_beta_schedule",
    "linear_beta_schedule",
]
__version__ = "0.1.0"
