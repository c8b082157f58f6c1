"""Datasets for the book: MNIST, Fashion-MNIST and CIFAR-10 images, and 2-D toy distributions.

Images are read from torchvision's on-disk layout by our own parsers (IDX files, gzipped or not,
and CIFAR-10's pickle batches); torchvision is used only to download missing files. The folders
searched are listed by :func:`data_roots`. ``$DDPM_DATA_MIRROR`` names a mirror tried before
torchvision's own (a URL or folder laid out like a data root: ``MNIST/raw/<files>``). The 2-D
toy sets include samples of :func:`ddpm_lib.mixture.default_gmm`, the mixture whose exact score
the chapters compare with.
"""

from __future__ import annotations

import gzip
import math
import os
import pickle
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .mixture import default_gmm
from .utils import fetch_url

DATA_ROOT_ENV = "DDPM_DATA_ROOT"
# A mirror of the datasets, tried before torchvision's own when a download is asked for: an
# http(s):// or file:// URL, or a folder, laid out like a data root (MNIST/raw/<files>,
# FashionMNIST/raw/<files>, cifar-10-batches-py/<files>). A local copy served by
# `python -m http.server` is one (tools/colab_check.py uses it); so is a lab's file server.
DATA_MIRROR_ENV = "DDPM_DATA_MIRROR"

IMAGE_SHAPES: dict[str, tuple[int, int, int]] = {
    "mnist": (1, 28, 28),
    "fashion_mnist": (1, 28, 28),
    "cifar10": (3, 32, 32),
}
_ALIASES = {
    "fashion-mnist": "fashion_mnist",
    "fashionmnist": "fashion_mnist",
    "cifar-10": "cifar10",
}
SPLITS = ("train", "test")
NUM_CLASSES = 10


class DatasetNotFoundError(FileNotFoundError):
    """The files of a dataset split are in none of the searched folders and were not downloaded."""


@dataclass(frozen=True)
class _Spec:
    title: str  # as printed in messages
    folder: str  # where torchvision puts the files, relative to a data root
    files: dict[str, tuple[str, ...]]  # split -> file names (IDX names without ".gz")
    torchvision_class: str
    idx: bool  # IDX files (may be gzipped) rather than CIFAR pickle batches


_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_CIFAR_FILES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
_SPECS = {
    "mnist": _Spec("MNIST", "MNIST/raw", _IDX_FILES, "MNIST", True),
    "fashion_mnist": _Spec("Fashion-MNIST", "FashionMNIST/raw", _IDX_FILES, "FashionMNIST", True),
    "cifar10": _Spec("CIFAR-10", "cifar-10-batches-py", _CIFAR_FILES, "CIFAR10", False),
}


def canonical_name(name: str) -> str:
    """Map a dataset name or alias, in any case, to its key in ``IMAGE_SHAPES``."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in IMAGE_SHAPES:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(IMAGE_SHAPES)}")
    return key


def default_data_root() -> Path:
    """Where downloads go when neither ``root`` nor ``$DDPM_DATA_ROOT`` is given."""
    return Path.home() / ".cache" / "ddpm_lib" / "data"


def data_roots(root: str | Path | None = None) -> list[Path]:
    """The folders searched for data, in order, as absolute paths.

    An explicit ``root`` is the only folder searched: asking for a place means data from
    anywhere else is never read instead (tests use this to hide the offline copies). Otherwise:
    ``$DDPM_DATA_ROOT`` if set, then :func:`default_data_root`, then every existing offline copy
    ``A/shared/data`` where ``A`` is the current directory, the package directory or any of
    their ancestors (so ``<repo>/../shared/data`` is found). Downloads go to the first entry.
    """
    if root is not None:
        return [Path(root).expanduser().resolve()]
    roots = []
    env = os.environ.get(DATA_ROOT_ENV)
    if env:
        roots.append(Path(env).expanduser().resolve())
    roots.append(default_data_root().resolve())
    for start in (Path.cwd().resolve(), Path(__file__).resolve().parent):
        for ancestor in (start, *start.parents):
            shared = ancestor / "shared" / "data"
            if shared.is_dir() and shared not in roots:
                roots.append(shared)
    return roots


@dataclass
class ImageData:
    """A labelled image split: ``images`` uint8 [N, C, H, W] in 0..255, ``labels`` int64 [N].

    ``source`` is the folder the files were read from; ``split`` says which part of the data
    this is ("train", "test", or e.g. "test[subset of 9000]").
    """

    images: Tensor
    labels: Tensor
    name: str
    split: str
    source: Path

    def __post_init__(self) -> None:
        x, y = self.images, self.labels
        if (
            x.dtype != torch.uint8
            or x.ndim != 4
            or y.dtype != torch.int64
            or y.shape != x.shape[:1]
        ):
            raise ValueError(
                "need uint8 images [N, C, H, W] and int64 labels [N], got "
                f"{x.dtype} {tuple(x.shape)} and {y.dtype} {tuple(y.shape)}"
            )

    def __len__(self) -> int:
        return self.images.shape[0]

    def to_model_range(self) -> Tensor:
        """The images as float32 [N, C, H, W] in [-1, 1]."""
        return to_model_range(self.images)

    def subset(self, indices: Tensor | Sequence[int]) -> ImageData:
        """The images and labels at ``indices`` (1-D, int), in that order."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        if idx.ndim != 1:
            raise ValueError(f"indices must be 1-D, got shape {tuple(idx.shape)}")
        split = f"{self.split}[subset of {len(idx)}]"
        return ImageData(self.images[idx], self.labels[idx], self.name, split, self.source)


def to_model_range(x: Tensor) -> Tensor:
    """uint8 pixels in 0..255 (any shape) -> float32 in [-1, 1], as x / 127.5 - 1."""
    if x.dtype != torch.uint8:
        raise TypeError(f"expected uint8 pixels, got {x.dtype}")
    return x.to(torch.float32) / 127.5 - 1.0


def from_model_range(x: Tensor) -> Tensor:
    """Float values in [-1, 1] (any shape) -> uint8 in 0..255, clamped and rounded to nearest."""
    if not torch.isfinite(x).all():
        raise ValueError("cannot convert non-finite values (NaN or inf) to pixels")
    return ((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)


def holdout_split(n: int, n_holdout: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Split ``range(n)`` by a seeded random permutation into (train, holdout) indices.

    Both are sorted int64 tensors, of sizes ``n - n_holdout`` and ``n_holdout``, disjoint and
    together covering ``range(n)``; the same seed always gives the same split.
    """
    if not 0 <= n_holdout < n:
        raise ValueError(f"n_holdout must be in [0, n) = [0, {n}), got {n_holdout}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[n_holdout:].sort().values, perm[:n_holdout].sort().values


# ----------------------------------------------------------------------------- file formats

_IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (gzipped if its name ends in ".gz"): an array of the shape in its header.

    Raises ValueError naming the file when the magic number, header or data length is wrong.
    """
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise ValueError(f"{path}: truncated or corrupt gzip file ({err})") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise ValueError(f"{path}: not an IDX file (magic number {raw[:4].hex() or 'missing'})")
    header = 4 + 4 * raw[3]
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{raw[3]}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = header + math.prod(dims) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(
            f"{path}: {len(raw)} bytes, but its header (shape {dims}, {dtype}) needs "
            f"{expected}; the file is truncated or corrupt"
        )
    array = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="))  # a native-endian, writable copy


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 pickle batch -> (uint8 [N, 3, 32, 32], int64 [N]).

    Each row of b"data" holds the R, G and B planes in turn, each 32x32 row-major.
    Unpickling runs code from the file, so read only files from a source you trust.
    """
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        data = np.asarray(batch[b"data"])
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: not a readable CIFAR-10 batch ({err!r})") from err
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: b'data' must be uint8 [N, 3072], got {data.dtype} {data.shape}")
    if labels.shape != data.shape[:1]:
        raise ValueError(f"{path}: {len(labels)} labels for {len(data)} images")
    return data.reshape(-1, 3, 32, 32), labels


def _find_file(folder: Path, name: str, idx: bool) -> Path | None:
    # IDX files may be gzipped (as downloaded) or extracted (torchvision keeps both).
    for candidate in (folder / name, folder / f"{name}.gz") if idx else (folder / name,):
        if candidate.is_file():
            return candidate
    return None


def _read_split(spec: _Spec, paths: list[Path]) -> tuple[Tensor, Tensor]:
    if spec.idx:
        images, labels = read_idx(paths[0]), read_idx(paths[1])
        if images.ndim != 3 or images.dtype != np.uint8 or labels.shape != images.shape[:1]:
            raise ValueError(
                f"{paths[0]} and {paths[1]}: need uint8 images [N, H, W] and N "
                f"labels, got {images.dtype} {images.shape} and {labels.shape}"
            )
        images = images[:, None]
    else:
        batches = [_read_cifar_batch(p) for p in paths]
        images = np.concatenate([b[0] for b in batches])
        labels = np.concatenate([b[1] for b in batches])
    if labels.size and not (0 <= labels.min() and labels.max() < NUM_CLASSES):
        raise ValueError(f"{paths[-1]}: labels outside 0..{NUM_CLASSES - 1}")
    return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))


def _locate(spec: _Spec, split: str, roots: list[Path]) -> list[Path] | None:
    for root in roots:
        found = [_find_file(root / spec.folder, f, spec.idx) for f in spec.files[split]]
        if all(found):
            return found
    return None


def _mirror_url(mirror: str) -> str:
    """``$DDPM_DATA_MIRROR`` as a base URL ending in "/": URLs as given, folders as file://."""
    if "://" not in mirror:
        mirror = Path(mirror).expanduser().resolve().as_uri()
    return mirror.rstrip("/") + "/"


def _download_from_mirror(spec: _Spec, split: str, root: Path, mirror: str) -> None:
    """Fetch the split's files (only those) from ``mirror`` into ``root``/<folder>."""
    base = _mirror_url(mirror) + spec.folder + "/"
    folder = root / spec.folder
    folder.mkdir(parents=True, exist_ok=True)
    for name in spec.files[split]:
        if _find_file(folder, name, spec.idx) is not None:
            continue
        tried = []
        for candidate in (f"{name}.gz", name) if spec.idx else (name,):
            try:
                fetch_url(base + candidate, folder / candidate)
                break
            except OSError as err:  # URLError and HTTPError are OSErrors
                tried.append(f"{base + candidate}: {err}")
        else:
            raise OSError("the mirror does not serve " + "; ".join(tried))
    print(f"Downloaded the {spec.title} {split} split from {base} into {folder}")


def _download(spec: _Spec, split: str, root: Path) -> None:
    """Download the split into ``root``: from ``$DDPM_DATA_MIRROR`` first, else torchvision."""
    mirror = os.environ.get(DATA_MIRROR_ENV)
    mirror_error = None
    if mirror:
        try:
            _download_from_mirror(spec, split, root, mirror)
            return
        except OSError as err:
            mirror_error = err
            print(f"{DATA_MIRROR_ENV}={mirror} failed ({err}); trying torchvision's mirrors")
    import torchvision.datasets  # slow import, only needed here

    cls = getattr(torchvision.datasets, spec.torchvision_class)
    try:
        cls(str(root), train=split == "train", download=True)
    except Exception as err:
        if mirror_error is None:
            raise
        raise RuntimeError(f"{DATA_MIRROR_ENV}: {mirror_error}; torchvision: {err!r}") from err


def _not_found_message(key: str, spec: _Spec, split: str, roots: list[Path]) -> str:
    names = [f"{f}.gz (or extracted: {f})" if spec.idx else f for f in spec.files[split]]
    lines = [f"The {spec.title} {split} split was not found. Files needed:"]
    lines += [f"  {n}" for n in names] + ["Looked in:"]
    for root in roots:
        folder = root / spec.folder
        missing = [f for f in spec.files[split] if _find_file(folder, f, spec.idx) is None]
        state = "folder does not exist" if not folder.is_dir() else "missing " + ", ".join(missing)
        lines.append(f"  {folder}  ({state})")
    lines += [
        "To provide them:",
        f"  - when online, pass download=True (--download on the command line) to fetch them "
        f"with torchvision (or from ${DATA_MIRROR_ENV}, a mirror laid out like a data root) "
        f"into {roots[0]};",
        f"  - or set {DATA_ROOT_ENV} to a folder holding {spec.folder}/<files>;",
        f"  - or copy the files into {spec.folder}/ under one of the folders above.",
    ]
    if key == "mnist" and split == "train":
        lines += [
            "Only the MNIST test split (10,000 digits) is available offline. The book trains on",
            "9,000 of them and holds out 1,000: load split='test' and pick indices with",
            "holdout_split(10_000, 1_000), then ImageData.subset(...).",
        ]
    return "\n".join(lines)


def load_image_dataset(
    name: str, split: str = "train", root: str | Path | None = None, download: bool = False
) -> ImageData:
    """Load an image dataset split as uint8 [N, C, H, W] images and int64 [N] labels.

    ``name`` is "mnist", "fashion_mnist" or "cifar10" (aliases accepted), ``split`` is "train"
    or "test". The folders of :func:`data_roots` (``root``) are searched in order; the first
    holding every file of the split is used. If none does and ``download`` is true, the split is
    downloaded into the first folder: from ``$DDPM_DATA_MIRROR`` when it is set, else (or when
    that fails) by torchvision. Otherwise DatasetNotFoundError says what is
    missing, where we looked and how to provide the files.
    """
    key = canonical_name(name)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    spec, roots = _SPECS[key], data_roots(root)
    paths = _locate(spec, split, roots)
    if paths is None and download:
        try:
            _download(spec, split, roots[0])
        except Exception as err:  # no network, HTTP error, disk full...: all end the same way
            failed = f"Downloading {spec.title} into {roots[0]} failed: {err!r}\n"
            raise DatasetNotFoundError(
                failed + _not_found_message(key, spec, split, roots)
            ) from err
        paths = _locate(spec, split, roots)
    if paths is None:
        raise DatasetNotFoundError(_not_found_message(key, spec, split, roots))
    images, labels = _read_split(spec, paths)
    if (shape := tuple(images.shape[1:])) != IMAGE_SHAPES[key]:
        raise ValueError(f"{paths[0]}: images {shape}, expected {IMAGE_SHAPES[key]}")
    return ImageData(images, labels, key, split, paths[0].parent)


# ----------------------------------------------------------------------------- 2-D toy data


TOY_DATASETS = ("moons", "swiss_roll", "gmm")
_MOONS_NOISE = 0.1
# Moments of the noiseless moons for t ~ U[0, pi] and either moon with probability 1/2:
# x has mean 1/2 and variance 1/2 + 1/4; y has mean 1/4 and variance 1/2 - (2/pi)^2 +
# (2/pi - 1/4)^2 (within-moon plus between-moon). The noise adds its variance to both.
_MOONS_MEAN = (0.5, 0.25)
_MOONS_STD = (
    math.sqrt(0.75 + _MOONS_NOISE**2),
    math.sqrt(0.5 - (2 / math.pi) ** 2 + (2 / math.pi - 0.25) ** 2 + _MOONS_NOISE**2),
)
_ROLL_T = (1.5 * math.pi, 4.5 * math.pi)
_ROLL_NOISE = 0.3
# For t ~ U[a, b] = U[1.5 pi, 4.5 pi] the spiral (t cos t, t sin t) has mean (2, 2 / (3 pi))
# (integrate by parts) and E|x|^2 = E[t^2] = (b^3 - a^3) / (3 (b - a)); subtracting the mean and
# dividing by sqrt(E[t^2] / 2) gives coordinates of mean 0 and standard deviation about 1.
_ROLL_MEAN = (2.0, 2.0 / (3.0 * math.pi))
_ROLL_SCALE = math.sqrt((_ROLL_T[1] ** 3 - _ROLL_T[0] ** 3) / (6 * (_ROLL_T[1] - _ROLL_T[0])))


def toy_dataset(name: str, n: int, generator: torch.Generator | None = None) -> Tensor:
    """``n`` samples [n, 2] float32 of a 2-D toy distribution, of roughly unit scale.

    "moons": two interleaved half circles with Gaussian noise, standardised with their exact
    moments; "swiss_roll": a noisy spiral; "gmm": samples of :func:`default_gmm`.
    """
    if name not in TOY_DATASETS:
        raise ValueError(f"unknown toy dataset {name!r}; valid names: {', '.join(TOY_DATASETS)}")
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    if name == "gmm":
        return default_gmm().sample(n, generator)
    u = torch.rand(n, generator=generator)
    noise = torch.randn(n, 2, generator=generator)
    if name == "moons":
        t = math.pi * u
        upper = torch.rand(n, generator=generator) < 0.5
        x = torch.where(upper, t.cos(), 1.0 - t.cos())
        y = torch.where(upper, t.sin(), 0.5 - t.sin())
        points = torch.stack([x, y], dim=1) + _MOONS_NOISE * noise
        return (points - torch.tensor(_MOONS_MEAN)) / torch.tensor(_MOONS_STD)
    t = _ROLL_T[0] + (_ROLL_T[1] - _ROLL_T[0]) * u
    points = torch.stack([t * t.cos(), t * t.sin()], dim=1) + _ROLL_NOISE * noise
    return (points - torch.tensor(_ROLL_MEAN)) / _ROLL_SCALE
