"""A learned reverse-step variance and the hybrid loss (Nichol & Dhariwal 2021).

The network returns twice the channels, [prediction | ν] with ν ∈ [-1, 1] per pixel, read as

    log σ_t² = ½(1+ν) log β_t + ½(1-ν) log β̃_t,

an interpolation on a log scale between the two fixed choices of Chapter 3. It is trained on
the hybrid loss L_simple + λ T L_t: the mean learns from L_simple alone, the variance from the
ELBO term L_t alone (the mean's gradient is stopped there). Everything else is
:class:`ddpm_lib.diffusion.GaussianDiffusion`'s.
"""

from __future__ import annotations

import torch

from .diffusion import VAR_TYPES, GaussianDiffusion, Model, ModelPrediction
from .elbo import vb_term_bpd

Tensor = torch.Tensor

# Weight λ of L_vlb in the hybrid loss L_simple + λ L_vlb (Nichol & Dhariwal 2021).
HYBRID_VLB_WEIGHT = 0.001


def learned_range_log_variance(
    nu: Tensor, log_beta: Tensor, log_posterior_variance: Tensor
) -> Tensor:
    """log σ_t² = ½(1+ν) log β_t + ½(1-ν) log β̃_t: the learned_range variance.

    ν = 1 gives β_t (fixed_large), ν = -1 gives β̃_t (fixed_small). Shapes broadcast.
    """
    frac = (nu + 1) / 2
    return frac * log_beta + (1 - frac) * log_posterior_variance


class LearnedRangeDiffusion(GaussianDiffusion):
    """GaussianDiffusion whose network also predicts its reverse-step variance.

    ``model_var_type`` is "learned_range" by default; "fixed_small" and "fixed_large" remain
    available per call (``p_mean_variance(..., variance="fixed_small")`` ignores ν).
    """

    var_types = (*VAR_TYPES, "learned_range")

    def __init__(
        self, betas: Tensor, model_mean_type: str = "eps", model_var_type: str = "learned_range"
    ) -> None:
        super().__init__(betas, model_mean_type, model_var_type)
        self.log_betas = torch.log(self.betas)  # the upper end of learned_range

    def split_output(self, out: Tensor, x_t: Tensor) -> tuple[Tensor, Tensor | None]:
        """[prediction | ν] → (prediction shaped like x_t, ν shaped like x_t)."""
        want = (x_t.shape[0], 2 * x_t.shape[1], *x_t.shape[2:])
        if tuple(out.shape) != want:
            raise ValueError(
                f"the model returned shape {tuple(out.shape)} for input {tuple(x_t.shape)}; "
                f"with a learned variance it must return {want} (twice the channels: the "
                "prediction and the variance), e.g. a UNet with out_channels = 2 × in_channels"
            )
        prediction, nu = out.chunk(2, dim=1)
        return prediction, nu

    def mean_model(self, model: Model) -> Model:
        """``model`` restricted to its prediction (the first half of its channels)."""

        def prediction(x_t: Tensor, t: Tensor) -> Tensor:
            return self.split_output(model(x_t, t), x_t)[0]

        return prediction

    def learned_log_variance(self, nu: Tensor, t: Tensor, x_t: Tensor) -> Tensor:
        """:func:`learned_range_log_variance` at checked steps ``t`` (β̃_2 at book step 1)."""
        return learned_range_log_variance(
            nu,
            self._extract("log_betas", t, x_t),
            self._extract("posterior_log_variance_clipped", t, x_t),
        )

    def reverse_variance(
        self, var_type: str, pred: ModelPrediction, x_t: Tensor, t: Tensor
    ) -> tuple[Tensor, Tensor]:
        """σ_t² and log σ_t²: from ν for "learned_range", else the fixed choices."""
        if var_type != "learned_range":
            return super().reverse_variance(var_type, pred, x_t, t)
        log_var = self.learned_log_variance(pred.var_values, t, x_t)
        return log_var.exp(), log_var

    def loss_terms(self, out: Tensor, x0: Tensor, x_t: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """The hybrid loss L_simple + λ T L_t per example, λ = ``HYBRID_VLB_WEIGHT`` = 0.001.

        T L_t (L_t the ELBO term of step t in bits/dim, :func:`ddpm_lib.elbo.vb_term_bpd`) is an
        unbiased estimate of L_vlb = Σ_t L_t over uniform t (eq-ch5-one-step, Chapter 5). L_t
        sees the prediction with its gradient stopped, so the mean learns from L_simple alone
        and the variance from L_vlb alone. x0 must lie on the 8-bit grid (L_0 is a discretized
        likelihood); the trainer checks its data once.
        """
        simple = super().loss_terms(out, x0, x_t, t, noise)
        prediction, nu = self.split_output(out, x_t)
        frozen = torch.cat([prediction.detach(), nu], dim=1).float()
        vb = vb_term_bpd(self, lambda *_: frozen, x0.float(), x_t.float(), t)
        return simple + HYBRID_VLB_WEIGHT * self.num_timesteps * vb
