"""Tests for ddpm_lib.data: file formats, root discovery, error messages and the toy sets."""

from __future__ import annotations

import functools
import gzip
import http.server
import pickle
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch

from ddpm_lib.data import (
    DATA_MIRROR_ENV,
    DATA_ROOT_ENV,
    IMAGE_SHAPES,
    TOY_DATASETS,
    DatasetNotFoundError,
    ImageData,
    canonical_name,
    data_roots,
    from_model_range,
    holdout_split,
    load_image_dataset,
    to_model_range,
    toy_dataset,
)

# ----------------------------------------------------------------------------- helpers


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 IDX file (gzipped when the name ends in .gz)."""
    raw = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    raw += array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)


def write_tiny_fashion(root: Path, gz: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """A 5-image Fashion-MNIST test split in torchvision's layout; returns (images, labels)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    ext = ".gz" if gz else ""
    write_idx(root / "FashionMNIST/raw" / f"t10k-images-idx3-ubyte{ext}", images)
    write_idx(root / "FashionMNIST/raw" / f"t10k-labels-idx1-ubyte{ext}", labels)
    return images, labels


def write_cifar_batch(path: Path, data: np.ndarray, labels: list[int]) -> None:
    """A batch in CIFAR-10's python format: b"data" uint8 [N, 3072], b"labels" list of ints."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump({b"data": data, b"labels": labels}, f, protocol=2)


def cifar_row(r: np.ndarray, g: np.ndarray, b: np.ndarray) -> np.ndarray:
    """One CIFAR row: the R, G and B 32x32 planes, each flattened row-major."""
    return np.concatenate([r.ravel(), g.ravel(), b.ravel()]).astype(np.uint8)


@pytest.fixture(autouse=True)
def no_mirror(monkeypatch: pytest.MonkeyPatch) -> None:
    """A $DDPM_DATA_MIRROR of the person running the tests is not used; tests set their own."""
    monkeypatch.delenv(DATA_MIRROR_ENV, raising=False)


@pytest.fixture
def shared_root(monkeypatch: pytest.MonkeyPatch) -> Path:
    """The offline data folder; CI keeps it at <repo>/../shared/data, so missing it is a failure."""
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)
    shared = [r for r in data_roots() if r.parts[-2:] == ("shared", "data")]
    assert shared, f"no shared/data folder found; searched: {data_roots()}"
    return shared[0]


@pytest.fixture
def only_shared(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, shared_root: Path) -> Path:
    """Empty $DDPM_DATA_ROOT and home, so that root=None finds data only in the shared folder."""
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path / "env"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return shared_root


# ----------------------------------------------------------------------------- real data


def test_offline_mnist_test_split_loads(shared_root: Path) -> None:
    data = load_image_dataset("mnist", "test", root=shared_root)
    assert data.images.shape == (10_000, 1, 28, 28) and data.images.dtype == torch.uint8
    assert data.labels.dtype == torch.int64
    assert set(data.labels.tolist()) == set(range(10))
    assert data.source == (shared_root / "MNIST" / "raw").resolve()


@pytest.mark.parametrize(("split", "n"), [("train", 60_000), ("test", 10_000)])
def test_fashion_mnist_splits_load(shared_root: Path, split: str, n: int) -> None:
    data = load_image_dataset("fashion_mnist", split, root=shared_root)
    assert data.images.shape == (n, 1, 28, 28) and data.images.dtype == torch.uint8
    assert data.labels.shape == (n,) and set(data.labels.tolist()) == set(range(10))


def test_default_search_reads_the_shared_copy(only_shared: Path) -> None:
    assert load_image_dataset("mnist", "test").source == only_shared / "MNIST" / "raw"


def test_mnist_train_offline_points_to_test_split_and_holdout(only_shared: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as info:
        load_image_dataset("mnist", "train")
    message = str(info.value)
    assert "Only the MNIST test split" in message
    assert "split='test'" in message and "holdout_split" in message
    assert str(only_shared / "MNIST" / "raw") in message


# ----------------------------------------------------------------------------- root discovery


def test_explicit_root_is_the_only_place_searched(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path / "env"))
    assert data_roots(tmp_path) == [tmp_path.resolve()]


def test_default_roots_are_env_then_home_cache_then_shared(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, shared_root: Path
) -> None:
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path / "env"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    roots = data_roots()
    assert roots[:2] == [tmp_path / "env", tmp_path / "home/.cache/ddpm_lib/data"]
    assert shared_root in roots[2:]
    assert all(r.parts[-2:] == ("shared", "data") for r in roots[2:])


def test_shared_data_is_found_beside_an_ancestor_of_the_working_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "shared" / "data").mkdir(parents=True)
    (tmp_path / "repo" / "sub").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "repo" / "sub")
    assert tmp_path.resolve() / "shared" / "data" in data_roots()


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("name", "folder", "files"),
    [
        ("mnist", "MNIST/raw", ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]),
        ("fashion_mnist", "FashionMNIST/raw", ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]),
        ("cifar10", "cifar-10-batches-py", ["test_batch"]),
    ],
)
def test_missing_dataset_message_names_files_places_and_remedies(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str, folder: str, files: list[str]
) -> None:
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path))
    with pytest.raises(DatasetNotFoundError) as info:
        load_image_dataset(name, "test", root=tmp_path)
    message = str(info.value)
    assert all(f in message for f in files)
    assert str(tmp_path.resolve() / folder) in message
    assert "download=True" in message and DATA_ROOT_ENV in message and "copy the files" in message


def test_failed_download_raises_dataset_not_found(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import torchvision.datasets

    def offline(*args: object, **kwargs: object) -> None:
        raise URLError("no network")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    with pytest.raises(DatasetNotFoundError, match="failed") as info:
        load_image_dataset("fashion_mnist", "test", root=tmp_path, download=True)
    assert isinstance(info.value.__cause__, URLError)


def test_download_goes_to_the_root_and_is_then_read(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import torchvision.datasets

    written: dict[str, np.ndarray] = {}

    def fake_download(root: str, train: bool, download: bool) -> None:
        # Stands in for torchvision, which writes <root>/FashionMNIST/raw/<files>.
        assert Path(root) == tmp_path.resolve() and not train and download
        written["images"], written["labels"] = write_tiny_fashion(Path(root))

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", fake_download)
    data = load_image_dataset("fashion_mnist", "test", root=tmp_path, download=True)
    assert np.array_equal(data.images[:, 0].numpy(), written["images"])
    assert np.array_equal(data.labels.numpy(), written["labels"])


def no_torchvision(*args: object, **kwargs: object) -> None:
    raise AssertionError("torchvision was asked to download although the mirror has the files")


@pytest.fixture
def http_mirror(tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    """A tiny Fashion-MNIST test split served over HTTP on 127.0.0.1: (URL, paths requested)."""
    folder = tmp_path / "served"
    write_tiny_fashion(folder)
    requested: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            requested.append(self.path)

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(folder))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", requested
    finally:
        server.shutdown()
        server.server_close()


def test_download_fetches_the_split_from_the_mirror_folder_before_torchvision(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import torchvision.datasets

    images, labels = write_tiny_fashion(tmp_path / "mirror")
    monkeypatch.setenv(DATA_MIRROR_ENV, str(tmp_path / "mirror"))
    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", no_torchvision)
    data = load_image_dataset("fashion_mnist", "test", root=tmp_path / "root", download=True)
    assert np.array_equal(data.images[:, 0].numpy(), images)
    assert data.source == (tmp_path / "root" / "FashionMNIST" / "raw").resolve()


def test_download_from_an_http_mirror_asks_only_for_the_files_of_the_split(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, http_mirror: tuple[str, list[str]]
) -> None:
    import torchvision.datasets

    url, requested = http_mirror
    monkeypatch.setenv(DATA_MIRROR_ENV, url)
    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", no_torchvision)
    data = load_image_dataset("fashion_mnist", "test", root=tmp_path / "root", download=True)
    assert len(data) == 5
    assert requested == [
        "/FashionMNIST/raw/t10k-images-idx3-ubyte.gz",
        "/FashionMNIST/raw/t10k-labels-idx1-ubyte.gz",
    ]
    assert not list((tmp_path / "root").rglob("*.part"))  # no half-written file left


def test_a_mirror_without_the_files_falls_back_to_torchvision(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import torchvision.datasets

    calls: list[str] = []

    def fake_download(root: str, train: bool, download: bool) -> None:
        calls.append(root)
        write_tiny_fashion(Path(root))

    (tmp_path / "empty_mirror").mkdir()
    monkeypatch.setenv(DATA_MIRROR_ENV, str(tmp_path / "empty_mirror"))
    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", fake_download)
    data = load_image_dataset("fashion_mnist", "test", root=tmp_path / "root", download=True)
    assert len(data) == 5 and calls == [str((tmp_path / "root").resolve())]


def test_when_mirror_and_torchvision_both_fail_the_error_names_both(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import torchvision.datasets

    def offline(*args: object, **kwargs: object) -> None:
        raise URLError("no network")

    (tmp_path / "empty_mirror").mkdir()
    monkeypatch.setenv(DATA_MIRROR_ENV, str(tmp_path / "empty_mirror"))
    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    with pytest.raises(DatasetNotFoundError) as info:
        load_image_dataset("fashion_mnist", "test", root=tmp_path / "root", download=True)
    message = str(info.value)
    assert DATA_MIRROR_ENV in message and "t10k-images-idx3-ubyte.gz" in message
    assert "no network" in message and "Files needed:" in message


def test_download_true_without_network_gives_the_dataset_not_found_message(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The real torchvision download, offline: every host name fails to resolve, as in a
    # runtime without internet. The reader gets the library's message, not a raw traceback.
    def no_dns(*args: object, **kwargs: object) -> None:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    with pytest.raises(DatasetNotFoundError) as info:
        load_image_dataset("mnist", "test", root=tmp_path, download=True)
    message = str(info.value)
    assert message.startswith(f"Downloading MNIST into {tmp_path.resolve()} failed")
    assert "t10k-images-idx3-ubyte" in message and "To provide them:" in message


def test_unknown_dataset_name_lists_valid_names() -> None:
    with pytest.raises(ValueError) as info:
        load_image_dataset("imagenet")
    assert all(name in str(info.value) for name in IMAGE_SHAPES)


def test_bad_split_lists_valid_splits(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="train, test"):
        load_image_dataset("mnist", "validation", root=tmp_path)


@pytest.mark.parametrize(
    ("alias", "key"),
    [
        ("MNIST", "mnist"),
        ("Fashion-MNIST", "fashion_mnist"),
        ("FashionMNIST", "fashion_mnist"),
        ("CIFAR-10", "cifar10"),
        ("cifar10", "cifar10"),
    ],
)
def test_dataset_aliases_are_case_insensitive(alias: str, key: str) -> None:
    assert canonical_name(alias) == key


# ----------------------------------------------------------------------------- file formats


def test_uncompressed_idx_loads_like_gzipped(tmp_path: Path) -> None:
    images, labels = write_tiny_fashion(tmp_path / "gz", gz=True)
    write_tiny_fashion(tmp_path / "raw", gz=False)
    from_gz = load_image_dataset("fashion_mnist", "test", root=tmp_path / "gz")
    from_raw = load_image_dataset("fashion_mnist", "test", root=tmp_path / "raw")
    assert np.array_equal(from_gz.images[:, 0].numpy(), images)
    assert torch.equal(from_raw.images, from_gz.images)
    assert torch.equal(from_raw.labels, from_gz.labels)
    assert from_gz.labels.tolist() == labels.tolist()


@pytest.mark.parametrize("damage", ["cut_gzip_stream", "cut_idx_data", "bad_magic"])
def test_corrupt_idx_file_raises_value_error_naming_it(tmp_path: Path, damage: str) -> None:
    write_tiny_fashion(tmp_path)
    path = tmp_path / "FashionMNIST/raw/t10k-images-idx3-ubyte.gz"
    raw = gzip.decompress(path.read_bytes())
    if damage == "cut_gzip_stream":
        path.write_bytes(path.read_bytes()[:-20])
    elif damage == "cut_idx_data":
        path.write_bytes(gzip.compress(raw[:-28]))  # one image row short
    else:
        path.write_bytes(gzip.compress(b"\x00\x00\x99\x03" + raw[4:]))
    with pytest.raises(ValueError) as info:
        load_image_dataset("fashion_mnist", "test", root=tmp_path)
    assert str(path.resolve()) in str(info.value)


def test_cifar_train_batches_load_in_order(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, size=(5, 4, 3072), dtype=np.uint8)
    labels = [[(4 * b + i) % 10 for i in range(4)] for b in range(5)]
    for b in range(5):
        write_cifar_batch(tmp_path / f"cifar-10-batches-py/data_batch_{b + 1}", data[b], labels[b])
    loaded = load_image_dataset("cifar10", "train", root=tmp_path)
    assert loaded.images.shape == (20, 3, 32, 32) and loaded.images.dtype == torch.uint8
    assert np.array_equal(loaded.images.numpy(), data.reshape(20, 3, 32, 32))
    assert loaded.labels.tolist() == sum(labels, [])


def test_cifar_planes_are_red_green_blue_row_major(tmp_path: Path) -> None:
    full, zero = np.full((32, 32), 255), np.zeros((32, 32))
    rows, cols = np.mgrid[0:32, 0:32]
    data = np.stack([cifar_row(full, zero, zero), cifar_row(rows, cols, rows + cols)])
    write_cifar_batch(tmp_path / "cifar-10-batches-py/test_batch", data, [7, 2])
    loaded = load_image_dataset("cifar-10", "test", root=tmp_path)
    red, ramp = loaded.images[0], loaded.images[1].long()
    assert (red[0] == 255).all() and (red[1:] == 0).all()
    assert torch.equal(ramp[0], torch.from_numpy(rows)) and torch.equal(
        ramp[1], torch.from_numpy(cols)
    )
    assert loaded.labels.tolist() == [7, 2]


# ----------------------------------------------------------------------------- pixel range


def test_to_model_range_maps_0_and_255_to_minus_one_and_one() -> None:
    x = to_model_range(torch.tensor([0, 255], dtype=torch.uint8))
    assert x.dtype == torch.float32 and x.tolist() == [-1.0, 1.0]


def test_from_model_range_inverts_to_model_range_exactly() -> None:
    pixels = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(from_model_range(to_model_range(pixels)), pixels)


def test_from_model_range_clamps_and_rounds() -> None:
    x = torch.tensor([-3.0, 1.5, 100.4 / 127.5 - 1, 100.6 / 127.5 - 1])
    assert from_model_range(x).tolist() == [0, 255, 100, 101]


def test_to_model_range_rejects_non_uint8() -> None:
    with pytest.raises(TypeError):
        to_model_range(torch.zeros(3))


def test_image_data_subset_keeps_pairs_and_labels_the_split() -> None:
    images = torch.arange(6, dtype=torch.uint8).view(6, 1, 1, 1)
    data = ImageData(images, torch.arange(6) + 10, "mnist", "test", Path("."))
    sub = data.subset(torch.tensor([4, 1]))
    assert sub.images.flatten().tolist() == [4, 1] and sub.labels.tolist() == [14, 11]
    assert sub.split == "test[subset of 2]" and len(sub) == 2


# ----------------------------------------------------------------------------- holdout split


def test_holdout_split_is_disjoint_and_covers_all() -> None:
    train, holdout = holdout_split(100, 10)
    assert len(train) == 90 and len(holdout) == 10
    assert sorted(train.tolist() + holdout.tolist()) == list(range(100))


def test_holdout_split_is_the_same_for_the_same_seed() -> None:
    train_a, holdout_a = holdout_split(100, 10, seed=3)
    train_b, holdout_b = holdout_split(100, 10, seed=3)
    assert torch.equal(train_a, train_b) and torch.equal(holdout_a, holdout_b)


def test_holdout_split_differs_for_another_seed() -> None:
    assert not torch.equal(holdout_split(100, 10, seed=0)[1], holdout_split(100, 10, seed=1)[1])


@pytest.mark.parametrize("n_holdout", [-1, 100, 101])
def test_holdout_split_rejects_bad_sizes(n_holdout: int) -> None:
    with pytest.raises(ValueError):
        holdout_split(100, n_holdout)


# ----------------------------------------------------------------------------- toy data


@pytest.mark.parametrize("name", TOY_DATASETS)
def test_toy_dataset_shape_dtype_and_unit_scale(name: str) -> None:
    x = toy_dataset(name, 4000, torch.Generator().manual_seed(0))
    assert x.shape == (4000, 2) and x.dtype == torch.float32 and torch.isfinite(x).all()
    # "Roughly unit scale" is a design band, not an estimate: sampling error at n = 4000 is ~0.02.
    assert (x.mean(0).abs() < 0.5).all()
    assert ((x.std(0) > 0.5) & (x.std(0) < 2.0)).all()


@pytest.mark.parametrize("name", TOY_DATASETS)
def test_toy_dataset_is_fixed_by_the_generator_seed(name: str) -> None:
    def draw(seed: int) -> torch.Tensor:
        return toy_dataset(name, 100, torch.Generator().manual_seed(seed))

    assert torch.equal(draw(0), draw(0)) and not torch.equal(draw(0), draw(1))


def test_toy_dataset_rejects_unknown_name_and_empty_size() -> None:
    with pytest.raises(ValueError, match="moons, swiss_roll, gmm"):
        toy_dataset("spiral", 10)
    with pytest.raises(ValueError):
        toy_dataset("moons", 0)
