"""Chapter 8's coding exercises (ddpm_lib.exercises)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ddpm_lib.exercises import Exercise
from ddpm_lib.mixture import labelled_gmm

Tensor = torch.Tensor

_ALPHA_BARS = (1.0, 0.8, 0.3, 0.02)  # clean data, then more and more noise


def _test_class_posterior(fn: Callable) -> str | None:
    """Compare fn(x_t, means, std, labels, alpha_bar) with the noised mixture's exact
    class_log_posterior on the book's labelled mixture, clean data first."""
    mixture = labelled_gmm(torch.float64)
    gen = torch.Generator().manual_seed(0)
    x = 2.0 * torch.randn(16, 2, generator=gen, dtype=torch.float64)
    for ab in _ALPHA_BARS:
        want = mixture.noised(ab).class_log_posterior(x).exp()
        got = fn(x.clone(), mixture.means.clone(), mixture.std, mixture.labels.clone(), ab)
        got = torch.as_tensor(got, dtype=torch.float64)
        where = "on clean data (ᾱ = 1)" if ab == 1.0 else f"at ᾱ = {ab:g}"
        if got.shape != want.shape:
            return f"{where} you return shape {tuple(got.shape)}, not {tuple(want.shape)}."
        if not torch.allclose(got.sum(1), torch.ones(len(x), dtype=torch.float64), atol=1e-9):
            return f"{where} your probabilities do not sum to 1 over the classes for each point."
        if torch.allclose(got, want, atol=1e-9):
            continue
        off = (got - want).abs().max().item()
        if ab == 1.0:
            return (
                f"{where} your p(y | x) is off by up to {off:.3g}: sum the weights "
                "w_k N(x; μ_k, std² I) of each class's components and normalise over classes."
            )
        return (
            f"you agree on clean data, but {where} you are off by up to {off:.3g}: the noised "
            "component k is N(√ᾱ μ_k, (ᾱ std² + 1 - ᾱ) I); scale the means and widen the std."
        )
    return None


def _class_posterior_mistake(
    x_t: Tensor, means: Tensor, std: float, labels: Tensor, alpha_bar: float
) -> Tensor:
    # The clean mixture's posterior at every noise level: the components are not noised.
    del alpha_bar
    log_k = -((x_t[:, None, :] - means[None]) ** 2).sum(-1) / (2 * std**2)
    num_classes = int(labels.max()) + 1
    per_class = torch.stack(
        [torch.logsumexp(log_k[:, labels == c], dim=1) for c in range(num_classes)], dim=1
    )
    return torch.softmax(per_class, dim=1)


EXERCISES = [
    Exercise(
        "ch08.class_posterior", "class_posterior", _test_class_posterior, _class_posterior_mistake
    ),
]
