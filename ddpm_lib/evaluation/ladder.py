"""A calibration ladder for the Fréchet distance: what known damage to real images scores.

The book's Fréchet distance (FD) in the shipped classifier's feature space is honest but hard
to read: is 0.8 good? The ladder answers with real images. Take the floor set (real images the
model never had to match, :func:`~ddpm_lib.evaluation.evaluate.real_sets`), damage it in known
ways, quantize it to 8 bits like every real and generated image, and measure its FD to the
reference set at the same n as the models. A model's FD then reads as "between σ = 2/255 noise
and a one-pixel shift".

The rungs (:data:`RUNGS`): Gaussian noise of σ = 1, 2, 4, 8 (out of 255), a blend with the
binomial 3×3 blur at 25% and 50%, a one-pixel shift to the right (the left column repeated), and
the intensity scaled by 0.95 (black stays black). Each family is monotone in its strength.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
import torch.nn.functional as F

from ..data import from_model_range, to_model_range
from .metrics import frechet_distance_features

if TYPE_CHECKING:
    from matplotlib.figure import Figure

Tensor = torch.Tensor


class Rung(NamedTuple):
    """One perturbation: its ``family``, ``strength`` (larger is more damage) and ``label``."""

    family: str
    strength: float
    label: str


RUNGS: tuple[Rung, ...] = (
    *(Rung("noise", s, f"noise σ = {s:g}/255") for s in (1, 2, 4, 8)),
    *(Rung("blur", a, f"blur blend {a:.0%}") for a in (0.25, 0.5)),
    Rung("shift", 1, "one-pixel shift"),
    Rung("contrast", 0.05, "contrast × 0.95"),
)


def perturb(x: Tensor, rung: Rung, generator: torch.Generator) -> Tensor:
    """``x`` [N, C, H, W] in [-1, 1] damaged by ``rung`` and quantized to the 8-bit grid."""
    if rung.family == "noise":
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype)
        out = x + (2 * rung.strength / 255) * noise  # σ/255 of the [0, 1] range
    elif rung.family == "blur":
        c = x.shape[1]
        taps = torch.tensor([1.0, 2.0, 1.0], dtype=x.dtype) / 4  # the binomial 3×3 blur
        kernel = torch.outer(taps, taps).expand(c, 1, 3, 3)
        blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=c)
        out = (1 - rung.strength) * x + rung.strength * blurred
    elif rung.family == "shift":
        k = int(rung.strength)
        out = F.pad(x, (k, 0, 0, 0), mode="replicate")[..., : x.shape[-1]]
    elif rung.family == "contrast":
        out = (1 - rung.strength) * (x + 1) - 1  # a gain on [0, 1]: black stays black
    else:
        raise ValueError(f"unknown perturbation family {rung.family!r}")
    return to_model_range(from_model_range(out.clamp(-1.0, 1.0)))


def calibration_ladder(
    floor: Tensor,
    reference_features: Tensor,
    features: Callable[[Tensor], Tensor],
    *,
    rungs: tuple[Rung, ...] = RUNGS,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """The FD to the reference of the floor set after each rung, sorted by FD.

    ``floor`` [n, C, H, W] real images in [-1, 1]; ``reference_features`` [n', D];
    ``features`` maps images to features (the evaluator's classifier). Returns
    ``[{"rung": label, "family", "strength", "fd"}, ...]``, ascending in FD, the undamaged
    floor first. Deterministic for a ``seed`` (the noise rungs draw from it).
    """
    gen = torch.Generator().manual_seed(seed)
    out = [
        {
            "rung": "real images (the floor)",
            "family": "none",
            "strength": 0.0,
            "fd": frechet_distance_features(features(floor), reference_features),
        }
    ]
    for rung in rungs:
        damaged = perturb(floor, rung, gen)
        fd = frechet_distance_features(features(damaged), reference_features)
        out.append({"rung": rung.label, "family": rung.family, "strength": rung.strength, "fd": fd})
    return sorted(out, key=lambda r: r["fd"])


def place_on_ladder(fd: float, ladder: list[dict[str, Any]]) -> str:
    """Where ``fd`` falls on a ladder: "between A (0.31) and B (1.66)", or beyond either end."""
    below = [r for r in ladder if r["fd"] <= fd]
    above = [r for r in ladder if r["fd"] > fd]
    if not below:
        return f"below {ladder[0]['rung']} ({ladder[0]['fd']:.3g})"
    if not above:
        return f"above {ladder[-1]['rung']} ({ladder[-1]['fd']:.3g})"
    lo, hi = below[-1], above[0]
    return f"between {lo['rung']} ({lo['fd']:.3g}) and {hi['rung']} ({hi['fd']:.3g})"


def ladder_panels(
    images: Tensor, ladder: list[dict[str, Any]], *, seed: int = 0
) -> list[tuple[str, float, Tensor]]:
    """What each rung looks like: ``images`` [B, C, H, W] (real, in [-1, 1]) under each rung.

    ``ladder`` is a measured ladder (:func:`calibration_ladder`'s list, e.g. the ``ladder`` of a
    shipped classifier's card); returns ``(label, FD, damaged images)`` per rung, the undamaged
    images as the floor, for :func:`ddpm_lib.viz.plot_ladder`. Rungs not in :data:`RUNGS` are
    skipped (they cannot be redrawn).
    """
    by_label = {r.label: r for r in RUNGS}
    gen = torch.Generator().manual_seed(seed)
    panels = []
    for entry in ladder:
        if entry["family"] == "none":
            panels.append(("real (the floor)", entry["fd"], images))
        elif entry["rung"] in by_label:
            panels.append(
                (entry["rung"], entry["fd"], perturb(images, by_label[entry["rung"]], gen))
            )
    return panels


def plot_on_ladder(
    real: Tensor,
    ladder: list[dict[str, Any]],
    samples: dict[str, tuple[float, Tensor]],
    *,
    ncols: int = 6,
) -> Figure:
    """Model samples among the ladder's rungs, all sorted by FD (Chapters 4 and 7).

    ``real`` [B, C, H, W]: real images to damage (:func:`ladder_panels`); ``ladder``: a measured
    ladder; ``samples``: label → (the model's FD at the ladder's n, a few of its samples). The
    models' panels get highlighted titles (:func:`ddpm_lib.viz.plot_ladder`).
    """
    from ..viz import plot_ladder  # matplotlib only when drawing

    panels = ladder_panels(real, ladder)
    panels += [(label, fd, images) for label, (fd, images) in samples.items()]
    return plot_ladder(panels, highlight=list(samples), ncols=ncols)
