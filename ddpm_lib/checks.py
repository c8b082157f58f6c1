"""Statistics behind the chapters' Monte Carlo checks: is a sample consistent with a law?

A chapter that claims "these draws have mean m and variance v" checks it with the z-scores of
the sample mean and the sample variance (Chapter 2): each is about N(0, 1) when the claim
holds, so |z| < 5 fails by chance about once in 1.7 million checks.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

Tensor = torch.Tensor


class MomentZScores(NamedTuple):
    """z-scores of a sample's mean and variance against the claimed ones."""

    mean: float
    variance: float


def moment_z_scores(samples: Tensor, mean: float, variance: float) -> MomentZScores:
    """z_mean = (m̂ - m)/√(v/n) and z_var = (s² - v)/(v √(2/(n-1))) (eq-ch2-z), Chapter 2.

    ``samples`` is a 1-D tensor of n independent draws claimed to have ``mean`` and
    ``variance``. The variance's standard error √(2/(n-1)) v is that of a Gaussian sample
    (its fourth moment is 3v²); for other laws use the law's own fourth moment.
    """
    x = samples.detach().double().flatten()
    n = x.numel()
    if n < 2:
        raise ValueError(f"need at least 2 samples for a variance, got {n}")
    if not variance > 0:
        raise ValueError(f"the claimed variance must be positive, got {variance}")
    z_mean = (x.mean().item() - mean) / math.sqrt(variance / n)
    z_var = (x.var().item() - variance) / (variance * math.sqrt(2 / (n - 1)))
    return MomentZScores(z_mean, z_var)
