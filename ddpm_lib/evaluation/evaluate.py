"""Evaluate a checkpoint: Fréchet distance with its real-data floor, precision/recall, ELBO.

``python -m ddpm_lib evaluate --checkpoint checkpoints/fashion_mnist.pt`` runs
:func:`evaluate_checkpoint` and writes its JSON; ``python -m ddpm_lib classifier`` trains the
feature network it needs (:func:`classifier_data` says on which images).

Which real images are compared (always said in the JSON's ``reference``):
- a model trained on a training split (Fashion-MNIST): the reference set is n images of the
  held-out test split, the floor set n images of the training split;
- a model trained on part of a split (MNIST offline: 9,000 of the 10,000 test digits): when
  the held-out part has fewer than n images, all images of the split are shuffled and cut into
  two disjoint halves, and n drops to at most half the split;
- a 2-D toy model: fresh samples of the exact distribution, features = coordinates.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..accel.graphs import GraphedSampler, prepare_model
from ..data import (
    TOY_DATASETS,
    from_model_range,
    holdout_split,
    load_image_dataset,
    to_model_range,
    toy_dataset,
)
from ..diffusion import GaussianDiffusion
from ..flow import FlowMatching, model_log_likelihood, ode_network_evaluations, ode_sample
from ..guidance import ClassifierFreeGuidance, check_labels, num_classes_of
from ..mixture import default_gmm
from ..samplers import ddim_sample, ddpm_sample
from ..training.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_model,
    model_card,
    save_checkpoint,
)
from ..training.config import diffusion_for
from ..training.pretrained import checkpoint_candidates, download_checkpoint
from ..utils import get_device
from .inception import inception_fid, inception_floor, load_inception
from .ladder import calibration_ladder, place_on_ladder
from .metrics import (
    FeatureNet,
    elbo_summary,
    extract_features,
    frechet_distance_features,
    ode_bits_per_dim,
    precision_recall,
)

Tensor = torch.Tensor


SAMPLER_KINDS = ("ddpm", "ddim", "euler", "heun")


def parse_sampler(text: str) -> tuple[str, int]:
    """ "ddpm-1000" → ("ddpm", 1000); "ddim-50" → ("ddim", 50); "euler-K", "heun-K": K steps of
    a model's ODE (:func:`~ddpm_lib.flow.ode_sample`, flow-matching or diffusion)."""
    kind, _, steps = text.strip().lower().partition("-")
    if kind not in SAMPLER_KINDS or not steps.isdigit() or int(steps) <= 0:
        raise ValueError(
            f"unknown sampler {text!r}: write ddpm-T, ddim-K, euler-K or heun-K with K a "
            "positive step count, e.g. ddpm-1000,ddim-100,heun-20"
        )
    return kind, int(steps)


def network_evaluations(process: GaussianDiffusion | FlowMatching, sampler: str) -> int:
    """How many network calls one sample of ``sampler`` costs (guidance doubles them)."""
    kind, steps = parse_sampler(sampler)
    if kind in ("euler", "heun"):
        return ode_network_evaluations(process, steps, kind)
    return steps


# ----------------------------------------------------------------------------- classifiers


def classifier_data(
    dataset: str, data_root: str | None = None, download: bool = False
) -> tuple[Tensor, Tensor, Tensor, Tensor, str]:
    """(x_train, y_train, x_test, y_test, note) for the feature classifier of ``dataset``.

    Fashion-MNIST: its training and test splits. MNIST: the 10,000 test digits (the only split
    offline), split as the chapters' checkpoint is: train on the 9,000, test on the 1,000 held
    out by ``holdout_split(10000, 1000, seed=0)``.
    """
    try:
        train = load_image_dataset(dataset, "train", data_root)
        test = load_image_dataset(dataset, "test", data_root)
        note = f"{dataset}: {len(train)} training images, accuracy on {len(test)} test images"
    except FileNotFoundError:
        if dataset != "mnist":
            raise
        data = load_image_dataset(dataset, "test", data_root, download)
        keep, hold = holdout_split(len(data), 1000, seed=0)
        train, test = data.subset(keep), data.subset(hold)
        note = (
            f"mnist test split only (offline): trained on its {len(keep)} digits, accuracy on "
            f"the {len(hold)} held out by holdout_split(seed=0)"
        )
    x, xt = train.to_model_range(), test.to_model_range()
    return x, train.labels, xt, test.labels, note


def save_classifier(model: FeatureNet, card: dict[str, Any], path: str | Path) -> Path:
    """Write the classifier's weights (float32), its constructor config and its card."""
    steps = card.get("epochs", 0) * -(-card.get("train_images", 0) // card.get("batch_size", 1))
    state = {"config": model.config, "model": model.state_dict(), "card": card, "step": steps}
    return save_checkpoint(state, path)


def load_classifier(
    path: str | Path, device: torch.device | str = "cpu"
) -> tuple[FeatureNet, dict[str, Any]]:
    """The FeatureNet saved by :func:`save_classifier` (eval mode) and its card."""
    ckpt = load_checkpoint(path, map_location=device)
    if "card" not in ckpt or "feature_dim" not in ckpt["config"]:
        raise CheckpointError(
            f"{path} is not a feature classifier (no card/config); train one with "
            "python -m ddpm_lib classifier --dataset NAME --out PATH"
        )
    model = FeatureNet(**ckpt["config"])
    model.load_state_dict(ckpt["model"])
    return model.eval().to(device), ckpt["card"]


def shipped_classifier_candidates(dataset: str) -> list[Path]:
    """Where :func:`find_classifier` looks for ``classifier_<dataset>.pt``: the places every
    shipped checkpoint is looked for (``$DDPM_CHECKPOINTS``, ``checkpoints/`` of the working
    directory and its parents, the download cache), then ``checkpoints/`` beside the package
    (a clone of the book used from another folder)."""
    name = f"classifier_{dataset}"
    beside = Path(__file__).resolve().parents[2] / "checkpoints" / f"{name}.pt"
    return [*checkpoint_candidates(name), beside]


def find_classifier(dataset: str, download: bool = True) -> Path:
    """The shipped feature classifier of ``dataset``: found (see
    :func:`shipped_classifier_candidates`) or, when ``download``, downloaded into the cache like
    the chapters' checkpoints. Raises FileNotFoundError saying where it looked and what to do."""
    name = f"classifier_{dataset}"
    candidates = shipped_classifier_candidates(dataset)
    found = next((p for p in candidates if p.is_file()), None)
    if found is not None:
        return found
    failure = "not downloaded (download=False)"
    if download:
        try:
            path = download_checkpoint(name)
            if path is not None:
                return Path(path)
            failure = "the download failed"
        except OSError as e:
            failure = f"the download failed ({e})"
    looked = "\n".join(f"  {p}" for p in candidates)
    raise FileNotFoundError(
        f"no feature classifier for {dataset}: {name}.pt was not found; looked in:\n{looked}\n"
        f"and {failure}. Either\n"
        f"  - point $DDPM_CHECKPOINTS at a folder holding {name}.pt (a clone of the book has "
        "it in checkpoints/), or pass --classifier PATH;\n"
        f"  - or train one: python -m ddpm_lib classifier --dataset {dataset} --out {name}.pt"
    )


# ----------------------------------------------------------------------------- real sets


def real_sets(
    config: dict[str, Any],
    n: int,
    data_root: str | None = None,
    seed: int = 0,
    download: bool = False,
) -> dict[str, Any]:
    """The reference set, the disjoint floor set (both [n', ...] in [-1, 1]), the held-out
    images for the ELBO (None for toy data) and a note saying where each came from."""
    gen = torch.Generator().manual_seed(seed)
    name = config["dataset"]
    if name in TOY_DATASETS:
        ref = toy_dataset(name, n, torch.Generator().manual_seed(seed + 1))
        floor = toy_dataset(name, n, torch.Generator().manual_seed(seed + 2))
        note = f"two fresh sets of {n} points of the exact {name} distribution (seeds +1, +2)"
        return {"reference": ref, "floor": floor, "heldout": None, "n": n, "note": note}
    if config["split"] == "train":
        train = load_image_dataset(name, "train", data_root, download).to_model_range()
        held = load_image_dataset(name, "test", data_root, download).to_model_range()
        held_name, train_name = "test split (held out)", "training split"
    else:
        data = load_image_dataset(name, config["split"], data_root, download)
        data = data.to_model_range()
        keep, hold = holdout_split(len(data), config.get("holdout", 0) or 0, seed=0)
        train, held = data[keep], data[hold]
        held_name = f"{len(hold)} held-out images of the {config['split']} split"
        train_name = f"{len(keep)} training images"
    if len(held) >= n and len(train) >= n:
        ref = held[torch.randperm(len(held), generator=gen)[:n]]
        floor = train[torch.randperm(len(train), generator=gen)[:n]]
        note = f"reference: {n} of the {held_name}; floor: {n} of the {train_name}"
    else:
        pool = torch.cat([held, train])
        n = min(n, len(pool) // 2)
        perm = torch.randperm(len(pool), generator=gen)
        ref, floor = pool[perm[:n]], pool[perm[n : 2 * n]]
        note = (
            f"only {len(pool)} real {name} images exist here, so all of them (training and "
            f"held out) were shuffled (seed {seed}) into two disjoint sets of n = {n}: "
            "reference and floor"
        )
    return {
        "reference": ref,
        "floor": floor,
        "heldout": held,
        "heldout_note": held_name,
        "n": n,
        "note": note,
    }


# ----------------------------------------------------------------------------- sampling


@torch.no_grad()
def draw_samples(
    diffusion: GaussianDiffusion,
    model: nn.Module,
    sample_shape: tuple[int, ...],
    n: int,
    sampler: str,
    batch_size: int = 1000,
    device: torch.device | str = "cpu",
    bf16: bool = False,
    seed: int = 0,
    progress: bool = True,
    labels: Tensor | None = None,
    guidance: float = 0.0,
) -> tuple[Tensor, float]:
    """``n`` samples [n, *sample_shape] (on the CPU) and the seconds they took.

    Images are clipped and rounded to the 8-bit grid, as the real images are. DDPM runs the
    graphed sampler of ``fast`` on CUDA (channels_last, compiled; the plain loop elsewhere);
    DDIM uses η = 0. ``labels`` [n] (a class-conditional model only) asks sample i for class
    ``labels[i]`` with classifier-free guidance of weight ``guidance``
    (:class:`~ddpm_lib.guidance.ClassifierFreeGuidance`, Chapter 8).
    """
    kind, steps = parse_sampler(sampler)
    flow = isinstance(diffusion, FlowMatching)
    if flow and kind in ("ddpm", "ddim"):
        raise ValueError(f"{sampler}: a flow-matching model is sampled by its ODE: euler-K, heun-K")
    if kind == "ddpm" and steps != diffusion.num_timesteps:
        raise ValueError(f"{sampler}: DDPM runs all T = {diffusion.num_timesteps} steps")
    if kind == "ddim" and steps > diffusion.num_timesteps:  # type: ignore[union-attr]
        raise ValueError(f"{sampler}: DDIM takes at most T = {diffusion.num_timesteps} steps")
    device = torch.device(device)
    images = len(sample_shape) == 3
    if labels is not None:
        labels = check_labels(labels, num_classes_of(model), "draw_samples")
        if labels.shape != (n,):
            raise ValueError(f"draw_samples needs one label per sample, [{n}], got {labels.shape}")
    torch.manual_seed(seed)
    gen = torch.Generator(device).manual_seed(seed)
    out, start = [], time.perf_counter()
    graphed: GraphedSampler | None = None
    guide: ClassifierFreeGuidance | None = None
    for i in range(0, n, batch_size):
        shape = (min(batch_size, n - i), *sample_shape)
        if kind == "ddpm" and device.type == "cuda":
            # The graphed sampler applies bf16 autocast inside each captured step itself; an
            # outer autocast would keep its weight casts cached outside the graph.
            if graphed is None or tuple(graphed.x.shape) != shape:
                net = prepare_model(model, channels_last=images, compile=True)
                if labels is not None:  # the guide's labels are refilled in place below
                    guide = ClassifierFreeGuidance(net, labels[i : i + shape[0]], guidance)
                    net = guide.to(device)
                graphed = GraphedSampler(
                    diffusion, net, shape, device=device, bf16=bf16, clip_denoised=images
                )
            if guide is not None:
                guide.set_labels(labels[i : i + shape[0]])  # type: ignore[index]
            x = graphed.sample(progress=progress)
        else:
            x_T = torch.randn(shape, device=device, generator=gen)
            opts = dict(clip_denoised=images, generator=gen, progress=progress)
            net = model
            if labels is not None:
                net = ClassifierFreeGuidance(model, labels[i : i + shape[0]], guidance).to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                if kind in ("euler", "heun"):
                    x = ode_sample(diffusion, net, x_T, steps, kind)
                    x = x.clamp(-1.0, 1.0) if images else x
                elif kind == "ddpm":
                    x = ddpm_sample(diffusion, net, x_T, **opts)
                else:
                    x = ddim_sample(diffusion, net, x_T, steps, **opts)
        x = x.float()
        out.append(to_model_range(from_model_range(x)).cpu() if images else x.cpu())
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return torch.cat(out), time.perf_counter() - start


# ----------------------------------------------------------------------------- evaluation


def evaluate_checkpoint(
    checkpoint: str | Path,
    n: int = 10_000,
    samplers: tuple[str, ...] = ("ddpm-1000", "ddim-100", "ddim-50"),
    elbo_n: int = 1000,
    classifier: str | Path | None = None,
    batch_size: int = 1000,
    device: str | torch.device | None = None,
    bf16: bool = False,
    seed: int = 0,
    data_root: str | None = None,
    grids: str | Path | None = None,
    progress: bool = True,
    ode_n: int = 0,
    ode_steps: int = 100,
    download: bool = False,
    ladder: bool = True,
    inception: bool = False,
) -> dict[str, Any]:
    """FD (with floor and n), precision/recall per sampler, and the ELBO of a checkpoint.

    For images, ``ladder`` adds the calibration ladder (:mod:`~ddpm_lib.evaluation.ladder`: the
    FD of the floor set after known damage, at the same n) and says between which rungs each
    sampler's FD falls. ``inception`` adds the standard FID (:mod:`~ddpm_lib.evaluation.inception`)
    with its real-data floor at the same n, and each sampler's ``fid`` and ``fid_over_floor``.

    ``ode_n`` > 0 adds the probability-flow-ODE likelihood of that many held-out images (bits/dim)
    or, for the Gaussian-mixture toy, fresh points (nats, beside their exact log-density).

    Returns a JSON-ready dict; see the module docstring for which real images are used.
    ``grids``: a folder for a 64-sample PNG per sampler. ``download``: fetch missing data.
    The feature classifier is ``classifier`` or the shipped one (:func:`find_classifier`).
    """
    for s in samplers:
        parse_sampler(s)
    if n < 4:
        raise ValueError(f"n must be at least 4 (precision/recall use 3 neighbours), got {n}")
    device = get_device(str(device) if device is not None else None)
    model, ckpt = load_model(checkpoint, map_location=device)
    config, diffusion = ckpt["config"], diffusion_for(ckpt["config"])
    flow = isinstance(diffusion, FlowMatching)
    if flow and any(parse_sampler(s)[0] in ("ddpm", "ddim") for s in samplers):
        raise ValueError(
            f"{checkpoint} is a flow-matching model: evaluate it with its ODE, e.g. "
            "--samplers euler-20,heun-10 (ddpm and ddim are diffusion samplers)"
        )
    likelihood_note = None
    if flow and elbo_n > 0:
        elbo_n = 0
        likelihood_note = (
            "no ELBO for a flow-matching model: the ELBO is a diffusion bound; its likelihood "
            "is the ODE's (--ode-n)"
        )
    toy = config["dataset"] in TOY_DATASETS
    if inception and toy:
        raise ValueError("the Inception FID is for images: toy data has none (no --inception)")
    # The classifier and the FID network first: a missing one is reported before the data is read.
    classifier_path = None if toy else (classifier or find_classifier(config["dataset"]))
    fid_net = load_inception(device) if inception else None
    sets = real_sets(config, n, data_root, seed, download)
    n = sets["n"]
    feature_net: FeatureNet | None = None
    result: dict[str, Any] = {"checkpoint": str(checkpoint), "dataset": config["dataset"]}
    if toy:
        result["feature_space"] = "the 2-D coordinates themselves"
    else:
        feature_net, card = load_classifier(classifier_path, device)
        result["feature_space"] = f"penultimate layer of {classifier_path}"
        result["classifier"] = card
    # A release checkpoint carries its card; a training checkpoint's figures are read from it.
    card = ckpt.get("card") or model_card(ckpt)
    if likelihood_note:
        result["likelihood"] = likelihood_note
    result.update(
        model_card={k: card.get(k) for k in ("steps", "batch_size", "device", "train_minutes")},
        reference=sets["note"],
        n=n,
        device=str(device),
        bf16_sampling=bf16,
        seed=seed,
    )

    def feats(x: Tensor) -> Tensor:
        return extract_features(feature_net, x, device=device)

    ref_f = feats(sets["reference"])
    floor_f = feats(sets["floor"])
    floor_fd = frechet_distance_features(floor_f, ref_f)
    result["floor"] = {"fd": floor_fd, **precision_recall(ref_f, floor_f)}
    if fid_net is not None:
        ref_i, result["inception"] = inception_floor(
            fid_net, sets["reference"], sets["floor"], device
        )
    rungs = None
    if ladder and not toy:
        rungs = calibration_ladder(sets["floor"], ref_f, feats, seed=seed)
        result["ladder"] = rungs
    sample_shape = tuple(sets["reference"].shape[1:])
    result["samplers"] = {}
    for name in samplers:
        x, seconds = draw_samples(
            diffusion, model, sample_shape, n, name, batch_size, device, bf16, seed, progress
        )
        f = feats(x)
        fd = frechet_distance_features(f, ref_f)
        result["samplers"][name] = {
            "fd": fd,
            "fd_over_floor": fd / floor_fd,
            **precision_recall(ref_f, f),
            "network_evaluations": network_evaluations(diffusion, name),
            "seconds": round(seconds, 1),
        }
        if fid_net is not None:
            fid = inception_fid(fid_net, x, ref_i, device)
            floor_fid = result["inception"]["floor_fid"]
            result["samplers"][name].update(fid=fid, fid_over_floor=fid / floor_fid)
        where = "" if rungs is None else f"; {place_on_ladder(fd, rungs)}"
        if rungs is not None:
            result["samplers"][name]["ladder"] = where[2:]
        if grids is not None and not toy:
            from ..viz import save_grid

            Path(grids).mkdir(parents=True, exist_ok=True)
            save_grid(x[:64], Path(grids) / f"{Path(checkpoint).stem}_{name}.png")
        if progress:
            print(f"{name}: FD {fd:.3f} (floor {floor_fd:.3f}) at n = {n}, {seconds:.1f} s{where}")
    if sets["heldout"] is not None and elbo_n > 0:
        held = sets["heldout"]
        pick = torch.randperm(len(held), generator=torch.Generator().manual_seed(seed))[:elbo_n]
        # Full float32 convolutions (no TF32): the bound's terms are small differences.
        tf32, torch.backends.cudnn.allow_tf32 = torch.backends.cudnn.allow_tf32, False
        try:
            elbo = elbo_summary(
                diffusion, model, held[pick], min(batch_size, 500), device, seed, progress
            )
        finally:
            torch.backends.cudnn.allow_tf32 = tf32
        elbo["images"] = f"{len(pick)} random images (seed {seed}) of the {sets['heldout_note']}"
        result["elbo"] = elbo
    if ode_n > 0:
        result["ode_likelihood"] = _ode_likelihood(
            diffusion, model, sets, config["dataset"], ode_n, ode_steps, device, seed, progress
        )
    return result


def _ode_likelihood(
    diffusion: GaussianDiffusion | FlowMatching,
    model: nn.Module,
    sets: dict[str, Any],
    dataset: str,
    n: int,
    steps: int,
    device: torch.device,
    seed: int,
    progress: bool,
) -> dict[str, Any]:
    """The ODE likelihood part of :func:`evaluate_checkpoint`."""
    if sets["heldout"] is not None:
        held = sets["heldout"]
        pick = torch.randperm(len(held), generator=torch.Generator().manual_seed(seed))[:n]
        out = ode_bits_per_dim(diffusion, model, held[pick], steps, 250, device, seed, progress)
        out["images"] = f"{len(pick)} random images (seed {seed}) of the {sets['heldout_note']}"
        return out
    x = toy_dataset(dataset, n, torch.Generator().manual_seed(seed + 3)).to(device)
    ll = model_log_likelihood(diffusion, model, x, steps, progress=progress).log_likelihood.cpu()
    out: dict[str, Any] = {
        "n": n,
        "mean_log_likelihood_nats": ll.mean().item(),
        "standard_error": (ll.std() / len(ll) ** 0.5).item(),
        "steps": steps,
        "t_start": 0.0 if isinstance(diffusion, FlowMatching) else 1.0 / diffusion.num_timesteps,
        "method": "Heun, exact divergence",
    }
    if dataset != "gmm":
        out["note"] = f"no exact density for {dataset}; only the mixture has one"
        return out
    exact = default_gmm().log_prob(x.cpu()).double()
    out.update(
        exact_mean_log_density_nats=exact.mean().item(),
        mean_difference_nats=(ll - exact).mean().item(),
        difference_standard_error=((ll - exact).std() / len(ll) ** 0.5).item(),
        method="Heun, exact divergence; exact density of the mixture at t = 0",
    )
    return out
