"""ddpm_lib: the library behind "DDPM, derived and run".

Its layers, each importing only from those before it (``tests/test_layers.py`` checks):

1. ``utils``: device, seeding, the quick-mode switch, the mark of a checked input; ``checks``:
   the statistics of the chapters' Monte Carlo checks.
2. The maths, one idea per module, in this order: ``schedules`` (β_t, Ch. 1), ``gaussian``
   (Gaussian KL and the discretized decoder, Ch. 5), ``mixture`` (the 2-D toy data's exact
   densities), ``diffusion`` (forward process, posterior, parameterizations, reverse step,
   L_simple; Ch. 1-4), ``elbo`` (the bound over the chain, Ch. 5), ``learned_variance``
   (Nichol & Dhariwal's hybrid loss), ``samplers`` (DDPM and DDIM, Ch. 4 and 7), ``sde``
   (Ch. 6), ``oracles`` (exact ε-models), ``guidance`` (classifier and classifier-free
   guidance, the tilted target; Ch. 8), ``flow`` (flow matching: paths, velocities, the loss).
3. ``data`` and ``viz``: datasets and pictures.
4. ``nets``: the networks and their registry.
5. ``accel``: CUDA graphs of the library's own functions, and multi-GPU training.
6. ``training``: config, recipes, trainer, checkpoints, load-or-train.
7. ``evaluation``: sample quality and likelihood of a checkpoint.
8. ``cli``: ``python -m ddpm_lib``.
"""

from .diffusion import GaussianDiffusion
from .schedules import cosine_beta_schedule, get_beta_schedule, linear_beta_schedule

__all__ = [
    "GaussianDiffusion",
    "cosine_beta_schedule",
    "get_beta_schedule",
    "linear_beta_schedule",
]
__version__ = "0.2.0"
