"""Evaluate classifier-free guidance on a class-conditional checkpoint (Chapter 8).

``python -m ddpm_lib evaluate --checkpoint checkpoints/fashion_mnist_cond.pt --guidance
0,0.5,1,2,4,8`` runs :func:`evaluate_guidance`: for each guidance weight w, n samples asking
for every class equally often, then

- the *accuracy*: how often the shipped feature classifier (the one the Fréchet distance uses)
  names the requested class, beside its accuracy on real test images (its model card);
- the Fréchet distance of the samples (all classes together) to real held-out images, with the
  real-data floor and precision/recall, exactly as :func:`evaluate_checkpoint` measures them.

Rising accuracy with falling recall and a rising FD is guidance's fidelity-diversity trade.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..guidance import check_labels, num_classes_of
from ..training.checkpoint import load_model
from ..training.config import diffusion_for
from ..utils import get_device
from .evaluate import (
    draw_samples,
    find_classifier,
    load_classifier,
    network_evaluations,
    parse_sampler,
    real_sets,
)
from .metrics import extract_features, frechet_distance_features, precision_recall

Tensor = torch.Tensor


def balanced_labels(n: int, num_classes: int) -> Tensor:
    """[n] labels 0, 1, ..., K-1, 0, 1, ...: every class asked for equally often (± 1)."""
    return torch.arange(n) % num_classes


def class_rows(x: Tensor, labels: Tensor, num_classes: int, per_class: int) -> Tensor:
    """The first ``per_class`` samples of each class, class by class: [K * per_class, ...]."""
    rows = [x[labels == c][:per_class] for c in range(num_classes)]
    if any(len(r) < per_class for r in rows):
        raise ValueError(f"fewer than {per_class} samples of some class")
    return torch.cat(rows)


def check_guidance_weights(weights: tuple[float, ...], config: dict[str, Any]) -> None:
    """Raise ValueError for a negative weight, or for w > 0 on a model that never learned
    ε(x, ∅) (trained with label_dropout = 0)."""
    for w in weights:
        if not w >= 0:
            raise ValueError(f"guidance weights must be ≥ 0, got {w}")
    if any(w > 0 for w in weights) and config.get("label_dropout", 0.0) == 0:
        raise ValueError(
            "this model was trained with label_dropout = 0, so its unconditional prediction "
            "ε(x, ∅) was never trained and guidance (w > 0) has nothing to push away from: use "
            "w = 0, or train with --label-dropout 0.1"
        )


def evaluate_guidance(
    checkpoint: str | Path,
    weights: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0),
    n: int = 10_000,
    sampler: str = "ddim-100",
    classifier: str | Path | None = None,
    batch_size: int = 1000,
    device: str | torch.device | None = None,
    bf16: bool = False,
    seed: int = 0,
    data_root: str | None = None,
    grids: str | Path | None = None,
    progress: bool = True,
    download: bool = False,
) -> dict[str, Any]:
    """Accuracy and FD (with floor) of a class-conditional checkpoint at each guidance weight.

    Returns a JSON-ready dict: ``floor`` (FD, precision, recall of real images), the
    classifier's card (``test_accuracy`` on real images), and ``weights[str(w)]`` with
    ``accuracy``, ``accuracy_by_class``, ``fd``, ``fd_over_floor``, precision, recall,
    ``network_evaluations`` and ``seconds``. ``grids``: a folder for one PNG per w, a row of 8
    samples per class. Every w uses the same seed, so the same starting noise.
    """
    parse_sampler(sampler)
    device = get_device(str(device) if device is not None else None)
    model, ckpt = load_model(checkpoint, map_location=device)
    config, diffusion = ckpt["config"], diffusion_for(ckpt["config"])
    if config.get("objective", "diffusion") != "diffusion":
        raise ValueError(f"{checkpoint} is a flow-matching model; evaluate --guidance takes "
                         "diffusion models only so far")  # fmt: skip
    num_classes = num_classes_of(model)
    check_labels(0, num_classes, "evaluate --guidance")  # an unconditional model stops here
    check_guidance_weights(tuple(weights), config)
    classifier_path = classifier or find_classifier(config["dataset"])
    feature_net, card = load_classifier(classifier_path, device)
    sets = real_sets(config, n, data_root, seed, download)
    n = sets["n"]
    labels = balanced_labels(n, num_classes)

    def feats(x: Tensor) -> Tensor:
        return extract_features(feature_net, x, device=device)

    ref_f, floor_f = feats(sets["reference"]), feats(sets["floor"])
    floor_fd = frechet_distance_features(floor_f, ref_f)
    result: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "dataset": config["dataset"],
        "sampler": sampler,
        "label_dropout": config.get("label_dropout"),
        "feature_space": f"penultimate layer of {classifier_path}",
        "classifier": card,
        "reference": sets["note"],
        "labels": f"{n} samples, class i % {num_classes} for sample i",
        "n": n,
        "device": str(device),
        "bf16_sampling": bf16,
        "seed": seed,
        "floor": {"fd": floor_fd, **precision_recall(ref_f, floor_f)},
        "weights": {},
    }
    sample_shape = tuple(sets["reference"].shape[1:])
    for w in weights:
        x, seconds = draw_samples(
            diffusion, model, sample_shape, n, sampler, batch_size, device, bf16, seed,
            progress, labels=labels, guidance=w,
        )  # fmt: skip
        f = feats(x)
        with torch.no_grad():  # the class from the features already computed: one pass
            predicted = feature_net.head(f.float().to(device)).argmax(1).cpu()
        hit = (predicted == labels).float()
        fd = frechet_distance_features(f, ref_f)
        result["weights"][str(w)] = {
            "w": w,
            "accuracy": hit.mean().item(),
            "accuracy_by_class": [hit[labels == c].mean().item() for c in range(num_classes)],
            "fd": fd,
            "fd_over_floor": fd / floor_fd,
            **precision_recall(ref_f, f),
            "network_evaluations": network_evaluations(diffusion, sampler) * (1 if w == 0 else 2),
            "seconds": round(seconds, 1),
        }
        if grids is not None:
            from ..viz import save_grid

            Path(grids).mkdir(parents=True, exist_ok=True)
            rows = class_rows(x, labels, num_classes, 8)
            save_grid(rows, Path(grids) / f"{Path(checkpoint).stem}_w{w:g}.png", nrow=8)
        if progress:
            print(
                f"w = {w:g}: accuracy {hit.mean().item():.3f}, FD {fd:.3f} "
                f"(floor {floor_fd:.3f}) at n = {n}, {seconds:.1f} s"
            )
    return result
