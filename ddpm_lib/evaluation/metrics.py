"""Sample quality and likelihood, self-contained: no downloaded Inception weights.

- ``FeatureNet``: a small CNN classifier per dataset, trained by ``train_classifier`` (CLI:
  ``python -m ddpm_lib classifier``); its penultimate layer (``features``) is the feature space.
- ``frechet_distance``: ‖μ_1 - μ_2‖² + tr(Σ_1 + Σ_2 - 2 (Σ_1^{1/2} Σ_2 Σ_1^{1/2})^{1/2}), the
  2-Wasserstein distance between Gaussians fitted to two feature sets (Heusel et al. 2017).
  FD is biased upwards at small n, so it is only comparable at equal n: every figure carries its
  n, and the *real-data floor* (FD between two disjoint real sets of the same n) sits beside it.
- ``precision_recall``: k-nearest-neighbour precision and recall (Kynkäänniemi et al. 2019).
- ``elbo_summary``: the exact discrete ELBO of Chapter 5 in bits/dim over a held-out set, with
  its standard error and the per-t contributions.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..diffusion import GaussianDiffusion
from ..elbo import elbo_bpd
from ..flow import FlowMatching, model_log_likelihood

Tensor = torch.Tensor


class FeatureNet(nn.Module):
    """Classifier for [B, C, H, W] images in [-1, 1]; ``features`` gives [B, feature_dim].

    Two conv stages with 2x2 max-pooling, a third conv stage, global average pooling, one
    hidden layer (the features) and the class logits.
    """

    def __init__(
        self, in_channels: int = 1, num_classes: int = 10, width: int = 32, feature_dim: int = 128
    ) -> None:
        super().__init__()
        self.config = dict(
            in_channels=in_channels, num_classes=num_classes, width=width, feature_dim=feature_dim
        )
        w = width

        def stage(c_in: int, c_out: int) -> list[nn.Module]:
            return [
                nn.Conv2d(c_in, c_out, 3, padding=1),
                nn.BatchNorm2d(c_out),
                nn.ReLU(),
                nn.Conv2d(c_out, c_out, 3, padding=1),
                nn.BatchNorm2d(c_out),
                nn.ReLU(),
            ]

        self.body = nn.Sequential(
            *stage(in_channels, w),
            nn.MaxPool2d(2),
            *stage(w, 2 * w),
            nn.MaxPool2d(2),
            *stage(2 * w, 4 * w),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(4 * w, feature_dim),
            nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(feature_dim, num_classes))

    def features(self, x: Tensor) -> Tensor:
        """[B, C, H, W] in [-1, 1] → penultimate activations [B, feature_dim]."""
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


def _shift(x: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """Random translation by up to ``max_shift`` pixels (zero padding = background -1)."""
    h, w = x.shape[-2:]
    padded = F.pad(x, [max_shift] * 4, value=-1.0)
    dx, dy = torch.randint(0, 2 * max_shift + 1, (2,), generator=generator).tolist()
    return padded[:, :, dy : dy + h, dx : dx + w]


@torch.no_grad()
def accuracy(model: FeatureNet, x: Tensor, y: Tensor, batch_size: int = 1000) -> float:
    """Fraction of ``x`` [N, C, H, W] (in [-1, 1]) classified as ``y`` [N]."""
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for i in range(0, len(x), batch_size):
        logits = model(x[i : i + batch_size].to(device))
        correct += (logits.argmax(1).cpu() == y[i : i + batch_size]).sum().item()
    return correct / len(x)


def train_classifier(
    x: Tensor,
    y: Tensor,
    x_test: Tensor,
    y_test: Tensor,
    epochs: int = 10,
    batch_size: int = 256,
    lr: float = 2e-3,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> tuple[FeatureNet, dict[str, Any]]:
    """Train a FeatureNet on ``x`` [N, C, H, W] in [-1, 1] with labels ``y`` [N].

    AdamW with a cosine learning rate, random shifts of up to 2 pixels. Returns the model (eval
    mode) and a card: test accuracy on (``x_test``, ``y_test``), epochs, parameters, seconds.
    """
    if x.ndim != 4 or len(x) != len(y) or len(x_test) != len(y_test):
        raise ValueError(
            f"need images [N, C, H, W] with N labels, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    device = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = FeatureNet(in_channels=x.shape[1], num_classes=int(y.max()) + 1).to(device)
    steps_per_epoch = math.ceil(len(x) / batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * steps_per_epoch)
    xd, yd = x.to(device), y.to(device)
    start = time.perf_counter()
    bar = tqdm(range(epochs), desc="classifier epochs", disable=not progress)
    for _ in bar:
        model.train()
        perm = torch.randperm(len(x), generator=gen).to(device)
        for k in range(steps_per_epoch):
            idx = perm[k * batch_size : (k + 1) * batch_size]
            loss = F.cross_entropy(model(_shift(xd[idx], 2, gen)), yd[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    seconds = time.perf_counter() - start
    card = {
        "test_accuracy": accuracy(model, x_test, y_test),
        "test_images": len(x_test),
        "train_images": len(x),
        "epochs": epochs,
        "batch_size": batch_size,
        "parameters": sum(p.numel() for p in model.parameters()),
        "feature_dim": model.config["feature_dim"],
        "train_seconds": round(seconds, 1),
    }
    return model.eval(), card


@torch.no_grad()
def extract_features(
    model: nn.Module | None, x: Tensor, batch_size: int = 1000, device: torch.device | str = "cpu"
) -> Tensor:
    """Features [N, D] (float64, on the CPU) of ``x`` [N, ...]; ``model=None`` uses x itself.

    ``model`` is a FeatureNet (its ``features``), for images in [-1, 1]; with None the rows of
    ``x`` [N, D] are the features (2-D toy data).
    """
    if model is None:
        return x.reshape(len(x), -1).double().cpu()
    model.eval()
    feats = [
        model.features(x[i : i + batch_size].to(device)).double().cpu()  # type: ignore[operator]
        for i in range(0, len(x), batch_size)
    ]
    return torch.cat(feats)


def feature_statistics(features: Tensor) -> tuple[Tensor, Tensor]:
    """Mean [D] and unbiased covariance [D, D] (float64) of ``features`` [N, D], N ≥ 2."""
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"need features [N, D] with N ≥ 2, got {tuple(features.shape)}")
    f = features.double()
    mu = f.mean(0)
    centred = f - mu
    return mu, centred.T @ centred / (f.shape[0] - 1)


def _psd_sqrt(a: Tensor) -> Tensor:
    """Symmetric square root of a symmetric positive semi-definite matrix (eigenvalues ≥ 0)."""
    vals, vecs = torch.linalg.eigh((a + a.T) / 2)
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.T


def frechet_distance(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> float:
    """FD = ‖μ_1 - μ_2‖² + tr Σ_1 + tr Σ_2 - 2 tr (Σ_1^{1/2} Σ_2 Σ_1^{1/2})^{1/2}.

    tr (Σ_1 Σ_2)^{1/2} is computed as tr of the square root of the symmetric PSD matrix
    Σ_1^{1/2} Σ_2 Σ_1^{1/2} (same eigenvalues as Σ_1 Σ_2), in float64, so no complex parts.
    """
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(
            f"feature statistics differ in shape: {tuple(mu1.shape)}/{tuple(sigma1.shape)} vs "
            f"{tuple(mu2.shape)}/{tuple(sigma2.shape)}; use the same feature network for both"
        )
    mu1, mu2, sigma1, sigma2 = (v.double() for v in (mu1, mu2, sigma1, sigma2))
    root1 = _psd_sqrt(sigma1)
    middle = root1 @ sigma2 @ root1
    tr_cross = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    fd = (mu1 - mu2).pow(2).sum() + sigma1.trace() + sigma2.trace() - 2 * tr_cross
    return float(fd.clamp_min(0))


def frechet_distance_features(a: Tensor, b: Tensor) -> float:
    """FD between the Gaussians fitted to feature sets ``a`` [N, D] and ``b`` [M, D]."""
    return frechet_distance(*feature_statistics(a), *feature_statistics(b))


def _kth_neighbour_radius(f: Tensor, k: int, chunk: int = 2048) -> Tensor:
    """Distance from each row of ``f`` [N, D] to its k-th nearest other row, [N]."""
    radii = []
    for i in range(0, len(f), chunk):
        d = torch.cdist(f[i : i + chunk], f)
        radii.append(d.kthvalue(k + 1, dim=1).values)  # k + 1: the row itself is at distance 0
    return torch.cat(radii)


def _covered(queries: Tensor, support: Tensor, radii: Tensor, chunk: int = 2048) -> Tensor:
    """For each query, whether it lies within some support point's k-NN ball, [N] bool."""
    inside = []
    for i in range(0, len(queries), chunk):
        d = torch.cdist(queries[i : i + chunk], support)
        inside.append((d <= radii[None, :]).any(dim=1))
    return torch.cat(inside)


def precision_recall(real: Tensor, fake: Tensor, k: int = 3) -> dict[str, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) of feature sets [N, D].

    Precision: the fraction of generated samples inside the real manifold (union of k-NN balls
    around real points); recall: the fraction of real samples inside the generated manifold.
    """
    if min(len(real), len(fake)) <= k:
        raise ValueError(
            f"precision/recall with k = {k} neighbours needs more than {k} samples per set, got "
            f"{len(real)} and {len(fake)}; evaluate more samples (--n)"
        )
    real, fake = real.float(), fake.float()
    precision = _covered(fake, real, _kth_neighbour_radius(real, k)).float().mean().item()
    recall = _covered(real, fake, _kth_neighbour_radius(fake, k)).float().mean().item()
    return {"precision": precision, "recall": recall, "k": k}


@torch.no_grad()
def elbo_summary(
    diffusion: GaussianDiffusion,
    model: nn.Module,
    x0: Tensor,
    batch_size: int = 250,
    device: torch.device | str = "cpu",
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """The negative ELBO of Chapter 5 in bits/dim over images ``x0`` [N, C, H, W] in [-1, 1].

    x0 must lie on the 8-bit grid (the discretized decoder L_0 assumes it). Returns the mean of
    the per-image totals with its standard error (std / √N), the means of L_T, L_0 and
    Σ_{t≥2} L_{t-1}, and ``per_t`` [T]: the mean of each term (index 0 = L_0).
    """
    grid = (x0 + 1) * 127.5
    if (grid - grid.round()).abs().max() > 1e-3:
        raise ValueError(
            "the ELBO's decoder L_0 needs 8-bit data: pass images as to_model_range(uint8 pixels)"
        )
    gen = torch.Generator(device).manual_seed(seed)
    totals, priors, terms = [], [], []
    # One batch costs T network calls (minutes on a CPU): the inner bar counts them, so the
    # progress moves within a batch, not only between batches.
    for i in tqdm(range(0, len(x0), batch_size), desc="ELBO batches", disable=not progress):
        out = elbo_bpd(
            diffusion, model, x0[i : i + batch_size].to(device), generator=gen, progress=progress
        )
        totals.append(out.total.cpu())
        priors.append(out.prior.cpu())
        terms.append(out.terms.cpu())
    total, prior, per_t = torch.cat(totals), torch.cat(priors), torch.cat(terms)
    n = len(total)
    return {
        "n": n,
        "bits_per_dim": total.mean().item(),
        "standard_error": (total.std() / math.sqrt(n)).item() if n > 1 else float("nan"),
        "prior_L_T": prior.mean().item(),
        "decoder_L_0": per_t[:, 0].mean().item(),
        "kl_terms": per_t[:, 1:].sum(1).mean().item(),
        "per_t": per_t.mean(0).tolist(),
    }


def ode_bits_per_dim(
    process: GaussianDiffusion | FlowMatching,
    model: nn.Module,
    x0: Tensor,
    steps: int = 100,
    batch_size: int = 250,
    device: torch.device | str = "cpu",
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """ODE likelihood of 8-bit images ``x0`` [N, C, H, W] in bits/dim; Chapters 6 and 9.

    Each image is dequantized, x̃ = x_0 + u with u ~ U(-1/255, 1/255)^D (one bin of the 8-bit
    grid), and log p(x̃) is computed by :func:`~ddpm_lib.flow.model_log_likelihood`, one
    estimator for both kinds of model: a diffusion model's probability-flow ODE from t = 1/T
    (the smallest noise level the network was trained on), a flow-matching model's own ODE from
    t = 0, with one Hutchinson probe per image. bits/dim = -log p(x̃)/(D ln 2) + log₂ 127.5: by
    Jensen's inequality an upper bound, in expectation over u, on the discrete model's
    -log₂ P(x_0)/D.
    """
    flow = isinstance(process, FlowMatching)
    t_start = 0.0 if flow else 1.0 / process.num_timesteps
    gen = torch.Generator(device).manual_seed(seed)
    dims = x0[0].numel()
    bpd = []
    for i in tqdm(range(0, len(x0), batch_size), desc="ODE likelihood", disable=not progress):
        x = x0[i : i + batch_size].to(device)
        u = (torch.rand(x.shape, generator=gen, device=device) * 2 - 1) / 255
        # The inner bar counts this batch's ODE steps (the slow part), not only the batches.
        out = model_log_likelihood(
            process, model, x + u, steps, hutchinson=True, generator=gen, progress=progress
        )
        bpd.append((-out.log_likelihood / (dims * math.log(2)) + math.log2(127.5)).cpu())
    values = torch.cat(bpd)
    n = len(values)
    return {
        "n": n,
        "bits_per_dim": values.mean().item(),
        "standard_error": (values.std() / math.sqrt(n)).item() if n > 1 else float("nan"),
        "steps": steps,
        "t_start": t_start,
        "method": "Heun, one Hutchinson probe per image, uniform dequantization",
        "ode": "flow-matching velocity" if flow else "probability-flow ODE of the ε-model",
    }
