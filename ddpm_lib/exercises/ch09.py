"""Chapter 9's coding exercises (ddpm_lib.exercises)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ddpm_lib.exercises import Exercise
from ddpm_lib.flow import LinearPath, flow_sample, mixture_velocity
from ddpm_lib.mixture import default_gmm

Tensor = torch.Tensor
Velocity = Callable[[Tensor, Tensor], Tensor]

# A few steps first (there the two typical mistakes give different answers), then many, then
# one (the velocity at t = 1 only).
_STEPS = (3, 20, 1)


def _euler(velocity: Velocity, x: Tensor, steps: int, *, sign: float, at_end: bool) -> Tensor:
    """Euler from t = 1 to 0 with the step's sign and where its velocity is read: the right
    way (sign -1, start of the step) and the two ways a reader can get it wrong."""
    grid = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    for k in range(steps):
        t = float(grid[k + 1] if at_end else grid[k])
        x = x + sign * (1.0 / steps) * velocity(x, torch.full((len(x),), t, dtype=x.dtype))
    return x


def _test_euler_flow_sample(fn: Callable) -> str | None:
    """Compare fn(velocity, x_1, steps) with the library's flow_sample (Euler) on the exact
    velocity of the book's mixture on the linear path (eq-ch9-ode), for 3, 20 and 1 steps."""
    mixture, path = default_gmm(torch.float64), LinearPath()

    def velocity(x: Tensor, t: Tensor) -> Tensor:
        return mixture_velocity(mixture, path, x, t)

    x1 = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for steps in _STEPS:
        want = flow_sample(velocity, x1, steps, method="euler")
        got = torch.as_tensor(fn(velocity, x1.clone(), steps), dtype=torch.float64)
        if got.shape != want.shape:
            shape, right = tuple(got.shape), tuple(want.shape)
            return f"with steps = {steps} you return shape {shape}, not {right}."
        if torch.allclose(got, want, atol=1e-9):
            continue
        off = (got - want).abs().max().item()
        if torch.allclose(got, _euler(velocity, x1, steps, sign=1.0, at_end=False), atol=1e-9):
            return (
                "your steps go the wrong way: time runs from t = 1 (noise) down to t = 0 (data), "
                "so each step is x + (t_next - t) v(x, t) with t_next - t = -1/steps < 0."
            )
        if torch.allclose(got, _euler(velocity, x1, steps, sign=-1.0, at_end=True), atol=1e-9):
            return (
                "you read the velocity at the end of each step: Euler's method takes the slope "
                "where the step starts, v(x, t), and moves to t_next with it."
            )
        return (
            f"with steps = {steps} you are off by up to {off:.3g}: start at x_1 and t = 1, and "
            "take the steps x ← x + (t_next - t) v(x, t) on the grid 1, 1 - 1/steps, ..., 0."
        )
    return None


def _euler_flow_sample_mistake(velocity: Velocity, x_1: Tensor, steps: int) -> Tensor:
    # Steps of +1/steps, as if time ran forwards: the flow is pushed the wrong way.
    x, h = x_1, 1.0 / steps
    for k in range(steps):
        t = torch.full((len(x),), 1.0 - k * h, dtype=x.dtype)
        x = x + h * velocity(x, t)
    return x


EXERCISES = [
    Exercise(
        "ch09.euler_flow_sample",
        "euler_flow_sample",
        _test_euler_flow_sample,
        _euler_flow_sample_mistake,
    ),
]
