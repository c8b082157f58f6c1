"""Shared test helpers: Monte Carlo tolerances. (The exact models live in ddpm_lib.oracles.)"""

from __future__ import annotations


def mc_tolerance(std: float, n: int, z: float = 5.0) -> float:
    """z standard errors of a mean of n draws with standard deviation ``std``.

    z = 5 makes a false alarm (two-sided) about 6e-7 per comparison.
    """
    return z * std / n**0.5
