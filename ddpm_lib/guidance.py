"""Guidance: turning a class-conditional model into a sampler that favours its class (Chapter 8).

Each guide wraps an ε-model and is itself an ε-model, ``guide(x_t, t) -> ε̃``, so every sampler
of the book takes it unchanged: ancestral sampling (:func:`~ddpm_lib.samplers.ddpm_sample`,
the graphed sampler), DDIM (:func:`~ddpm_lib.samplers.ddim_sample`) and the probability-flow
ODE (:func:`~ddpm_lib.sde.eps_model_score_fn`). Scores and ε are the same thing up to a
factor, ∇ log q_t(x_t) = -ε/√(1-ᾱ_t) (eq-ch4-tweedie), so a statement about scores is one
about ε.

- :class:`ClassifierFreeGuidance`: ε̃ = (1 + w) ε(x, y) - w ε(x, ∅) (eq-ch8-cfg), one network
  trained with the label sometimes dropped (Ho & Salimans 2022). w = 0 is the conditional model.
- :class:`ClassifierGuidance`: ε̃ = ε(x) - s √(1-ᾱ_t) ∇ log p(y | x_t) (eq-ch8-classifier-eps),
  an unconditional model steered by a classifier of noised inputs (Dhariwal & Nichol 2021).
- :func:`tilted_log_density` and :func:`sample_tilted`: the density guidance is often said to
  sample, p(x | y)^{1+w} p(x)^{-w} (eq-ch8-tilted), exactly, for the labelled mixture; and
  :func:`noised_tilted_score`, its score after the forward process, which guidance is not.

Code indices as everywhere: ``t`` holds 0..T-1 (fractional values from the ODE samplers are
accepted by the guides: ᾱ comes from the schedule's continuous-time VP-SDE,
:class:`~ddpm_lib.sde.DiscreteVPSDE`, exact at every integer step).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from .diffusion import GaussianDiffusion
from .mixture import GaussianMixture2D
from .sde import DiscreteVPSDE

ConditionalModel = Callable[..., Tensor]  # (x_t, t, y) -> ε, y = None for the null label ∅
Classifier = Callable[[Tensor, Tensor], Tensor]  # (x_t, t) -> logits or log-probs [B, C]


def num_classes_of(model: object) -> int:
    """The number of classes a conditional model was built for (0: unconditional).

    Reads ``config.num_classes`` of a network of :mod:`ddpm_lib.nets` (also through
    ``torch.compile``'s and DistributedDataParallel's wrappers) or ``num_classes`` of an oracle.
    """
    for attr in ("_orig_mod", "module"):
        model = getattr(model, attr, model)
    config = getattr(model, "config", None)
    return int(getattr(config, "num_classes", getattr(model, "num_classes", 0)) or 0)


def check_labels(y: Tensor | int, num_classes: int, owner: str) -> Tensor:
    """``y`` as an int64 tensor after checking, on the host, that every label is a class.

    The null label is not accepted here: a guide is asked for a class. Raises ``ValueError``
    saying what was wrong (an unconditional model, a label out of range, a non-integer).
    """
    if num_classes == 0:
        raise ValueError(
            f"{owner} needs a class-conditional model, and this one is unconditional "
            "(num_classes = 0): train one with `train --class-cond`, or sample without a label"
        )
    y = torch.as_tensor(y)
    if y.is_floating_point() or y.dtype == torch.bool:
        raise ValueError(f"{owner}: labels must be integers, got dtype {y.dtype}")
    if y.numel() and not (0 <= int(y.min()) and int(y.max()) < num_classes):
        raise ValueError(
            f"{owner}: labels must lie in 0..{num_classes - 1}, got values from "
            f"{int(y.min())} to {int(y.max())}"
        )
    return y.long()


def _check_scale(value: float, name: str, owner: str) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{owner}: the {name} must be a finite number ≥ 0, got {value}")
    return value


class _Labelled(nn.Module):
    """Holds the labels a guide asks for, as a buffer that can be refilled in place (a captured
    CUDA graph keeps reading the same memory)."""

    def __init__(self, y: Tensor | int, num_classes: int, owner: str) -> None:
        super().__init__()
        self.num_classes = num_classes
        self._owner = owner
        self.register_buffer("y", check_labels(y, num_classes, owner).reshape(-1), persistent=False)

    def set_labels(self, y: Tensor | int) -> None:
        """Ask for other labels of the same shape (in place: a captured graph sees them)."""
        y = check_labels(y, self.num_classes, self._owner).reshape(-1)
        if y.shape != self.y.shape:
            raise ValueError(
                f"{self._owner}: set_labels needs {tuple(self.y.shape)} labels, got "
                f"{tuple(y.shape)}: build a new guide for another batch size"
            )
        self.y.copy_(y)

    def labels_for(self, x: Tensor) -> Tensor:
        y = self.y.to(x.device)
        if len(y) == 1:
            return y.expand(x.shape[0])
        if len(y) != x.shape[0]:
            raise ValueError(
                f"{self._owner} holds {len(y)} labels but got a batch of {x.shape[0]}: pass one "
                "label, or one per batch item"
            )
        return y


class ClassifierFreeGuidance(_Labelled):
    """Classifier-free guidance (eq-ch8-cfg):
    ``guide(x_t, t) = (1 + w) ε(x_t, t, y) - w ε(x_t, t, ∅)``.

    Args:
        model: a class-conditional ε-model ``model(x_t, t, y)``, ``y = None`` for ∅ (a network
            built with ``num_classes > 0``, or :class:`~ddpm_lib.oracles.MixtureOracle`).
        y: the class asked for: one int for the whole batch, or one per batch item [B].
        w: the guidance weight, ≥ 0. w = 0 is the conditional model alone (one network call);
            other codebases write s = 1 + w (``guidance_scale`` in diffusers).

    The output has the model's channels; a model that also predicts a variance (twice the
    channels) has only its first half guided, the variance taken from the conditional call.
    For w > 0 both predictions come from one call on a doubled batch.
    """

    def __init__(self, model: ConditionalModel, y: Tensor | int, w: float) -> None:
        owner = "ClassifierFreeGuidance"
        super().__init__(y, num_classes_of(model), owner)
        self.model = model
        self.w = _check_scale(w, "guidance weight w", owner)

    def forward(self, x_t: Tensor, t: Tensor | float) -> Tensor:
        y = self.labels_for(x_t)
        if self.w == 0:
            return self.model(x_t, t, y)
        b = x_t.shape[0]
        t = torch.as_tensor(t, device=x_t.device)
        t2 = t.expand(b).repeat(2) if t.ndim == 0 else t.repeat(2)
        null = torch.full_like(y, self.num_classes)
        out = self.model(torch.cat([x_t, x_t]), t2, torch.cat([y, null]))
        cond, uncond = out[:b], out[b:]
        c = x_t.shape[1]
        guided = (1 + self.w) * cond[:, :c] - self.w * uncond[:, :c]
        return torch.cat([guided, cond[:, c:]], dim=1) if cond.shape[1] > c else guided


class ClassifierGuidance(_Labelled):
    """Classifier guidance (eq-ch8-classifier-eps):
    ``guide(x_t, t) = ε(x_t, t) - s √(1-ᾱ_t) ∇_x log p_φ(y | x_t, t)``.

    Args:
        diffusion: the process (for ᾱ_t).
        model: an unconditional ε-model ``model(x_t, t)`` (a conditional one is called with ∅).
        classifier: ``classifier(x_t, t) -> [B, C]`` logits (or log-probabilities) of the class
            of the clean image, trained on noised inputs, with a ``num_classes`` attribute (or
            ``config.num_classes``); :class:`~ddpm_lib.oracles.MixtureClassifier` is the exact
            one for the mixture.
        y: the class asked for (one int, or one per batch item).
        scale: s ≥ 0. With the exact classifier, s = 1 is the exact conditional score and
            s = 1 + w equals classifier-free guidance with weight w (eq-ch8-bayes-score).
    """

    def __init__(
        self,
        diffusion: GaussianDiffusion,
        model: ConditionalModel,
        classifier: Classifier,
        y: Tensor | int,
        scale: float,
    ) -> None:
        owner = "ClassifierGuidance"
        num_classes = num_classes_of(classifier)
        if num_classes == 0:
            raise ValueError(
                "ClassifierGuidance needs to know how many classes the classifier tells apart: "
                "give it a `num_classes` attribute"
            )
        super().__init__(y, num_classes, owner)
        self.diffusion, self.model, self.classifier = diffusion, model, classifier
        # √(1-ᾱ) at any code index t, fractional ones included (the ODE samplers'), from the
        # continuous-time process whose marginals are the schedule's at t_cont = (t + 1)/T.
        self._sde = DiscreteVPSDE(diffusion.betas)
        self.scale = _check_scale(scale, "classifier scale s", owner)
        self._model_conditional = num_classes_of(model) > 0

    def class_log_prob_grad(self, x_t: Tensor, t: Tensor | float) -> Tensor:
        """∇_x log p_φ(y | x_t, t), shaped like x_t (autograd through the classifier)."""
        y = self.labels_for(x_t)
        with torch.enable_grad():
            x = x_t.detach().requires_grad_(True)
            logits = self.classifier(x, torch.as_tensor(t, device=x.device).expand(x.shape[0]))
            log_p = (
                torch.log_softmax(
                    logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=1
                )
                .gather(1, y[:, None])
                .sum()
            )
            (grad,) = torch.autograd.grad(log_p, x)
        return grad.to(x_t.dtype)

    def forward(self, x_t: Tensor, t: Tensor | float) -> Tensor:
        eps = self.model(x_t, t, None) if self._model_conditional else self.model(x_t, t)
        if self.scale == 0:
            return eps
        t_cont = (torch.as_tensor(t, device=x_t.device).double().expand(x_t.shape[0]) + 1) / (
            self.diffusion.num_timesteps
        )
        _, std = self._sde.marginal_prob(x_t, t_cont)
        sigma = std.to(x_t.dtype).reshape(-1, *([1] * (x_t.ndim - 1)))
        c = x_t.shape[1]
        guided = eps[:, :c] - self.scale * sigma * self.class_log_prob_grad(x_t, t)
        return torch.cat([guided, eps[:, c:]], dim=1) if eps.shape[1] > c else guided


# ----------------------------------------------------------------------------- the tilted target


def tilted_log_density(mixture: GaussianMixture2D, y: int, w: float, x: Tensor) -> Tensor:
    """log of p(x | y)^{1+w} p(x)^{-w} at x [n, d], unnormalised (eq-ch8-tilted), [n].

    Equal to log p(x | y) + w log p(y | x) - w log p(y): the class density reweighted by how
    sure the class is. Bounded by p(x | y)/p(y)^w (as p(y | x) ≤ 1), so it is normalisable.
    """
    w = _check_scale(w, "guidance weight w", "tilted_log_density")
    return (1 + w) * mixture.conditional(y).log_prob(x) - w * mixture.log_prob(x)


def sample_tilted(
    mixture: GaussianMixture2D,
    y: int,
    w: float,
    n: int,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, float]:
    """``n`` exact draws [n, d] from p(x | y)^{1+w} p(x)^{-w} (normalised), and the acceptance rate.

    Rejection sampling (eq-ch8-tilted-rejection): the target is proportional to
    p(x | y) p(y | x)^w, so propose x ~ p(x | y) and accept with probability p(y | x)^w ≤ 1.
    Every accepted draw is exact; the acceptance rate is E_{p(x|y)}[p(y | x)^w].
    """
    w = _check_scale(w, "guidance weight w", "sample_tilted")
    cond = mixture.conditional(y)
    kept: list[Tensor] = []
    have, proposed = 0, 0
    while have < n:
        batch = max(2 * (n - have), 1024)
        x = cond.sample(batch, generator)
        log_accept = w * mixture.class_log_posterior(x)[:, y]
        u = torch.rand(batch, generator=generator, dtype=x.dtype)
        ok = u.log() < log_accept
        kept.append(x[ok])
        have += int(ok.sum())
        proposed += batch
        if proposed > 1000 * n + 10**6:
            raise RuntimeError(f"rejection sampling accepts almost nothing at w = {w}")
    return torch.cat(kept)[:n], have / proposed


def noised_tilted_score(
    mixture: GaussianMixture2D,
    y: int,
    w: float,
    alpha_bar: float,
    x: Tensor,
    *,
    spacing: float = 0.01,
    margin: float = 10.0,
) -> Tensor:
    """∇ log of the tilted density after the forward process to ᾱ, at x [n, d] (d = 2), [n, d].

    The density of x_t = √ᾱ x_0 + √(1-ᾱ) ε with x_0 from the tilted target. Its score is
    E[√ᾱ x_0 - x_t | x_t]/(1 - ᾱ) (the posterior mean of the Gaussian convolution), computed by
    quadrature on a square grid of x_0 with ``spacing`` covering every component ± ``margin``
    standard deviations. This is what guidance is often said to follow and does not
    (Chapter 8): at ᾱ < 1 it differs from the guided score (1 + w) ∇ log q_t(x | y) -
    w ∇ log q_t(x), the tilt of the noised densities (eq-ch8-guided-score).
    """
    if mixture.dim != 2:
        raise ValueError(f"noised_tilted_score integrates on a 2-D grid; got d = {mixture.dim}")
    if not 0.0 < alpha_bar < 1.0:
        raise ValueError(f"alpha_bar must lie in (0, 1), got {alpha_bar}")
    dt = torch.float64
    lo = (mixture.means.min(0).values - margin * mixture.std).to(dt)
    hi = (mixture.means.max(0).values + margin * mixture.std).to(dt)
    axes = [torch.arange(lo[i], hi[i] + spacing, spacing, dtype=dt) for i in range(2)]
    grid = torch.cartesian_prod(*axes)  # [G, 2]
    m64 = GaussianMixture2D(mixture.means.to(dt), mixture.std, mixture.weights.to(dt),
                            mixture.labels)  # fmt: skip
    log_w = tilted_log_density(m64, y, w, grid)  # [G], unnormalised prior weights
    x = x.to(dt)
    a, var = math.sqrt(alpha_bar), 1.0 - alpha_bar
    out = torch.empty_like(x)
    for i in range(0, len(x), 64):
        xi = x[i : i + 64]
        log_k = -((xi[:, None, :] - a * grid[None]) ** 2).sum(-1) / (2 * var)  # [b, G]
        post = torch.softmax(log_k + log_w[None], dim=1)
        out[i : i + 64] = (a * post @ grid - xi) / var
    return out
