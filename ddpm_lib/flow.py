"""Flow matching: probability paths, their velocities, the regression loss (Chapter 9).

Time runs as in Chapter 6: t = 0 is the data, t = 1 the noise. A *path* mixes a data point and
a noise vector, x_t = α_t x_0 + σ_t ε (the conditional path, eq-ch9-path), with α_0 = 1,
σ_0 = 0 and σ_1 > 0; along it x_t moves with the conditional velocity u_t = α'_t x_0 + σ'_t ε
(eq-ch9-cond-velocity). The marginal velocity v_t(x) = E[u_t | x_t = x] (eq-ch9-marginal-velocity)
carries the whole distribution of x_t along the continuity equation (eq-ch9-continuity), so
integrating dx/dt = v_t(x) (eq-ch9-ode) from t = 1 to t = 0 turns noise into data (the ODE
integrators are :func:`ddpm_lib.sde.ode_step`'s).

- :class:`LinearPath`: α_t = 1 - t, σ_t = t (rectified flow; u_t = ε - x_0; eq-ch9-linear).
- :class:`VPPath`: α_t = √ᾱ(t), σ_t = √(1 - ᾱ(t)) of a VP-SDE, the path of Chapters 1-7.
- :meth:`Path.velocity_from_eps` / :meth:`Path.eps_from_velocity`: on any path the marginal
  velocity is a fixed linear combination of x_t and E[ε | x_t] (eq-ch9-velocity-eps), so the
  book's ε-network already defines a flow.
- :func:`mixture_velocity`: the exact marginal velocity of the 2-D Gaussian mixture.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .diffusion import GaussianDiffusion
from .mixture import GaussianMixture2D
from .sde import (
    VPSDE,
    DiscreteVPSDE,
    OdeLikelihood,
    check_ode_method,
    eps_model_score_fn,
    log_time_grid,
    ode_log_likelihood,
    ode_step,
    probability_flow_sample,
    velocity_log_likelihood,
)

Tensor = torch.Tensor
Velocity = Callable[[Tensor, Tensor], Tensor]  # (x_t [B, ...], t [B] in [0, 1]) -> shaped like x_t


def _bcast(v: Tensor, x: Tensor) -> Tensor:
    return v.to(x).reshape(-1, *([1] * (x.ndim - 1)))


def _check_times(t: Tensor | float, x: Tensor) -> Tensor:
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    t = t.expand(x.shape[0]) if t.ndim == 0 else t
    if t.shape != (x.shape[0],):
        raise ValueError(f"t must be one time per batch item, [{x.shape[0]}], got {tuple(t.shape)}")
    if not x.is_cuda and ((t < 0) | (t > 1)).any():
        raise ValueError("flow-matching times lie in [0, 1] (0: data, 1: noise)")
    return t


class Path:
    """A Gaussian probability path x_t = α_t x_0 + σ_t ε (eq-ch9-path); subclasses give α, σ and
    their time derivatives as functions of t [B] (Chapter 9)."""

    name = "path"

    def alpha(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def sigma(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def d_alpha(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def d_sigma(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def sample(self, x0: Tensor, t: Tensor | float, noise: Tensor) -> Tensor:
        """x_t = α_t x_0 + σ_t ε (the conditional path, eq-ch9-path), shaped like x0."""
        t = _check_times(t, x0)
        return _bcast(self.alpha(t), x0) * x0 + _bcast(self.sigma(t), x0) * noise

    def conditional_velocity(self, x0: Tensor, t: Tensor | float, noise: Tensor) -> Tensor:
        """u_t = d x_t/dt = α'_t x_0 + σ'_t ε (eq-ch9-cond-velocity), shaped like x0."""
        t = _check_times(t, x0)
        return _bcast(self.d_alpha(t), x0) * x0 + _bcast(self.d_sigma(t), x0) * noise

    def velocity_from_eps(self, x_t: Tensor, t: Tensor | float, eps: Tensor) -> Tensor:
        """v = (α'/α) x_t + (σ' - α'σ/α) ε̂ (velocity from ε, eq-ch9-velocity-eps); needs α_t > 0.

        Substitute x̂_0 = (x_t - σ ε̂)/α into α' x̂_0 + σ' ε̂. With ε̂ = E[ε | x_t] (the exact
        ε-model) it is the marginal velocity E[u_t | x_t]: conditional expectation is linear.
        """
        t = _check_times(t, x_t)
        a, s, da, ds = (_bcast(f(t), x_t) for f in self._coefficients())
        return (da / a) * x_t + (ds - da * s / a) * eps

    def eps_from_velocity(self, x_t: Tensor, t: Tensor | float, v: Tensor) -> Tensor:
        """The inverse of :meth:`velocity_from_eps`: ε̂ = (v - (α'/α) x_t)/(σ' - α'σ/α)
        (eq-ch9-velocity-eps solved for ε̂)."""
        t = _check_times(t, x_t)
        a, s, da, ds = (_bcast(f(t), x_t) for f in self._coefficients())
        return (v - (da / a) * x_t) / (ds - da * s / a)

    def sigma_d_sigma(self, t: Tensor) -> Tensor:
        """σ_t σ'_t = ½ d(σ_t²)/dt, finite also where σ_t = 0 and σ'_t is not."""
        return self.sigma(t) * self.d_sigma(t)

    def _coefficients(self) -> tuple[Callable[[Tensor], Tensor], ...]:
        return self.alpha, self.sigma, self.d_alpha, self.d_sigma

    def training_loss(
        self,
        model: Velocity,
        x0: Tensor,
        *,
        t: Tensor | None = None,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """The conditional flow-matching loss per example, [B] (Lipman et al. 2023; eq-ch9-fm-loss).

        Draws t ~ U(0, 1) and ε ~ N(0, I) unless given, and returns the mean over coordinates
        of ‖v_θ(x_t, t) - u_t‖². Its expectation differs from the regression on the marginal
        velocity, E‖v_θ - v_t‖², by a constant independent of θ, so both have the same
        minimiser v_t and the same gradients (eq-ch9-loss-gap).
        """
        b = x0.shape[0]
        if t is None:
            t = torch.rand(b, device=x0.device, generator=generator, dtype=x0.dtype)
        if noise is None:
            noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        x_t = self.sample(x0, t, noise)
        target = self.conditional_velocity(x0, t, noise)
        return (model(x_t, t).float() - target.float()).pow(2).flatten(1).mean(dim=1)


class LinearPath(Path):
    """α_t = 1 - t, σ_t = t: the straight line from x_0 to ε (rectified flow), u_t = ε - x_0
    (eq-ch9-linear)."""

    name = "linear"

    def alpha(self, t: Tensor) -> Tensor:
        return 1 - t

    def sigma(self, t: Tensor) -> Tensor:
        return t

    def d_alpha(self, t: Tensor) -> Tensor:
        return -torch.ones_like(t)

    def d_sigma(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)


class VPPath(Path):
    """The variance-preserving path of a VP-SDE: α_t = √ᾱ(t), σ_t = √(1 - ᾱ(t)), with
    α'_t = -½β(t) α_t and σ'_t = ½β(t) ᾱ(t)/σ_t (Chapter 6's marginals, eq-ch6-marginals).
    ``DiscreteVPSDE(diffusion.betas)`` gives the path of a trained DDPM model. Its velocity from
    ε (eq-ch9-velocity-eps) is -½β(t) x + ½β(t) ε̂/σ_t, the probability-flow drift of Chapter 6
    (eq-ch9-vp-velocity)."""

    name = "vp"

    def __init__(self, sde: VPSDE) -> None:
        self.sde = sde

    def _alpha_bar(self, t: Tensor) -> Tensor:
        return torch.exp(-self.sde.integrated_beta(t))

    def alpha(self, t: Tensor) -> Tensor:
        return self._alpha_bar(t).sqrt()

    def sigma(self, t: Tensor) -> Tensor:
        return (-torch.expm1(-self.sde.integrated_beta(t))).sqrt()

    def d_alpha(self, t: Tensor) -> Tensor:
        return -0.5 * self.sde.beta(t) * self.alpha(t)

    def d_sigma(self, t: Tensor) -> Tensor:
        return 0.5 * self.sde.beta(t) * self._alpha_bar(t) / self.sigma(t)

    def sigma_d_sigma(self, t: Tensor) -> Tensor:
        return 0.5 * self.sde.beta(t) * self._alpha_bar(t)


def mixture_velocity(mixture: GaussianMixture2D, path: Path, x: Tensor, t: Tensor) -> Tensor:
    """The exact marginal velocity v_t(x) = E[α' x_0 + σ' ε | x_t = x] of a Gaussian mixture
    (eq-ch9-marginal-velocity), x [n, d], t [n] in [0, 1] -> [n, d].

    Given component k, (x_0, ε, x_t) are jointly Gaussian with x_t ~ N(α μ_k, r² I),
    r² = α² s² + σ², so E[x_0 | x_t, k] = μ_k + (α s²/r²)(x_t - α μ_k) and
    E[ε | x_t, k] = (σ/r²)(x_t - α μ_k); the components are weighted by their responsibilities
    for x_t. σ' enters only as σσ' (:meth:`Path.sigma_d_sigma`), so the result is finite for
    every t in [0, 1], also where α_t = 0 or σ_t = 0.
    """
    t = _check_times(t, x)
    dt = mixture.means.dtype
    xs, t = x.to(dt), t.to(dt)
    a, s, da = (f(t)[:, None] for f in (path.alpha, path.sigma, path.d_alpha))  # [n, 1]
    s_ds = path.sigma_d_sigma(t)[:, None]
    var = a**2 * mixture.std**2 + s**2  # r², [n, 1]
    means = mixture.means.to(dt)  # [K, d]
    centred = xs[:, None, :] - a[:, :, None] * means[None]  # x_t - α μ_k, [n, K, d]
    log_r = (
        mixture.weights.to(dt).log()[None]
        - (centred**2).sum(-1) / (2 * var)
        - 0.5 * mixture.dim * var.log()
    )  # [n, K]
    resp = torch.softmax(log_r, dim=1)[:, :, None]
    x0_k = means[None] + (a * mixture.std**2 / var)[:, :, None] * centred
    ds_eps_k = (s_ds / var)[:, :, None] * centred  # σ' E[ε | x_t, k], finite at σ = 0
    v = (resp * (da[:, :, None] * x0_k + ds_eps_k)).sum(1)
    return v.to(x.dtype)


@torch.no_grad()
def flow_sample(
    velocity: Velocity,
    x_1: Tensor,
    steps: int = 50,
    *,
    method: str = "euler",
    t_end: float = 0.0,
    schedule: Callable[[int], Tensor] | None = None,
) -> Tensor:
    """Integrate dx/dt = velocity(x, t) (eq-ch9-ode) from t = 1 (the noise ``x_1``) to ``t_end``
    (Chapter 9).

    ``steps`` uniform steps of :func:`ddpm_lib.sde.ode_step` (Euler: one velocity call per step,
    Heun: two), or the descending times ``schedule(steps)`` from 1 to t_end. Returns a tensor
    shaped like x_1.
    """
    check_ode_method(method)
    if steps < 1:
        raise ValueError(f"steps must be ≥ 1, got {steps}")
    if not 0.0 <= t_end < 1.0:
        raise ValueError(f"t_end must lie in [0, 1), got {t_end}")
    grid = (
        schedule(steps)
        if schedule is not None
        else torch.linspace(1.0, t_end, steps + 1, dtype=torch.float64)
    )
    x = x_1.clone()
    for k in range(len(grid) - 1):
        x = ode_step(velocity, x, float(grid[k]), float(grid[k + 1]), method)
    return x


def gaussian_flow_map(mean: float, std: float, path: Path, x_1: Tensor, t: float) -> Tensor:
    """Where the exact flow of data N(mean, std² I) takes x_1 at time t (eq-ch9-gaussian-flow-map).

    The marginal of x_t is N(α_t m, r_t² I), r_t² = α_t² s² + σ_t², and the flow is the
    monotone map between the Gaussians: x_t = α_t m + (r_t/r_1)(x_1 - α_1 m).
    """
    tt = torch.tensor([t, 1.0], dtype=torch.float64)
    a, s = path.alpha(tt), path.sigma(tt)
    r = (a**2 * std**2 + s**2).sqrt()
    return (a[0] * mean + (r[0] / r[1]) * (x_1 - a[1] * mean)).to(x_1.dtype)


class FlowMatching:
    """A flow-matching model's process: a path and the network's time scale (Chapter 9).

    The network is called as ``model(x_t, time_scale · t)``: the book's networks embed their
    time input like a diffusion step index (0..T-1), so t ∈ [0, 1] is stretched to that range.
    :meth:`training_loss` has the signature of ``GaussianDiffusion.training_loss``, so the
    trainer runs either; :meth:`velocity` turns the network into the velocity that
    :func:`flow_sample` integrates.
    """

    def __init__(self, path: Path | None = None, time_scale: float = 1000.0) -> None:
        self.path = path or LinearPath()
        self.time_scale = float(time_scale)

    def velocity(self, model: Callable[..., Tensor]) -> Velocity:
        """v_θ(x, t) = model(x, time_scale · t)."""

        def v(x: Tensor, t: Tensor) -> Tensor:
            return model(x, self.time_scale * t)

        return v

    def training_loss(
        self,
        model: Callable[..., Tensor],
        x0: Tensor,
        *,
        t: Tensor | None = None,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """The flow-matching loss per example, [B] (:meth:`Path.training_loss`)."""
        return self.path.training_loss(
            self.velocity(model), x0, t=t, noise=noise, generator=generator
        )

    def sample(
        self, model: Callable[..., Tensor], x_1: Tensor, steps: int = 50, *, method: str = "euler"
    ) -> Tensor:
        """x_0 from the noise ``x_1`` by :func:`flow_sample` (``steps`` steps of ``method``)."""
        return flow_sample(self.velocity(model), x_1, steps, method=method)


def ode_sample(
    process: FlowMatching | GaussianDiffusion,
    model: Callable[..., Tensor],
    x_1: Tensor,
    steps: int,
    method: str = "euler",
) -> Tensor:
    """Sample either kind of model by its ODE, ``steps`` steps of Euler or Heun from the noise.

    A flow-matching model integrates its own velocity (:meth:`FlowMatching.sample`). A diffusion
    model integrates its probability-flow ODE (Chapter 6: the VP path's velocity from its ε,
    :func:`~ddpm_lib.sde.probability_flow_sample`) from t = 1 to t = 1/T, then takes Tweedie's
    x̂_0: one more network call. :func:`ode_network_evaluations` counts the calls.
    """
    if isinstance(process, FlowMatching):
        return process.sample(model, x_1, steps, method=method)
    T = process.num_timesteps
    sde = DiscreteVPSDE(process.betas)
    score = eps_model_score_fn(sde, process.mean_model(model), T)
    return probability_flow_sample(
        sde, score, x_1, steps, method=method, t_end=1.0 / T, denoise=True, progress=False
    )


def ode_network_evaluations(
    process: FlowMatching | GaussianDiffusion, steps: int, method: str
) -> int:
    """Network calls of :func:`ode_sample`: one (Euler) or two (Heun) per step, plus Tweedie's
    final call for a diffusion model."""
    check_ode_method(method)
    calls = steps * (1 if method == "euler" else 2)
    return calls if isinstance(process, FlowMatching) else calls + 1


def model_log_likelihood(
    process: FlowMatching | GaussianDiffusion,
    model: Callable[..., Tensor],
    x: Tensor,
    steps: int = 100,
    *,
    hutchinson: bool = False,
    generator: torch.Generator | None = None,
    progress: bool = True,
) -> OdeLikelihood:
    """log-density of ``x`` [B, ...] under either kind of model's ODE, per sample (nats).

    One estimator for both (:func:`~ddpm_lib.sde.velocity_log_likelihood`: Heun over ``steps``
    steps equal in log t, the same probe, the prior N(0, I) at t = 1). A diffusion model
    integrates its probability-flow drift from t = 1/T, the smallest noise level its network was
    trained on; a flow-matching model its velocity from t = 0, the data end of its path (the
    grid's first point, 1/time_scale, is moved to 0: the same number of steps and calls).
    """
    if isinstance(process, FlowMatching):
        grid = log_time_grid(steps, 1.0 / process.time_scale)
        grid[0] = 0.0
        return velocity_log_likelihood(
            process.velocity(model),
            x,
            grid,
            hutchinson=hutchinson,
            generator=generator,
            progress=progress,
        )
    T = process.num_timesteps
    sde = DiscreteVPSDE(process.betas)
    score = eps_model_score_fn(sde, process.mean_model(model), T)
    return ode_log_likelihood(
        sde,
        score,
        x,
        steps,
        t_start=1.0 / T,
        hutchinson=hutchinson,
        generator=generator,
        progress=progress,
    )
