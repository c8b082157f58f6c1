"""The Gaussian diffusion maths: forward process, posterior, parameterizations, reverse step.

No network lives here: every method that needs one takes ``model`` as an argument, called as
``model(x_t, t)`` and returning a tensor shaped like ``x_t`` (twice the channels when the
variance is learned: ``model_var_type="learned_range"``).

Index convention. The book counts diffusion steps t = 1..T. Code uses 0-based indices: the
integer tensor ``t`` holds values in 0..T-1 and code index i is the book's step i+1. So
``q_sample(x0, t=0)`` draws x_1, and ``p_sample(model, x, t=0)`` is the last reverse step
x_1 → x_0. Each schedule tensor below has shape [T] and entry i belongs to book step i+1.

Schedule tensors are computed and kept in float64 on the CPU. ``_extract`` hands out copies
cast to the dtype and device of the data (cached per dtype and device), so float32 images see
float32 coefficients and float64 tests see the exact ones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .schedules import check_betas, get_beta_schedule
from .utils import cuda_capturing

Tensor = torch.Tensor
Model = Callable[[Tensor, Tensor], Tensor]

MEAN_TYPES = ("eps", "x0", "v")
VAR_TYPES = ("fixed_small", "fixed_large", "learned_range")
# Weight λ of L_vlb in the hybrid loss L_simple + λ L_vlb (Nichol & Dhariwal 2021).
HYBRID_VLB_WEIGHT = 0.001


def learned_range_log_variance(
    nu: Tensor, log_beta: Tensor, log_posterior_variance: Tensor
) -> Tensor:
    """log σ_t² = ½(1+ν) log β_t + ½(1-ν) log β̃_t: the learned_range variance (Nichol & Dhariwal).

    ν = 1 gives β_t (fixed_large), ν = -1 gives β̃_t (fixed_small). Shapes broadcast.
    """
    frac = (nu + 1) / 2
    return frac * log_beta + (1 - frac) * log_posterior_variance


class GaussianDiffusion:
    """DDPM with a fixed schedule (Ho et al. 2020), Chapters 1-5.

    Args:
        betas: [T] schedule, every entry in (0, 1).
        model_mean_type: what the network predicts: "eps" (ε, DDPM), "x0" or "v" (Chapter 4).
        model_var_type: reverse-step variance: "fixed_small" is the posterior variance β̃_t,
            "fixed_large" is β_t (Chapter 3 compares the two); "learned_range" lets the network
            choose per pixel between the two on a log scale (Nichol & Dhariwal 2021): it then
            returns twice the channels, [ε̂ (or x̂_0, v̂) | ν] with ν in [-1, 1] read as
            log σ_t² = ½(1+ν) log β_t + ½(1-ν) log β̃_t, and is trained on the hybrid loss.
    """

    def __init__(
        self,
        betas: Tensor,
        model_mean_type: str = "eps",
        model_var_type: str = "fixed_small",
    ) -> None:
        if model_mean_type not in MEAN_TYPES:
            raise ValueError(
                f"unknown model_mean_type {model_mean_type!r}; choose one of {MEAN_TYPES}"
            )
        if model_var_type not in VAR_TYPES:
            raise ValueError(
                f"unknown model_var_type {model_var_type!r}; choose one of {VAR_TYPES} "
                "(fixed_small = posterior variance β̃_t, fixed_large = β_t, learned_range = "
                "the network interpolates between the two)"
            )
        self.model_mean_type = model_mean_type
        self.model_var_type = model_var_type
        self.learned_variance = model_var_type == "learned_range"

        betas = check_betas(betas)
        self.num_timesteps = int(betas.shape[0])
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.alphas_cumprod_prev = torch.cat([betas.new_ones(1), self.alphas_cumprod[:-1]])
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - self.alphas_cumprod).sqrt()
        self.log_one_minus_alphas_cumprod = torch.log1p(-self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = self.alphas_cumprod.rsqrt()
        self.sqrt_recipm1_alphas_cumprod = (1.0 / self.alphas_cumprod - 1.0).sqrt()

        # q(x_{t-1} | x_t, x_0) = N(coef1 x_0 + coef2 x_t, β̃_t I), Chapter 3.
        self.posterior_variance = (
            betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        )
        # β̃_1 = 0: its log is replaced by log β̃_2 (the value is only used as a decoder scale).
        first = self.posterior_variance[1] if self.num_timesteps > 1 else betas[0]
        self.posterior_log_variance_clipped = torch.log(
            torch.cat([first.reshape(1), self.posterior_variance[1:]])
        )
        self.posterior_mean_coef1 = (
            betas * self.alphas_cumprod_prev.sqrt() / (1.0 - self.alphas_cumprod)
        )
        self.posterior_mean_coef2 = (
            (1.0 - self.alphas_cumprod_prev) * self.alphas.sqrt() / (1.0 - self.alphas_cumprod)
        )
        # fixed_large uses β_t, with β̃_2 in place of β_1 for the same reason as above.
        self.large_variance = torch.cat([first.reshape(1), betas[1:]])
        self.log_betas = torch.log(betas)  # the upper end of learned_range
        self._cache: dict[tuple[str, torch.dtype, torch.device], Tensor] = {}

    # ------------------------------------------------------------------ helpers
    def check_t(self, t: Tensor | int, x: Tensor) -> Tensor:
        """Return ``t`` as an int64 tensor [B] on x's device, after checking shape and range."""
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
        if cuda_capturing(t):
            return t  # reading t back would break a CUDA-graph capture (checked in warm-up)
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.num_timesteps):
            raise ValueError(
                f"t holds 0-based step indices and must lie in [0, {self.num_timesteps - 1}] "
                f"(book steps 1..{self.num_timesteps}); got values from {int(t.min())} "
                f"to {int(t.max())}"
            )
        return t

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
        """One forward step x_{t-1} → x_t ~ N(√(1-β_t) x_{t-1}, β_t I); Chapter 1.

        ``x_prev`` [B, ...] is the book's x_{t-1} and code index ``t`` is book step t+1, so
        ``q_step(x0, 0)`` returns x_1.
        """
        t = self.check_t(t, x_prev)
        noise = self._noise_like(x_prev, noise)
        return (
            self._extract("alphas", t, x_prev).sqrt() * x_prev
            + self._extract("betas", t, x_prev).sqrt() * noise
        )

    def q_mean_variance(self, x0: Tensor, t: Tensor | int) -> tuple[Tensor, Tensor, Tensor]:
        """Mean √ᾱ_t x_0, variance 1-ᾱ_t and its log for q(x_t | x_0); Chapter 2."""
        t = self.check_t(t, x0)
        mean = self._extract("sqrt_alphas_cumprod", t, x0) * x0
        variance = self._extract("alphas_cumprod", t, x0).neg().add(1.0).expand_as(x0)
        log_variance = self._extract("log_one_minus_alphas_cumprod", t, x0).expand_as(x0)
        return mean, variance, log_variance

    def q_sample(self, x0: Tensor, t: Tensor | int, noise: Tensor | None = None) -> Tensor:
        """The closed-form jump x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε; Chapter 2. Shapes [B, ...]."""
        t = self.check_t(t, x0)
        return self._q_sample(x0, t, self._noise_like(x0, noise))

    def _q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """:meth:`q_sample` for a t already known to be valid: no checks, no host sync."""
        return (
            self._extract("sqrt_alphas_cumprod", t, x0) * x0
            + self._extract("sqrt_one_minus_alphas_cumprod", t, x0) * noise
        )

    def q_posterior_mean_variance(
        self, x0: Tensor, x_t: Tensor, t: Tensor | int
    ) -> tuple[Tensor, Tensor, Tensor]:
        """q(x_{t-1} | x_t, x_0) = N(μ̃_t, β̃_t I); Chapter 3, by completing the square.

        μ̃_t = √ᾱ_{t-1} β_t/(1-ᾱ_t) x_0 + √α_t (1-ᾱ_{t-1})/(1-ᾱ_t) x_t,
        β̃_t = (1-ᾱ_{t-1})/(1-ᾱ_t) β_t. Returns (mean, variance, clipped log variance).
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
        return mean, variance, log_variance

    # ------------------------------------------------------------ parameterizations
    def predict_x0_from_eps(self, x_t: Tensor, t: Tensor | int, eps: Tensor) -> Tensor:
        """x_0 = (x_t - √(1-ᾱ_t) ε)/√ᾱ_t; Chapter 4."""
        t = self.check_t(t, x_t)
        return (
            self._extract("sqrt_recip_alphas_cumprod", t, x_t) * x_t
            - self._extract("sqrt_recipm1_alphas_cumprod", t, x_t) * eps
        )

    def predict_eps_from_x0(self, x_t: Tensor, t: Tensor | int, x0: Tensor) -> Tensor:
        """ε = (x_t - √ᾱ_t x_0)/√(1-ᾱ_t); Chapter 4."""
        t = self.check_t(t, x_t)
        return (self._extract("sqrt_recip_alphas_cumprod", t, x_t) * x_t - x0) / self._extract(
            "sqrt_recipm1_alphas_cumprod", t, x_t
        )

    def eps_to_score(self, eps: Tensor, t: Tensor | int) -> Tensor:
        """∇ log q(x_t | x_0) = -ε/√(1-ᾱ_t); Chapters 4 and 6."""
        t = self.check_t(t, eps)
        return -eps / self._extract("sqrt_one_minus_alphas_cumprod", t, eps)

    def score_to_eps(self, score: Tensor, t: Tensor | int) -> Tensor:
        """ε = -√(1-ᾱ_t) · score; the inverse of :meth:`eps_to_score`."""
        t = self.check_t(t, score)
        return -score * self._extract("sqrt_one_minus_alphas_cumprod", t, score)

    def get_v(self, x0: Tensor, eps: Tensor, t: Tensor | int) -> Tensor:
        """v = √ᾱ_t ε - √(1-ᾱ_t) x_0 (Salimans & Ho 2022); Chapter 4."""
        t = self.check_t(t, x0)
        return (
            self._extract("sqrt_alphas_cumprod", t, x0) * eps
            - self._extract("sqrt_one_minus_alphas_cumprod", t, x0) * x0
        )

    def predict_x0_from_v(self, x_t: Tensor, t: Tensor | int, v: Tensor) -> Tensor:
        """x_0 = √ᾱ_t x_t - √(1-ᾱ_t) v."""
        t = self.check_t(t, x_t)
        return (
            self._extract("sqrt_alphas_cumprod", t, x_t) * x_t
            - self._extract("sqrt_one_minus_alphas_cumprod", t, x_t) * v
        )

    def predict_eps_from_v(self, x_t: Tensor, t: Tensor | int, v: Tensor) -> Tensor:
        """ε = √(1-ᾱ_t) x_t + √ᾱ_t v."""
        t = self.check_t(t, x_t)
        return (
            self._extract("sqrt_one_minus_alphas_cumprod", t, x_t) * x_t
            + self._extract("sqrt_alphas_cumprod", t, x_t) * v
        )

    def split_output(self, out: Tensor, x_t: Tensor) -> tuple[Tensor, Tensor | None]:
        """The network output as (mean part shaped like x_t, variance part ν or None).

        With ``model_var_type="learned_range"`` the output has 2C channels: the first C
        predict ε, x_0 or v (``model_mean_type``), the last C the variance interpolation ν.
        """
        if self.learned_variance:
            want = (x_t.shape[0], 2 * x_t.shape[1], *x_t.shape[2:])
            if tuple(out.shape) != want:
                raise ValueError(
                    f"the model returned shape {tuple(out.shape)} for input "
                    f"{tuple(x_t.shape)}; with model_var_type='learned_range' it must return "
                    f"{want} (twice the channels: the prediction and the variance), e.g. a "
                    "UNet with out_channels = 2 × in_channels"
                )
            mean_out, nu = out.chunk(2, dim=1)
            return mean_out, nu
        if out.shape != x_t.shape:
            raise ValueError(
                f"the model returned shape {tuple(out.shape)} for input {tuple(x_t.shape)}; "
                "it must predict a tensor shaped like x_t"
            )
        return out, None

    def mean_model(self, model: Model) -> Model:
        """``model`` restricted to its mean part (ε̂, x̂_0 or v̂), shaped like x_t.

        The samplers and likelihoods that need no variance (DDIM, the probability-flow ODE)
        call a learned-variance network through this.
        """
        if not self.learned_variance:
            return model

        def mean_part(x_t: Tensor, t: Tensor) -> Tensor:
            return self.split_output(model(x_t, t), x_t)[0]

        return mean_part

    def learned_log_variance(self, nu: Tensor, t: Tensor, x_t: Tensor) -> Tensor:
        """:func:`learned_range_log_variance` at steps ``t``, shaped like ν (β̃_2 at step 1)."""
        return learned_range_log_variance(
            nu,
            self._extract("log_betas", t, x_t),
            self._extract("posterior_log_variance_clipped", t, x_t),
        )

    def model_predictions(self, model: Model, x_t: Tensor, t: Tensor | int) -> dict[str, Tensor]:
        """Run the network once and express its output as both ε̂ and x̂_0 (unclipped).

        For a learned-variance network its variance output ν is returned too, as "var_values".
        """
        t = self.check_t(t, x_t)
        out, nu = self.split_output(model(x_t, t), x_t)
        if self.model_mean_type == "eps":
            eps, x0 = out, self.predict_x0_from_eps(x_t, t, out)
        elif self.model_mean_type == "x0":
            eps, x0 = self.predict_eps_from_x0(x_t, t, out), out
        else:
            eps, x0 = self.predict_eps_from_v(x_t, t, out), self.predict_x0_from_v(x_t, t, out)
        pred = {"eps": eps, "pred_x0": x0}
        if nu is not None:
            pred["var_values"] = nu
        return pred

    # ------------------------------------------------------------ reverse process
    def p_mean_variance(
        self,
        model: Model,
        x_t: Tensor,
        t: Tensor | int,
        clip_denoised: bool = True,
        variance: str | None = None,
    ) -> dict[str, Tensor]:
        """p_θ(x_{t-1} | x_t) = N(μ_θ, σ_t² I); Chapters 3-4.

        μ_θ is the posterior mean μ̃_t(x̂_0, x_t) with x̂_0 from the network (clipped to [-1, 1]
        when ``clip_denoised``). Without clipping and with an ε-model this equals
        (x_t - β_t/√(1-ᾱ_t) ε̂)/√α_t. ``variance`` overrides the instance's model_var_type
        (a learned-variance network may be run with a fixed variance, not the reverse).
        Returns mean, variance, log_variance, pred_x0 and eps, each shaped like x_t.
        """
        var_type = variance or self.model_var_type
        if var_type not in VAR_TYPES:
            raise ValueError(f"unknown variance {var_type!r}; choose one of {VAR_TYPES}")
        if var_type == "learned_range" and not self.learned_variance:
            raise ValueError(
                "variance='learned_range' needs a network that outputs a variance: build the "
                "diffusion with model_var_type='learned_range' for such a network, or use "
                "fixed_small / fixed_large"
            )
        t = self.check_t(t, x_t)
        pred = self.model_predictions(model, x_t, t)
        x0 = pred["pred_x0"]
        if clip_denoised:
            x0 = x0.clamp(-1.0, 1.0)
        mean, _, _ = self.q_posterior_mean_variance(x0, x_t, t)
        if var_type == "fixed_small":
            var = self._extract("posterior_variance", t, x_t)
            log_var = self._extract("posterior_log_variance_clipped", t, x_t)
        elif var_type == "fixed_large":
            var = self._extract("large_variance", t, x_t)
            log_var = var.log()
        else:
            log_var = self.learned_log_variance(pred["var_values"], t, x_t)
            var = log_var.exp()
        return {
            "mean": mean,
            "variance": var.expand_as(x_t),
            "log_variance": log_var.expand_as(x_t),
            "pred_x0": x0,
            "eps": pred["eps"],
        }

    def p_sample(
        self,
        model: Model,
        x_t: Tensor,
        t: Tensor | int,
        noise: Tensor | None = None,
        clip_denoised: bool = True,
        variance: str | None = None,
    ) -> dict[str, Tensor]:
        """One reverse step x_t → x_{t-1} = μ_θ + σ_t z (Algorithm 2), no noise at t=0 (book 1).

        Returns ``sample`` (x_{t-1}) and ``pred_x0``, shaped like x_t.
        """
        out = self.p_mean_variance(model, x_t, t, clip_denoised=clip_denoised, variance=variance)
        t = self.check_t(t, x_t)
        noise = self._noise_like(x_t, noise)
        nonzero = (t != 0).to(x_t.dtype).reshape(-1, *([1] * (x_t.ndim - 1)))
        sample = out["mean"] + nonzero * (0.5 * out["log_variance"]).exp() * noise
        return {"sample": sample, "pred_x0": out["pred_x0"]}

    def sample(self, model: Model, shape: tuple[int, ...], **kwargs: Any) -> Any:
        """Algorithm 2: ancestral sampling from x_T ~ N(0, I); see samplers.ddpm_sample_loop."""
        from .samplers import ddpm_sample_loop

        return ddpm_sample_loop(self, model, shape, **kwargs)

    def ddim_sample(self, model: Model, shape: tuple[int, ...], **kwargs: Any) -> Any:
        """DDIM (Song, Meng & Ermon 2021) with η and step sub-sequences; see samplers."""
        from .samplers import ddim_sample_loop

        return ddim_sample_loop(self, model, shape, **kwargs)

    # ------------------------------------------------------------ training
    def training_loss(
        self,
        model: Model,
        x0: Tensor,
        t: Tensor | None = None,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """L_simple per example, shape [B] (Algorithm 1); Chapter 4.

        Draws t uniformly from 0..T-1 and ε ~ N(0, I) unless given, forms x_t by
        :meth:`q_sample`, and returns the mean squared error between the network's output
        and its target: ε, x_0 or v according to ``model_mean_type``.

        With ``model_var_type="learned_range"`` it returns the hybrid loss of Nichol & Dhariwal
        (2021), L_simple + λ T L_t with λ = ``HYBRID_VLB_WEIGHT`` = 0.001: T L_t (L_t the
        ELBO term of step t in bits/dim, :func:`losses.vb_term_bpd`) is an unbiased estimate of
        L_vlb = Σ_t L_t over uniform t. L_t sees the predicted mean with its gradient stopped,
        so the mean learns from L_simple alone and the variance from L_vlb alone. x0 must lie
        on the 8-bit grid (the decoder term L_0 is a discretized likelihood).
        """
        b = x0.shape[0]
        if t is None:  # drawn here, so valid: skipping the range check avoids a host sync
            t = torch.randint(0, self.num_timesteps, (b,), device=x0.device, generator=generator)
        else:
            t = self.check_t(t, x0)
        if noise is None:
            noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        x_t = self._q_sample(x0, t, self._noise_like(x0, noise))
        out, nu = self.split_output(model(x_t, t), x_t)
        if self.model_mean_type == "eps":
            target = noise
        elif self.model_mean_type == "x0":
            target = x0
        else:
            target = self.get_v(x0, noise, t)
        loss = (out.float() - target.float()).pow(2).flatten(1).mean(dim=1)
        if nu is None:
            return loss
        from .losses import vb_term_bpd

        frozen = torch.cat([out.detach(), nu], dim=1).float()
        vb = vb_term_bpd(self, lambda *_: frozen, x0.float(), x_t.float(), t)
        return loss + HYBRID_VLB_WEIGHT * self.num_timesteps * vb


def diffusion_for(config: dict[str, Any]) -> GaussianDiffusion:
    """The GaussianDiffusion a training config describes (schedule, T, parameterization).

    Configs written before ``var_type`` existed mean the fixed posterior variance.
    """
    betas = get_beta_schedule(config["schedule"], config["num_timesteps"])
    return GaussianDiffusion(betas, config["mean_type"], config.get("var_type", "fixed_small"))
