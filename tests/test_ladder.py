"""The calibration ladder of the Fréchet distance (ddpm_lib.evaluation.ladder)."""

from __future__ import annotations

import json

import pytest
import torch

from ddpm_lib.cli import main
from ddpm_lib.data import load_image_dataset
from ddpm_lib.evaluation.evaluate import find_classifier, load_classifier
from ddpm_lib.evaluation.ladder import (
    RUNGS,
    Rung,
    calibration_ladder,
    ladder_panels,
    perturb,
    place_on_ladder,
    plot_on_ladder,
)
from ddpm_lib.evaluation.metrics import extract_features
from ddpm_lib.training.pretrained import find_checkpoint


@pytest.fixture(scope="module")
def real():
    """2,000 + 2,000 real Fashion-MNIST test images and the shipped classifier's features."""
    images = load_image_dataset("fashion_mnist", "test").to_model_range()
    net, _ = load_classifier(find_classifier("fashion_mnist"), "cpu")

    def features(x):
        return extract_features(net, x)

    return images[:2000], features(images[2000:4000]), features


def test_every_rung_keeps_the_images_on_the_8_bit_grid_in_range():
    x = torch.rand(4, 1, 28, 28) * 2 - 1
    gen = torch.Generator().manual_seed(0)
    for rung in RUNGS:
        out = perturb(x, rung, gen)
        levels = (out + 1) * 127.5
        assert out.shape == x.shape and out.min() >= -1 and out.max() <= 1
        assert torch.allclose(levels, levels.round(), atol=1e-4), rung.label


def test_each_family_of_rungs_is_monotone_in_its_strength(real):
    floor, reference, features = real
    ladder = calibration_ladder(floor, reference, features)
    fd = {(r["family"], r["strength"]): r["fd"] for r in ladder}
    for family in ("noise", "blur"):
        steps = sorted((s, v) for (f, s), v in fd.items() if f == family)
        assert [v for _, v in steps] == sorted(v for _, v in steps), family


def test_the_ladder_is_deterministic_for_a_seed(real):
    floor, reference, features = real
    rungs = tuple(r for r in RUNGS if r.family == "noise")[:2]
    a = calibration_ladder(floor[:500], reference, features, rungs=rungs, seed=3)
    b = calibration_ladder(floor[:500], reference, features, rungs=rungs, seed=3)
    assert a == b


def test_a_figure_is_placed_between_the_rungs_around_it():
    ladder = [{"rung": "a", "fd": 0.1}, {"rung": "b", "fd": 0.3}, {"rung": "c", "fd": 2.0}]
    assert place_on_ladder(0.5, ladder) == "between b (0.3) and c (2)"
    assert place_on_ladder(0.05, ladder) == "below a (0.1)"
    assert place_on_ladder(9.0, ladder) == "above c (2)"


def test_an_unknown_perturbation_is_refused():
    with pytest.raises(ValueError, match="unknown perturbation"):
        perturb(torch.zeros(1, 1, 4, 4), Rung("rotate", 1, "x"), torch.Generator())


def test_evaluate_reports_the_ladder_and_where_each_sampler_falls(tmp_path):
    out = tmp_path / "eval.json"
    args = ["evaluate", "--checkpoint", str(find_checkpoint("fashion_mnist")), "--n", "40"]
    args += ["--samplers", "ddim-2", "--elbo-n", "0", "--device", "cpu"]
    args += ["--out", str(out), "--no-progress"]
    assert main(args) == 0
    result = json.loads(out.read_text())
    assert [r["fd"] for r in result["ladder"]] == sorted(r["fd"] for r in result["ladder"])
    assert len(result["ladder"]) == len(RUNGS) + 1
    position = result["samplers"]["ddim-2"]["ladder"]
    assert position.startswith(("between", "above", "below"))


def test_ladder_panels_redraw_each_measured_rung_on_the_given_images():
    x = torch.linspace(-1, 1, 2 * 28 * 28).reshape(2, 1, 28, 28)
    ladder = [
        {"rung": "real images (the floor)", "family": "none", "strength": 0.0, "fd": 0.05},
        {"rung": "noise σ = 2/255", "family": "noise", "strength": 2, "fd": 0.3},
        {"rung": "made up", "family": "other", "strength": 1, "fd": 9.0},
    ]
    panels = ladder_panels(x, ladder, seed=3)
    assert [(label, fd) for label, fd, _ in panels] == [
        ("real (the floor)", 0.05),
        ("noise σ = 2/255", 0.3),
    ]
    assert torch.equal(panels[0][2], x)
    noise = next(r for r in RUNGS if r.label == "noise σ = 2/255")
    assert torch.equal(panels[1][2], perturb(x, noise, torch.Generator().manual_seed(3)))


def test_plot_on_ladder_puts_the_models_among_the_rungs_by_their_fd():
    x = torch.zeros(2, 1, 28, 28)
    ladder = [
        {"rung": "real images (the floor)", "family": "none", "strength": 0.0, "fd": 0.05},
        {"rung": "noise σ = 8/255", "family": "noise", "strength": 8, "fd": 7.9},
    ]
    fig = plot_on_ladder(x, ladder, {"my model": (0.8, x)}, ncols=3)
    titles = [ax.get_title().split("\n")[0] for ax in fig.axes if ax.get_title()]
    assert titles == ["real (the floor)", "my model", "noise σ = 8/255"]
