"""The SDE view of diffusion (Song et al. 2021), Chapter 6.

A forward SDE dx = f(x, t) dt + g(t) dW on t ∈ [0, 1] (eq-ch6-sde) has the reverse-time SDE
(Anderson 1982)

    dx = [f(x, t) - g(t)² ∇_x log p_t(x)] dt + g(t) dW̄,

and the probability-flow ODE dx/dt = f(x, t) - ½ g(t)² ∇_x log p_t(x) with the same marginals.
DDPM is a discretization of the variance-preserving (VP) SDE dx = -½ β(t) x dt + √β(t) dW.
An ε-model gives the score through ∇ log p_t(x) ≈ -ε̂(x, t)/σ_t, σ_t the marginal std.

Continuous time t ∈ [0, 1] meets the discrete steps at t = i/T for book step i (code index i-1).
The samplers share the signature of :mod:`ddpm_lib.samplers`: ``sampler(sde, score_fn, x_1,
steps, *, options..., generator=None, callback=None, progress=True)``, starting from the x_1
they are given (``sde.prior_sampling(shape, ...)`` draws one).

Times are validated where a caller hands them in: the score and Tweedie's formula refuse a time
whose marginal std is 0 (the score is infinite there); the samplers build their times on a grid
that stops short of it, and mark them as checked.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from tqdm.auto import tqdm

from .mixture import GaussianMixture2D
from .samplers import Callback, SamplerStep
from .schedules import check_betas
from .utils import is_checked, mark_checked

Tensor = torch.Tensor
ScoreFn = Callable[[Tensor, Tensor], Tensor]
_POSITIVE = "positive time"


def _bcast(v: Tensor, x: Tensor) -> Tensor:
    return v.reshape(-1, *([1] * (x.ndim - 1)))


def _times(value: float, x: Tensor) -> Tensor:
    """The time tensor [B] of a sampler's grid point ``value``, marked as checked when > 0.

    t = 0 (the data end of a flow) is not marked positive.
    """
    t = torch.full((x.shape[0],), value, device=x.device, dtype=x.dtype)
    return mark_checked(t, _POSITIVE) if value > 0 else t


def _check_std(std: Tensor, t: Tensor, who: str) -> None:
    """Refuse times whose marginal std is 0 (t = 0 for the VP-SDE): the score is ±inf there."""
    if is_checked(t, _POSITIVE):
        return
    if (std <= 0).any():
        raise ValueError(
            f"{who} at a time t whose marginal std σ_t is 0 (t = "
            f"{float(t.flatten()[torch.argmin(std.flatten())]):g}): the score -ε/σ_t is "
            "infinite there. Stop at a small t_end > 0 (e.g. 1e-3) and denoise with "
            "tweedie_denoise, or use the discrete sampler for the last step"
        )


class SDE(abc.ABC):
    """A forward SDE dx = f(x, t) dt + g(t) dW on t ∈ [0, 1] (eq-ch6-sde): drift f, diffusion
    g, marginals and prior. Chapter 6."""

    @abc.abstractmethod
    def sde(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Drift f(x, t) shaped like x, and diffusion g(t) of shape [B]."""

    @abc.abstractmethod
    def marginal_prob(self, x0: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean of p_t(x | x_0) shaped like x0, and its std σ_t of shape [B]."""

    @abc.abstractmethod
    def prior_sampling(
        self, shape: tuple[int, ...], device=None, generator: torch.Generator | None = None
    ) -> Tensor:
        """A draw from the prior p_1 that the reverse process starts from."""

    @abc.abstractmethod
    def prior_logp(self, z: Tensor) -> Tensor:
        """log p_1(z) per sample, [B]: the density of the prior the reverse process starts from."""

    def mean_coeff(self, t: Tensor) -> Tensor:
        """s(t) with mean = s(t) x_0, shape [B]."""
        return self.marginal_prob(torch.ones_like(t), t)[0]

    def reverse(self, score_fn: ScoreFn, probability_flow: bool = False) -> ReverseSDE:
        """The reverse-time SDE (eq-ch6-reverse-sde) or, with ``probability_flow``, the ODE
        (eq-ch6-pf-ode), driven by ``score_fn``."""
        return ReverseSDE(self, score_fn, probability_flow)


class ReverseSDE:
    """dx = [f - g² s] dt + g dW̄ (eq-ch6-reverse-sde) or dx = [f - ½ g² s] dt (eq-ch6-pf-ode).

    Chapter 6: both keep the forward marginals p_t; the ODE's drift is the velocity that moves
    probability as the Fokker–Planck equation of the forward SDE (eq-ch6-fp) prescribes.
    """

    def __init__(self, forward: SDE, score_fn: ScoreFn, probability_flow: bool) -> None:
        self.forward = forward
        self.score_fn = score_fn
        self.probability_flow = probability_flow

    def sde(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        f, g = self.forward.sde(x, t)
        weight = 0.5 if self.probability_flow else 1.0
        drift = f - weight * _bcast(g**2, x) * self.score_fn(x, t)
        return drift, torch.zeros_like(g) if self.probability_flow else g


class VPSDE(SDE):
    """dx = -½ β(t) x dt + √β(t) dW (eq-ch6-vpsde), β(t) = β_min + t (β_max - β_min).

    Song et al. 2021; Chapter 6. With β_min = T β_1 and β_max = T β_T it is the T → ∞ limit of
    DDPM's linear schedule: β(i/T)/T ≈ β_i. Its moments solve dm/dt = -½βm, dv/dt = β(1-v)
    (eq-ch6-moment-odes): mean e^{-½B(t)} x_0, variance 1 - e^{-B(t)}, B(t) = ∫_0^t β
    (:meth:`marginal_prob`, eq-ch6-marginals).
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0) -> None:
        if not 0 <= beta_min <= beta_max:
            raise ValueError(f"need 0 ≤ beta_min ≤ beta_max, got {beta_min}, {beta_max}")
        self.beta_min = beta_min
        self.beta_max = beta_max

    def beta(self, t: Tensor) -> Tensor:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def integrated_beta(self, t: Tensor) -> Tensor:
        """B(t) = ∫_0^t β(s) ds = -log ᾱ(t)."""
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def alpha_bar(self, t: Tensor) -> Tensor:
        return torch.exp(-self.integrated_beta(t))

    def sde(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        beta = self.beta(t)
        return -0.5 * _bcast(beta, x) * x, beta.sqrt()

    def marginal_prob(self, x0: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean e^{-½B(t)} x_0 and std √(1 - e^{-B(t)}) of p(x(t) | x_0) (eq-ch6-marginals)."""
        big_b = self.integrated_beta(t)
        mean = _bcast(torch.exp(-0.5 * big_b), x0) * x0
        return mean, (-torch.expm1(-big_b)).sqrt()

    def prior_sampling(self, shape, device=None, generator=None) -> Tensor:
        return torch.randn(shape, device=device, generator=generator)

    def prior_logp(self, z: Tensor) -> Tensor:
        """log N(z; 0, I) per sample: the VP prior."""
        return standard_normal_logp(z)


class DiscreteVPSDE(VPSDE):
    """The VP-SDE whose marginals equal a discrete schedule's exactly at t = i/T.

    B(t) = -log ᾱ(t) interpolates linearly between the grid values -log ᾱ_i (with ᾱ_0 = 1), so
    β(t) is piecewise constant, T·(-log(1 - β_i)) on ((i-1)/T, i/T]. Any schedule works
    (linear, cosine); at t = i/T the mean coefficient is √ᾱ_i and the std √(1 - ᾱ_i).
    """

    def __init__(self, betas: Tensor) -> None:
        betas = check_betas(betas)
        self.num_timesteps = int(betas.shape[0])
        self._log_alpha = torch.log1p(-betas)
        self._neg_log_abar = torch.cat([betas.new_zeros(1), -torch.cumsum(self._log_alpha, 0)])
        self.beta_min = float(-self._log_alpha[0]) * self.num_timesteps
        self.beta_max = float(-self._log_alpha[-1]) * self.num_timesteps

    def _locate(self, t: Tensor) -> tuple[Tensor, Tensor]:
        u = t.double().clamp(0.0, 1.0) * self.num_timesteps
        i = u.floor().long().clamp(max=self.num_timesteps - 1)
        return i, u - i

    def beta(self, t: Tensor) -> Tensor:
        i, _ = self._locate(t)
        return (-self._log_alpha.to(t.device)[i] * self.num_timesteps).to(t.dtype)

    def integrated_beta(self, t: Tensor) -> Tensor:
        i, frac = self._locate(t)
        grid = self._neg_log_abar.to(t.device)
        return (grid[i] + frac * (grid[i + 1] - grid[i])).to(t.dtype)


class VESDE(SDE):
    """Variance-exploding SDE dx = √(d[σ²]/dt) dW, σ(t) = σ_min (σ_max/σ_min)^t (eq-ch6-vesde).

    Chapter 6 (SMLD / NCSN): mean x_0, std σ(t). Related to VP by x_VE = x_VP/√ᾱ,
    σ_VE² = (1-ᾱ)/ᾱ = 1/SNR (eq-ch6-ve-vp).
    """

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0) -> None:
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max

    def sigma(self, t: Tensor) -> Tensor:
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def sde(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        g = self.sigma(t) * math.sqrt(2 * math.log(self.sigma_max / self.sigma_min))
        return torch.zeros_like(x), g

    def marginal_prob(self, x0: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        return x0, self.sigma(t)

    def prior_sampling(self, shape, device=None, generator=None) -> Tensor:
        return self.sigma_max * torch.randn(shape, device=device, generator=generator)

    def prior_logp(self, z: Tensor) -> Tensor:
        """log N(z; 0, σ_max² I) per sample: the VE prior."""
        d = z[0].numel()
        s2 = self.sigma_max**2
        return -0.5 * z.double().flatten(1).pow(2).sum(1) / s2 - 0.5 * d * math.log(
            2 * math.pi * s2
        )


def eps_model_score_fn(sde: SDE, model: Callable[[Tensor, Tensor], Tensor], T: int) -> ScoreFn:
    """score(x, t) = -ε̂(x, t·T - 1)/σ_t (eq-ch6-score-eps): an ε-model as a score. Chapter 6.

    Continuous time t maps to the fractional code index t·T - 1, so t = i/T is code index
    i-1 (book step i); the network's sinusoidal time embedding accepts fractional steps. A
    time with σ_t = 0 (t = 0 on the VP-SDE) is refused: the score is infinite there.
    """

    def score_fn(x: Tensor, t: Tensor) -> Tensor:
        _, std = sde.marginal_prob(x, t)
        _check_std(std, t, "the score was asked for")
        eps = model(x, (t * T - 1).to(torch.float32))
        return -eps / _bcast(std, x)

    return score_fn


def tweedie_denoise(sde: SDE, score_fn: ScoreFn, x: Tensor, t: Tensor) -> Tensor:
    """E[x_0 | x_t] = (x_t + σ_t² ∇ log p_t(x_t))/s(t) (eq-ch4-tweedie, eq-ch6-score-eps).

    Chapters 4 and 6. A time with σ_t = 0 is refused (there is nothing to denoise, and the
    score is infinite).
    """
    _, std = sde.marginal_prob(x, t)
    _check_std(std, t, "tweedie_denoise was asked for E[x_0 | x_t]")
    return (x + _bcast(std**2, x) * score_fn(x, t)) / _bcast(sde.mean_coeff(t), x)


def _time_grid(steps: int, t_end: float) -> Tensor:
    if steps < 1:
        raise ValueError(f"steps must be ≥ 1, got {steps}")
    if not 0 < t_end < 1:
        raise ValueError(f"t_end must lie in (0, 1), got {t_end}")
    return torch.linspace(1.0, t_end, steps + 1, dtype=torch.float64)


def _finish(sde: SDE, score_fn: ScoreFn, x: Tensor, t_end: float, denoise: bool) -> Tensor:
    """The samplers' last step: Tweedie's E[x_0 | x_{t_end}] when ``denoise``, else x."""
    if not denoise:
        return x
    return tweedie_denoise(sde, score_fn, x, _times(t_end, x))


def _report(
    callback: Callback | None,
    sde: SDE,
    score_fn: ScoreFn,
    k: int,
    x: Tensor,
    t: Tensor,
    new: Tensor,
) -> None:
    """Hand step ``k`` to the callback, with Tweedie's x̂_0 at (x, t) (one more score call)."""
    if callback is not None:
        callback(SamplerStep(k, x, tweedie_denoise(sde, score_fn, x, t), new))


ODE_METHODS = ("euler", "heun")


def check_ode_method(method: str) -> None:
    if method not in ODE_METHODS:
        raise ValueError(f"unknown ODE method {method!r}; choose 'euler' or 'heun'")


def ode_step(
    velocity: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    t: float,
    t_next: float,
    method: str = "heun",
) -> Tensor:
    """One step of dx/dt = velocity(x, t) from time ``t`` to ``t_next`` (either direction).

    Chapter 6; the probability-flow ODE and the flow-matching samplers (Chapter 9) both take
    their steps here. "euler": x + d₁ h with d₁ = velocity(x, t), h = t_next - t (first order,
    one call); "heun": x + ½(d₁ + d₂) h with d₂ = velocity(x + d₁ h, t_next) (second order, two
    calls). ``velocity`` receives t as a [B] tensor in x's dtype.
    """
    check_ode_method(method)

    h = t_next - t
    d1 = velocity(x, _times(t, x))
    new = x + d1 * h
    if method == "heun":
        new = x + 0.5 * (d1 + velocity(new, _times(t_next, x))) * h
    return new


@torch.no_grad()
def euler_maruyama_sample(
    sde: SDE,
    score_fn: ScoreFn,
    x_1: Tensor,
    steps: int = 1000,
    *,
    t_end: float = 1e-3,
    denoise: bool = True,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    progress: bool = True,
) -> Tensor:
    """The reverse-time SDE (eq-ch6-reverse-sde) from t = 1 to ``t_end`` by Euler–Maruyama.

    Chapter 6 (eq-ch6-em). Returns a tensor shaped like ``x_1``; the callback gets step k
    (0 = the first) with Tweedie's x̂_0.

    1. x ← x_1 at t = 1; h = (1 - t_end)/steps.
    2. For each step: x ← x - [f - g² s](x, t) h + g(t) √h z, with z ~ N(0, I).
    3. With ``denoise``, return Tweedie's E[x_0 | x_{t_end}]; else x.
    """
    grid = _time_grid(steps, t_end)
    x = x_1.clone()
    rsde = sde.reverse(score_fn, probability_flow=False)
    for k in tqdm(range(steps), desc="Euler–Maruyama", disable=not progress):
        t = _times(float(grid[k]), x)
        h = float(grid[k] - grid[k + 1])
        drift, g = rsde.sde(x, t)
        z = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
        new = x - drift * h + _bcast(g, x) * math.sqrt(h) * z
        _report(callback, sde, score_fn, k, x, t, new)
        x = new
    return _finish(sde, score_fn, x, t_end, denoise)


@torch.no_grad()
def probability_flow_sample(
    sde: SDE,
    score_fn: ScoreFn,
    x_1: Tensor,
    steps: int = 100,
    *,
    method: str = "heun",
    t_end: float = 1e-3,
    denoise: bool = True,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    progress: bool = True,
) -> Tensor:
    """The probability-flow ODE (eq-ch6-pf-ode) from t = 1 to ``t_end``: deterministic given x_1.

    With the exact score of Gaussian data it follows the exact flow map (eq-ch6-flow-map).

    Chapter 6. ``method`` "euler" (first order, one score call a step) or "heun" (second
    order, two). ``generator`` is unused (the path is deterministic); it keeps the signature.

    1. x ← x_1 at t = 1.
    2. For each step t → t + dt (dt < 0): d₁ = F(x, t), x' = x + d₁ dt; Heun then corrects,
       x ← x + ½(d₁ + F(x', t + dt)) dt; Euler keeps x ← x'.
    3. With ``denoise``, return Tweedie's E[x_0 | x_{t_end}]; else x.
    """
    check_ode_method(method)
    grid = _time_grid(steps, t_end)
    x = x_1.clone()
    ode = sde.reverse(score_fn, probability_flow=True)

    def velocity(x: Tensor, t: Tensor) -> Tensor:
        return ode.sde(x, t)[0]

    for k in tqdm(range(steps), desc=f"probability-flow ODE ({method})", disable=not progress):
        t = _times(float(grid[k]), x)
        new = ode_step(velocity, x, float(grid[k]), float(grid[k + 1]), method)
        _report(callback, sde, score_fn, k, x, t, new)
        x = new
    return _finish(sde, score_fn, x, t_end, denoise)


# ----------------------------------------------------------------------------- likelihood


def divergence(
    fn: Callable[[Tensor, Tensor], Tensor], x: Tensor, t: Tensor, probe: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """fn(x, t) and its divergence ∇_x · fn per sample, shape [B].

    ``probe=None``: exact, one vector-Jacobian product per dimension (for low-dimensional data).
    A probe ε (shaped like x, E[εεᵀ] = I): the Skilling–Hutchinson estimate εᵀ (∂fn/∂x) ε, one
    vector-Jacobian product, unbiased.
    """
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        out = fn(x, t)
        if probe is not None:
            (vjp,) = torch.autograd.grad(out, x, probe)
            return out.detach(), (vjp * probe).flatten(1).sum(1)
        div = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for i in range(x[0].numel()):
            unit = torch.zeros_like(x).flatten(1)
            unit[:, i] = 1.0
            (vjp,) = torch.autograd.grad(out, x, unit.view_as(x), retain_graph=True)
            div = div + vjp.flatten(1)[:, i]
    return out.detach(), div


class OdeLikelihood(NamedTuple):
    """:func:`ode_log_likelihood`'s result, per sample."""

    log_likelihood: Tensor  # [B], nats
    prior_logp: Tensor  # [B]: log p_1 at the end point
    x1: Tensor  # the end point x(1), shaped like x


def log_time_grid(steps: int, t_start: float) -> Tensor:
    """``steps`` + 1 times from t_start to 1, equal in log t (float64).

    Near t = 0 the score changes on the scale of σ_t ∝ √t, so equal steps in t would spend
    almost all of their error budget in the first one.
    """
    if steps < 1 or not 0 < t_start < 1:
        raise ValueError(f"need steps ≥ 1 and t_start in (0, 1), got {steps}, {t_start}")
    return torch.logspace(math.log10(t_start), 0.0, steps + 1, dtype=torch.float64)


def standard_normal_logp(z: Tensor) -> Tensor:
    """log N(z; 0, I) per sample, [B] (float64)."""
    d = z[0].numel()
    return -0.5 * z.double().flatten(1).pow(2).sum(1) - 0.5 * d * math.log(2 * math.pi)


def velocity_log_likelihood(
    velocity: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    times: Tensor,
    *,
    hutchinson: bool = False,
    prior_logp: Callable[[Tensor], Tensor] = standard_normal_logp,
    generator: torch.Generator | None = None,
    progress: bool = True,
) -> OdeLikelihood:
    """log p_{times[0]}(x) of the density an ODE dx/dt = v(x, t) carries, per sample (eq-ch6-cov).

    Chapters 6 and 9. Along the ODE the density obeys d log p_t(x(t))/dt = -∇·v(x(t), t) (the
    continuity equation eq-ch9-continuity, read along one path), so
    log p_{t_0}(x) = log p_1(x(1)) + ∫_{t_0}^1 ∇·v(x(t), t) dt. Both x(t) and the integral are
    carried by Heun's method over the increasing ``times`` (t_0 … 1). ``prior_logp`` is
    log p_1; ``hutchinson`` uses one Gaussian probe per sample (fixed along the path) instead
    of the exact divergence. One estimator for both kinds of model: a diffusion model's
    probability-flow drift and a flow-matching model's velocity.
    """
    if times.ndim != 1 or len(times) < 2 or not bool((times[1:] > times[:-1]).all()):
        raise ValueError("times must be an increasing 1-D grid from the data end to t = 1")
    probe = None
    if hutchinson:
        probe = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    b = x.shape[0]
    y, integral = x.detach().clone(), torch.zeros(b, dtype=torch.float64, device=x.device)
    for k in tqdm(range(len(times) - 1), desc="ODE likelihood", disable=not progress):
        h = float(times[k + 1] - times[k])
        d0, div0 = divergence(velocity, y, _times(float(times[k]), y), probe)
        y_pred = y + h * d0
        d1, div1 = divergence(velocity, y_pred, _times(float(times[k + 1]), y), probe)
        y = y + 0.5 * h * (d0 + d1)
        integral = integral + 0.5 * h * (div0 + div1).double()
    prior = prior_logp(y).double()
    return OdeLikelihood(prior + integral, prior, y)


def ode_log_likelihood(
    sde: SDE,
    score_fn: ScoreFn,
    x: Tensor,
    steps: int = 100,
    *,
    t_start: float = 1e-3,
    hutchinson: bool = False,
    prior_logp: Callable[[Tensor], Tensor] | None = None,
    generator: torch.Generator | None = None,
    progress: bool = True,
) -> OdeLikelihood:
    """log p_{t_start}(x) under the probability-flow ODE's density, per sample (eq-ch6-cov).

    Chapter 6. :func:`velocity_log_likelihood` for the drift F(x, t) = f - ½ g² s over
    ``steps`` steps from t_start to 1, equal in log t (:func:`log_time_grid`). ``prior_logp``
    is log p_1, by default the SDE's own prior (``sde.prior_logp``: N(0, I) for VP,
    N(0, σ_max² I) for VE); ``hutchinson`` uses one Gaussian probe per sample.
    """
    grid = log_time_grid(steps, t_start)
    ode = sde.reverse(score_fn, probability_flow=True)

    def drift(y: Tensor, t: Tensor) -> Tensor:
        return ode.sde(y, t)[0]

    return velocity_log_likelihood(
        drift,
        x,
        grid,
        hutchinson=hutchinson,
        prior_logp=prior_logp or sde.prior_logp,
        generator=generator,
        progress=progress,
    )


# ----------------------------------------------------------------------- exact mixture score


def mixture_marginal(sde: SDE, mixture: GaussianMixture2D, t: float) -> GaussianMixture2D:
    """q_t, the exact law of x(t) when x(0) ~ ``mixture`` (eq-ch6-marginals). Chapter 6.

    x(t) = c(t) x(0) + σ_t z with the SDE's mean coefficient c(t) and marginal std σ_t
    (:meth:`SDE.marginal_prob`), so component k becomes N(c μ_k, (c² s² + σ_t²) I): again an
    isotropic mixture with the same weights (for the VP-SDE, ``mixture.noised(ᾱ(t))``). Its
    ``log_prob`` and ``score`` take x [n, d].
    """
    tt = torch.tensor([float(t)], dtype=torch.float64)
    c, std = (u.item() for u in sde.marginal_prob(torch.ones(1, dtype=torch.float64), tt))
    return GaussianMixture2D(
        c * mixture.means, math.sqrt(c**2 * mixture.std**2 + std**2), mixture.weights
    )


def mixture_score_fn(sde: SDE, mixture: GaussianMixture2D) -> ScoreFn:
    """score(x, t) = ∇_x log q_t(x), the exact score of the noised mixture (eq-ch6-reverse-sde).

    Chapter 6: with it the reverse SDE and the probability-flow ODE (eq-ch6-pf-ode) can be run
    with no network error, and their samples compared with exact draws from q_t
    (:func:`mixture_marginal`). ``x`` is [B, d], ``t`` [B] (the samplers pass one time for the
    whole batch; mixed times are handled group by group). Returns [B, d] in x's dtype. A time
    whose q_t has zero std cannot occur: the mixture's own std is positive.
    """

    def score(x: Tensor, t: Tensor) -> Tensor:
        out = torch.empty_like(x)
        times = t.detach().double().cpu()
        for value in torch.unique(times).tolist():
            rows = (times == value).nonzero().flatten().to(x.device)
            q_t = mixture_marginal(sde, mixture, value)
            out[rows] = q_t.score(x[rows].to(mixture.means.dtype)).to(x.dtype)
        return out

    return score
