"""The Gaussian diffusion maths: forward process, posterior, parameterizations, reverse step.

No network lives here: every method that needs one takes ``model`` as an argument, called as
``model(x_t, t)`` and returning a tensor shaped like ``x_t``.

Index convention. The book counts diffusion steps t = 1..T. Code uses 0-based indices: the
integer tensor ``t`` holds values in 0..T-1 and code index i is the book's step i+1. So
``q_sample(x0, t=0)`` draws x_1, and ``p_sample(model, x, t=0)`` is the last reverse step
x_1 → x_0. Each schedule tensor below has shape [T] and entry i belongs to book step i+1.

Validation happens once, where a caller hands ``t`` in (:meth:`GaussianDiffusion.check_t`);
the index tensor it returns is marked as checked, so the methods it is passed on to, and the
sampling loops (which build their indices with :meth:`GaussianDiffusion.step_index`), never read
it back from the device.

Schedule tensors are computed and kept in float64 on the CPU. ``_extract`` hands out copies
cast to the dtype and device of the data (cached per dtype and device), so float32 images see
float32 coefficients and float64 tests see the exact ones.

The learned variance of Nichol & Dhariwal lives in :mod:`ddpm_lib.learned_variance`, a subclass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from .schedules import check_betas
from .utils import is_checked, mark_checked

Tensor = torch.Tensor
Model = Callable[[Tensor, Tensor], Tensor]

MEAN_TYPES = ("eps", "x0", "v")
VAR_TYPES = ("fixed_small", "fixed_large")


def variance_recurrence(v0: float | Tensor, a: Tensor, b: Tensor) -> Tensor:
    """v_t = a_t² v_{t-1} + b_t² for t = 1..T, from v_0 = ``v0``: shape [T], float64. Chapter 1.

    The variance after each step of x_t = a_t x_{t-1} + b_t ε with fresh ε (independent of
    x_{t-1}). With a_t = √α_t, b_t = √β_t it is eq-ch1-var-recurrence, whose solution is
    :meth:`GaussianDiffusion.forward_moments` (eq-ch1-var-solution); with constant
    a = 1-λ, b = λ it is the naive mix x' = (1-λ) x + λ ε (eq-ch1-naive), which tends to
    λ/(2-λ), not 1 (eq-ch1-naive-iterate). ``a`` and ``b`` are [T] (or broadcast to it).
    """
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    a, b = torch.broadcast_tensors(a, b)
    out = torch.empty(a.shape, dtype=torch.float64)
    v = torch.as_tensor(v0, dtype=torch.float64)
    for t in range(a.shape[0]):
        v = a[t] ** 2 * v + b[t] ** 2
        out[t] = v
    return out


class Gaussian(NamedTuple):
    """A diagonal Gaussian: ``mean``, ``variance`` and ``log_variance``, each shaped like x."""

    mean: Tensor
    variance: Tensor
    log_variance: Tensor


class ModelPrediction(NamedTuple):
    """One network call read as both ε̂ and x̂_0 (unclipped), shaped like x_t.

    ``var_values`` is the network's variance output ν for a learned variance, else None.
    """

    eps: Tensor
    pred_x0: Tensor
    var_values: Tensor | None = None


class ReverseStep(NamedTuple):
    """p_θ(x_{t-1} | x_t) = N(mean, variance): also its ``log_variance``, the ``pred_x0`` the
    mean was built from (clipped when asked) and the network's ``eps``; all shaped like x_t."""

    mean: Tensor
    variance: Tensor
    log_variance: Tensor
    pred_x0: Tensor
    eps: Tensor


class StepSample(NamedTuple):
    """One reverse step's draw ``sample`` (x_{t-1}) and the ``pred_x0`` it came from."""

    sample: Tensor
    pred_x0: Tensor


class GaussianDiffusion:
    """DDPM with a fixed schedule (Ho et al. 2020), Chapters 1-5.

    Args:
        betas: [T] schedule, every entry in (0, 1).
        model_mean_type: what the network predicts: "eps" (ε, DDPM), "x0" or "v" (Chapter 4).
        model_var_type: reverse-step variance σ_t²: "fixed_small" is the posterior variance
            β̃_t, "fixed_large" is β_t (Chapter 3 compares the two). A learned variance is
            :class:`ddpm_lib.learned_variance.LearnedRangeDiffusion`.
    """

    var_types: tuple[str, ...] = VAR_TYPES

    def __init__(
        self, betas: Tensor, model_mean_type: str = "eps", model_var_type: str = "fixed_small"
    ) -> None:
        if model_mean_type not in MEAN_TYPES:
            raise ValueError(
                f"unknown model_mean_type {model_mean_type!r}; choose one of {MEAN_TYPES}"
            )
        if model_var_type not in self.var_types:
            hint = (
                "; a learned variance is ddpm_lib.learned_variance.LearnedRangeDiffusion"
                if model_var_type == "learned_range"
                else " (fixed_small = posterior variance β̃_t, fixed_large = β_t)"
            )
            raise ValueError(
                f"unknown model_var_type {model_var_type!r} for {type(self).__name__}; "
                f"choose one of {self.var_types}{hint}"
            )
        self.model_mean_type = model_mean_type
        self.model_var_type = model_var_type

        betas = check_betas(betas)
        self.num_timesteps = int(betas.shape[0])
        self.betas = betas
        self.alphas = 1.0 - betas  # α_t = 1 - β_t
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)  # ᾱ_t = Π_{s≤t} α_s
        self.alphas_cumprod_prev = torch.cat([betas.new_ones(1), self.alphas_cumprod[:-1]])
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()  # √ᾱ_t
        self.sqrt_one_minus_alphas_cumprod = (1.0 - self.alphas_cumprod).sqrt()  # √(1-ᾱ_t)
        self.log_one_minus_alphas_cumprod = torch.log1p(-self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = self.alphas_cumprod.rsqrt()  # 1/√ᾱ_t
        self.sqrt_recipm1_alphas_cumprod = (1.0 / self.alphas_cumprod - 1.0).sqrt()  # √(1/ᾱ_t-1)

        # q(x_{t-1} | x_t, x_0) = N(coef1 x_0 + coef2 x_t, β̃_t I), Chapter 3.
        # β̃_t = (1-ᾱ_{t-1})/(1-ᾱ_t) β_t (eq-ch3-beta-tilde)
        self.posterior_variance = (
            betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        )
        # β̃_1 = 0: its log is replaced by log β̃_2 (the value is only used as a decoder scale).
        first = self.posterior_variance[1] if self.num_timesteps > 1 else betas[0]
        self.posterior_log_variance_clipped = torch.log(
            torch.cat([first.reshape(1), self.posterior_variance[1:]])
        )
        # μ̃_t = coef1 x_0 + coef2 x_t (eq-ch3-mu-tilde)
        self.posterior_mean_coef1 = (
            betas * self.alphas_cumprod_prev.sqrt() / (1.0 - self.alphas_cumprod)
        )
        self.posterior_mean_coef2 = (
            (1.0 - self.alphas_cumprod_prev) * self.alphas.sqrt() / (1.0 - self.alphas_cumprod)
        )
        # fixed_large uses β_t, with β̃_2 in place of β_1 for the same reason as above.
        self.large_variance = torch.cat([first.reshape(1), betas[1:]])
        self._cache: dict[tuple[str, torch.dtype, torch.device], Tensor] = {}

    # ------------------------------------------------------------------ inputs
    def check_t(self, t: Tensor | int, x: Tensor) -> Tensor:
        """Return ``t`` as a checked int64 index tensor [B] on x's device.

        This is where a caller's step indices are validated: integer dtype, shape [B] (a scalar
        is broadcast over the batch) and range 0..T-1. The result is marked as checked, and a
        marked tensor of the right shape and device is returned as it is, without reading its
        values again: a method calling another passes its ``t`` on at no cost.
        """
        if (
            is_checked(t, ("steps", self.num_timesteps))
            and t.shape == (x.shape[0],)  # type: ignore[union-attr]
            and t.device == x.device  # type: ignore[union-attr]
        ):
            return t  # type: ignore[return-value]
        t = torch.as_tensor(t, device=x.device)
        if t.is_floating_point():
            raise ValueError(
                f"t must hold integer step indices 0..{self.num_timesteps - 1}, got dtype "
                f"{t.dtype}; the continuous-time samplers live in ddpm_lib.sde"
            )
        t = t.long()
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        if t.ndim != 1 or t.shape[0] != x.shape[0]:
            raise ValueError(
                f"t must have shape [B] = [{x.shape[0]}] (one step per image), "
                f"got shape {tuple(t.shape)}"
            )
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.num_timesteps):
            raise ValueError(
                f"t holds 0-based step indices and must lie in [0, {self.num_timesteps - 1}] "
                f"(book steps 1..{self.num_timesteps}); got values from {int(t.min())} "
                f"to {int(t.max())}"
            )
        return mark_checked(t, ("steps", self.num_timesteps))

    def step_index(self, i: int, batch: int, device: torch.device | str) -> Tensor:
        """The checked index tensor [batch] filled with code index ``i`` (book step i+1).

        The sampling loops build their indices here: ``i`` is a Python int, checked for free.
        """
        if not 0 <= i < self.num_timesteps:
            raise ValueError(f"step index {i} outside 0..{self.num_timesteps - 1}")
        t = torch.full((batch,), i, dtype=torch.long, device=device)
        return mark_checked(t, ("steps", self.num_timesteps))

    def snr(self) -> Tensor:
        """SNR(t) = ᾱ_t/(1-ᾱ_t), the signal-to-noise ratio of x_t (eq-ch1-snr): [T], float64."""
        return self.alphas_cumprod / (1.0 - self.alphas_cumprod)

    def forward_moments(self, mean: float, variance: float) -> tuple[Tensor, Tensor]:
        """E[x_t] = √ᾱ_t m and Var(x_t) = 1 - (1-v) ᾱ_t for data of mean m, variance v.

        The solution of the variance recurrence (eq-ch1-var-solution, from eq-ch1-var-recurrence
        via :func:`variance_recurrence`), per coordinate; two [T] float64 tensors. Chapter 1.
        """
        return self.sqrt_alphas_cumprod * mean, 1.0 - (1.0 - variance) * self.alphas_cumprod

    def _extract(self, name: str, t: Tensor, x: Tensor) -> Tensor:
        """Gather schedule entry ``name`` at ``t`` [B]; shape [B, 1, ..., 1] to broadcast with x."""
        key = (name, x.dtype, x.device)
        table = self._cache.get(key)
        if table is None:
            table = getattr(self, name).to(dtype=x.dtype).to(x.device)
            self._cache[key] = table
        return table[t].reshape(-1, *([1] * (x.ndim - 1)))

    def _noise_like(self, x: Tensor, noise: Tensor | None) -> Tensor:
        if noise is None:
            return torch.randn_like(x)
        if noise.shape != x.shape:
            raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {tuple(x.shape)}")
        return noise

    # ------------------------------------------------------------ forward process
    def q_step(self, x_prev: Tensor, t: Tensor | int, noise: Tensor | None = None) -> Tensor:
        """One forward step x_t = √(1-β_t) x_{t-1} + √β_t ε (eq-ch1-forward-step, eq-ch2-step).

        A draw from q(x_t | x_{t-1}) (eq-ch3-forward-step); T of them in a row draw from the
        joint q(x_{1:T} | x_0) (eq-ch2-joint). Chapter 1. ``x_prev`` [B, ...] is the book's
        x_{t-1} and code index ``t`` is book step t+1, so ``q_step(x0, 0)`` returns x_1. ε is
        drawn shaped like ``x_prev`` unless given.
        """
        t = self.check_t(t, x_prev)
        noise = self._noise_like(x_prev, noise)
        return (
            self._extract("alphas", t, x_prev).sqrt() * x_prev
            + self._extract("betas", t, x_prev).sqrt() * noise
        )

    def q_mean_variance(self, x0: Tensor, t: Tensor | int) -> Gaussian:
        """q(x_t | x_0) = N(√ᾱ_t x_0, (1-ᾱ_t) I) (eq-ch2-closed-form, eq-ch1-moments, eq-ch3-jump).

        Chapter 2 proves it by induction (eq-ch2-induction, eq-ch2-variance-sum) and by
        unrolling the recurrence (eq-ch2-unrolled). Returns mean, variance, log variance.
        """
        t = self.check_t(t, x0)
        mean = self._extract("sqrt_alphas_cumprod", t, x0) * x0
        variance = self._extract("alphas_cumprod", t, x0).neg().add(1.0).expand_as(x0)
        log_variance = self._extract("log_one_minus_alphas_cumprod", t, x0).expand_as(x0)
        return Gaussian(mean, variance, log_variance)

    def q_sample(self, x0: Tensor, t: Tensor | int, noise: Tensor | None = None) -> Tensor:
        """The closed-form jump x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε (eq-ch2-reparam, eq-ch4-jump).

        A draw from q(x_t | x_0) of :meth:`q_mean_variance`; shapes [B, ...]; ε is drawn unless
        given. Chapter 2.
        """
        t = self.check_t(t, x0)
        noise = self._noise_like(x0, noise)
        return (
            self._extract("sqrt_alphas_cumprod", t, x0) * x0
            + self._extract("sqrt_one_minus_alphas_cumprod", t, x0) * noise
        )

    def q_posterior_mean_variance(self, x0: Tensor, x_t: Tensor, t: Tensor | int) -> Gaussian:
        """q(x_{t-1} | x_t, x_0) = N(μ̃_t, β̃_t I) (eq-ch3-mu-tilde, eq-ch3-beta-tilde, eq-ch4-mu-x0).

        Chapter 3 derives it by Bayes' rule (eq-ch3-bayes) and completing the square in the
        exponent (eq-ch3-exponent, eq-ch3-precision, eq-ch3-bayes-log):
        μ̃_t = √ᾱ_{t-1} β_t/(1-ᾱ_t) x_0 + √α_t (1-ᾱ_{t-1})/(1-ᾱ_t) x_t,
        β̃_t = (1-ᾱ_{t-1})/(1-ᾱ_t) β_t; the same as conditioning the joint Gaussian of
        (x_{t-1}, x_t) (eq-ch3-joint, eq-ch3-conditioning), and consistent with q(x_{t-1} | x_0)
        (eq-ch3-consistency-mean, eq-ch3-consistency-var). At book step 1, μ̃_1 = x_0 and
        β̃_1 = 0 (eq-ch3-t1): the log variance is clipped there.
        """
        if x0.shape != x_t.shape:
            raise ValueError(f"x0 {tuple(x0.shape)} and x_t {tuple(x_t.shape)} must match")
        t = self.check_t(t, x_t)
        mean = (
            self._extract("posterior_mean_coef1", t, x_t) * x0
            + self._extract("posterior_mean_coef2", t, x_t) * x_t
        )
        variance = self._extract("posterior_variance", t, x_t).expand_as(x_t)
        log_variance = self._extract("posterior_log_variance_clipped", t, x_t).expand_as(x_t)
        return Gaussian(mean, variance, log_variance)

    # ------------------------------------------------------------ parameterizations
    def predict_x0_from_eps(self, x_t: Tensor, t: Tensor | int, eps: Tensor) -> Tensor:
        """x_0 = (x_t - √(1-ᾱ_t) ε)/√ᾱ_t (eq-ch4-x0-from-eps); Chapter 4."""
        t = self.check_t(t, x_t)
        return (
            self._extract("sqrt_recip_alphas_cumprod", t, x_t) * x_t
            - self._extract("sqrt_recipm1_alphas_cumprod", t, x_t) * eps
        )

    def predict_eps_from_x0(self, x_t: Tensor, t: Tensor | int, x0: Tensor) -> Tensor:
        """ε = (x_t - √ᾱ_t x_0)/√(1-ᾱ_t), the inverse of eq-ch4-x0-from-eps; Chapter 4.

        Errors map through it by ‖ε - ε̂‖² = SNR(t) ‖x_0 - x̂_0‖² (eq-ch4-snr-weight).
        """
        t = self.check_t(t, x_t)
        return (self._extract("sqrt_recip_alphas_cumprod", t, x_t) * x_t - x0) / self._extract(
            "sqrt_recipm1_alphas_cumprod", t, x_t
        )

    def eps_to_score(self, eps: Tensor, t: Tensor | int) -> Tensor:
        """∇ log q(x_t | x_0) = -ε/√(1-ᾱ_t) (eq-ch4-score-cond); Chapters 4 and 6."""
        t = self.check_t(t, eps)
        return -eps / self._extract("sqrt_one_minus_alphas_cumprod", t, eps)

    def score_to_eps(self, score: Tensor, t: Tensor | int) -> Tensor:
        """ε = -√(1-ᾱ_t) · score: the inverse of :meth:`eps_to_score`; with the marginal score,
        E[ε | x_t] (eq-ch4-tweedie)."""
        t = self.check_t(t, score)
        return -score * self._extract("sqrt_one_minus_alphas_cumprod", t, score)

    def get_v(self, x0: Tensor, eps: Tensor, t: Tensor | int) -> Tensor:
        """v = √ᾱ_t ε - √(1-ᾱ_t) x_0 (eq-ch4-v; Salimans & Ho 2022); Chapter 4."""
        t = self.check_t(t, x0)
        return (
            self._extract("sqrt_alphas_cumprod", t, x0) * eps
            - self._extract("sqrt_one_minus_alphas_cumprod", t, x0) * x0
        )

    def predict_x0_from_v(self, x_t: Tensor, t: Tensor | int, v: Tensor) -> Tensor:
        """x_0 = √ᾱ_t x_t - √(1-ᾱ_t) v, from eq-ch4-v and eq-ch4-jump; Chapter 4."""
        t = self.check_t(t, x_t)
        return (
            self._extract("sqrt_alphas_cumprod", t, x_t) * x_t
            - self._extract("sqrt_one_minus_alphas_cumprod", t, x_t) * v
        )

    def predict_eps_from_v(self, x_t: Tensor, t: Tensor | int, v: Tensor) -> Tensor:
        """ε = √(1-ᾱ_t) x_t + √ᾱ_t v, from eq-ch4-v and eq-ch4-jump; Chapter 4."""
        t = self.check_t(t, x_t)
        return (
            self._extract("sqrt_one_minus_alphas_cumprod", t, x_t) * x_t
            + self._extract("sqrt_alphas_cumprod", t, x_t) * v
        )

    # ------------------------------------------------------------ the network's output
    def split_output(self, out: Tensor, x_t: Tensor) -> tuple[Tensor, Tensor | None]:
        """The network output as (prediction shaped like x_t, variance part ν or None).

        Here the whole output is the prediction (ε, x_0 or v, by ``model_mean_type``); a
        learned-variance subclass splits off its ν.
        """
        if out.shape != x_t.shape:
            raise ValueError(
                f"the model returned shape {tuple(out.shape)} for input {tuple(x_t.shape)}; "
                "it must predict a tensor shaped like x_t"
            )
        return out, None

    def mean_model(self, model: Model) -> Model:
        """``model`` restricted to its prediction of the mean (ε̂, x̂_0 or v̂), shaped like x_t.

        The samplers and likelihoods that need no variance (DDIM, the probability-flow ODE) call
        the network through this; here it is the network itself.
        """
        return model

    def model_predictions(self, model: Model, x_t: Tensor, t: Tensor | int) -> ModelPrediction:
        """Run the network once and express its output as both ε̂ and x̂_0 (unclipped).

        Chapter 4: x̂_0 from ε̂ by eq-ch4-x0-from-eps, or ε̂ from x̂_0 or v̂.
        """
        t = self.check_t(t, x_t)
        out, nu = self.split_output(model(x_t, t), x_t)
        if self.model_mean_type == "eps":
            eps, x0 = out, self.predict_x0_from_eps(x_t, t, out)
        elif self.model_mean_type == "x0":
            eps, x0 = self.predict_eps_from_x0(x_t, t, out), out
        else:
            eps, x0 = self.predict_eps_from_v(x_t, t, out), self.predict_x0_from_v(x_t, t, out)
        return ModelPrediction(eps, x0, nu)

    # ------------------------------------------------------------ reverse process
    def reverse_variance(
        self, var_type: str, pred: ModelPrediction, x_t: Tensor, t: Tensor
    ) -> tuple[Tensor, Tensor]:
        """σ_t² and log σ_t² of the reverse step, [B, 1, ...] to broadcast with x_t.

        "fixed_small" is β̃_t (its log clipped at book step 1), "fixed_large" is β_t (β̃_2 at
        book step 1): the two ends of the bracket β̃_t ≤ E[Var(x_{t-1} | x_t)] ≤ β_t
        (eq-ch3-bracket, eq-ch3-total-variance). Chapter 3. ``t`` is a checked index tensor.
        """
        if var_type == "fixed_small":
            var = self._extract("posterior_variance", t, x_t)
            return var, self._extract("posterior_log_variance_clipped", t, x_t)
        var = self._extract("large_variance", t, x_t)
        return var, var.log()

    def p_mean_variance(
        self,
        model: Model,
        x_t: Tensor,
        t: Tensor | int,
        *,
        clip_denoised: bool = True,
        variance: str | None = None,
    ) -> ReverseStep:
        """p_θ(x_{t-1} | x_t) = N(μ_θ, σ_t² I), one factor of eq-ch5-reverse; Chapters 3-4.

        μ_θ is the posterior mean μ̃_t(x̂_0, x_t) with x̂_0 from the network (clipped to [-1, 1]
        when ``clip_denoised``). Without clipping and with an ε-model this equals
        (x_t - β_t/√(1-ᾱ_t) ε̂)/√α_t (eq-ch4-mu-theta), the ε-form of μ̃_t (eq-ch4-mu-eps), so
        μ̃_t - μ_θ = β_t/(√α_t √(1-ᾱ_t)) (ε̂ - ε) (eq-ch4-mean-gap). ``variance`` overrides
        the instance's ``model_var_type`` for this call.
        """
        var_type = variance or self.model_var_type
        if var_type not in self.var_types:
            raise ValueError(
                f"unknown variance {var_type!r} for {type(self).__name__}; choose one of "
                f"{self.var_types}"
            )
        t = self.check_t(t, x_t)
        pred = self.model_predictions(model, x_t, t)
        x0 = pred.pred_x0.clamp(-1.0, 1.0) if clip_denoised else pred.pred_x0
        mean = self.q_posterior_mean_variance(x0, x_t, t).mean
        var, log_var = self.reverse_variance(var_type, pred, x_t, t)
        return ReverseStep(mean, var.expand_as(x_t), log_var.expand_as(x_t), x0, pred.eps)

    def p_sample(
        self,
        model: Model,
        x_t: Tensor,
        t: Tensor | int,
        *,
        noise: Tensor | None = None,
        clip_denoised: bool = True,
        variance: str | None = None,
    ) -> StepSample:
        """One reverse step of Algorithm 2 (alg-ch4-sampling): x_{t-1} = μ_θ + σ_t z.

        No noise at code index 0 (book step 1): that step returns the mean. Chapter 4.
        """
        t = self.check_t(t, x_t)
        out = self.p_mean_variance(model, x_t, t, clip_denoised=clip_denoised, variance=variance)
        noise = self._noise_like(x_t, noise)
        nonzero = (t != 0).to(x_t.dtype).reshape(-1, *([1] * (x_t.ndim - 1)))
        sample = out.mean + nonzero * (0.5 * out.log_variance).exp() * noise
        return StepSample(sample, out.pred_x0)

    # ------------------------------------------------------------ training
    def training_loss(
        self,
        model: Model,
        x0: Tensor,
        *,
        t: Tensor | None = None,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """L_simple per example, shape [B] (eq-ch4-lsimple, Algorithm 1 alg-ch4-training).

        Chapter 4; Chapter 5 shows it is the ELBO with its weights dropped (eq-ch5-simple), and
        Chapter 7 starts from it (eq-ch7-lsimple). Draws t uniformly from 0..T-1 and
        ε ~ N(0, I) unless given, forms x_t by :meth:`q_sample`, and returns the mean squared
        error (over coordinates) between the network's output and its target: ε, x_0 or v
        according to ``model_mean_type``.
        """
        b = x0.shape[0]
        if t is None:  # drawn in range here: marked, so nothing below reads it back
            t = torch.randint(0, self.num_timesteps, (b,), device=x0.device, generator=generator)
            t = mark_checked(t, ("steps", self.num_timesteps))
        else:
            t = self.check_t(t, x0)
        if noise is None:
            noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        x_t = self.q_sample(x0, t, noise)
        return self.loss_terms(model(x_t, t), x0, x_t, t, noise)

    def loss_terms(self, out: Tensor, x0: Tensor, x_t: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """The per-example loss of one network output ``out`` = model(x_t, t): here L_simple.

        The target is ε, x_0 or v by ``model_mean_type``; the mean is over coordinates, in
        float32 (under bf16 autocast the network's output is cast up first).
        """
        pred, _ = self.split_output(out, x_t)
        if self.model_mean_type == "eps":
            target = noise
        elif self.model_mean_type == "x0":
            target = x0
        else:
            target = self.get_v(x0, noise, t)
        return (pred.float() - target.float()).pow(2).flatten(1).mean(dim=1)
