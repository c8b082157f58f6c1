"""Tests for ddpm_lib.viz: grids, PNG output, schedule plots, trajectories, GIFs, histograms."""

from __future__ import annotations

import matplotlib
import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from ddpm_lib import viz

matplotlib.use("Agg")  # headless tests; the library itself leaves the backend alone


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _linear_betas(t: int = 100) -> torch.Tensor:
    return torch.linspace(1e-4, 0.02, t, dtype=torch.float64)


def test_to_display_maps_minus_one_to_zero_and_one_to_one():
    out = viz.to_display(torch.tensor([-1.0, 0.0, 1.0]))
    assert torch.allclose(out, torch.tensor([0.0, 0.5, 1.0]))


def test_to_display_clamps_values_outside_model_range():
    out = viz.to_display(torch.tensor([-3.0, 2.5]))
    assert out.tolist() == [0.0, 1.0]


def test_make_grid_shape_follows_nrow_and_padding():
    b, c, h, w, nrow, pad = 10, 3, 8, 6, 4, 2
    grid = viz.make_grid(torch.zeros(b, c, h, w), nrow=nrow, padding=pad)
    rows = -(-b // nrow)  # ceil(10 / 4) = 3
    assert grid.shape == (c, rows * (h + pad) + pad, nrow * (w + pad) + pad)


def test_make_grid_places_images_row_major_in_display_range():
    x = torch.full((5, 1, 4, 4), -1.0)
    x[3] = 1.0  # fourth image: second row, first column when nrow=3
    grid = viz.make_grid(x, nrow=3, padding=1)
    assert grid[0, 1 + 5 : 1 + 5 + 4, 1 : 1 + 4].eq(1.0).all()  # tile (1, 0) is white
    assert grid[0, 1:5, 1:5].eq(0.0).all()  # tile (0, 0) is black


def test_make_grid_rejects_3d_input_with_clear_message():
    with pytest.raises(ValueError, match=r"\[B, C, H, W\].*\(3, 8, 8\)"):
        viz.make_grid(torch.zeros(3, 8, 8))


def test_make_grid_rejects_unsupported_channel_count():
    with pytest.raises(ValueError, match="1 \\(grayscale\\) or 3 \\(RGB\\) channels"):
        viz.make_grid(torch.zeros(2, 2, 8, 8))


def test_save_grid_writes_grayscale_png_that_reads_back(tmp_path):
    x = torch.stack([torch.ones(1, 8, 8), -torch.ones(1, 8, 8)])  # white, black
    path = viz.save_grid(x, tmp_path / "grid.png", nrow=8)
    img = mpimg.imread(path)
    assert img.shape == (2 + 8 + 2, 2 + 2 * (8 + 2))  # 2-D: a grayscale PNG
    assert img[2:10, 2:10] == pytest.approx(1.0, abs=1e-3)  # model value 1 -> white
    assert img[2:10, 12:20] == pytest.approx(0.0, abs=1e-3)  # model value -1 -> black


def test_save_grid_writes_rgb_png_for_three_channels(tmp_path):
    path = viz.save_grid(torch.zeros(3, 3, 8, 8), tmp_path / "rgb.png", nrow=3)
    assert mpimg.imread(path).shape == (12, 32, 3)


def test_save_grid_creates_parent_directories_and_returns_path(tmp_path):
    target = tmp_path / "a" / "b" / "grid.png"
    assert viz.save_grid(torch.zeros(1, 1, 4, 4), str(target)) == target
    assert target.is_file()


def test_save_grid_rejects_non_png_path(tmp_path):
    with pytest.raises(ValueError, match=r"\.png"):
        viz.save_grid(torch.zeros(1, 1, 4, 4), tmp_path / "grid.jpg")


def test_show_images_draws_one_titled_grid_on_given_axes():
    _, ax = plt.subplots()
    out = viz.show_images(torch.zeros(6, 1, 8, 8), nrow=3, title="samples", ax=ax)
    assert out is ax
    assert len(ax.images) == 1
    assert ax.images[0].get_array().shape == (22, 32)
    assert ax.get_title() == "samples"


def test_plot_schedules_has_three_axes_with_one_line_per_schedule():
    betas = {"linear": _linear_betas(), "constant": torch.full((100,), 0.01, dtype=torch.float64)}
    fig = viz.plot_schedules(betas)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 3
    assert [len(ax.get_lines()) for ax in fig.axes] == [2, 2, 2]
    legend = fig.axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["linear", "constant"]


def test_plot_schedules_plots_beta_alpha_bar_and_log_snr_against_one_based_t():
    betas = _linear_betas(50)
    fig = viz.plot_schedules({"linear": betas})
    alpha_bar = torch.cumprod(1 - betas, 0)
    expected = [betas, alpha_bar, torch.log(alpha_bar / (1 - alpha_bar))]
    for ax, want in zip(fig.axes, expected, strict=True):
        (line,) = ax.get_lines()
        assert line.get_xdata()[0] == 1 and line.get_xdata()[-1] == 50
        assert torch.allclose(torch.as_tensor(line.get_ydata()), want)


def test_plot_schedules_rejects_two_dimensional_betas():
    with pytest.raises(ValueError, match=r"1-D tensor \[T\]"):
        viz.plot_schedules({"bad": torch.zeros(2, 10, dtype=torch.float64)})


def test_plot_trajectory_has_one_image_per_row_and_step():
    xs = torch.rand(5, 6, 1, 8, 8) * 2 - 1
    steps = [1000, 750, 500, 250, 0]
    fig = viz.plot_trajectory(xs, steps, rows=3, title="reverse")
    assert sum(len(ax.images) for ax in fig.axes) == 3 * 5
    assert [ax.get_title() for ax in fig.axes[:5]] == [f"t={t}" for t in steps]


def test_plot_trajectory_accepts_a_list_and_shows_at_most_four_rows():
    xs = [torch.zeros(6, 3, 8, 8) for _ in range(2)]
    fig = viz.plot_trajectory(xs, [10, 0])
    assert len(fig.axes) == 4 * 2


def test_plot_trajectory_rejects_steps_of_wrong_length():
    with pytest.raises(ValueError, match="2 steps for 3 snapshots"):
        viz.plot_trajectory(torch.zeros(3, 2, 1, 8, 8), [2, 1])


def test_animate_reverse_writes_gif_with_one_frame_per_step(tmp_path):
    frames = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    path = tmp_path / "out" / "reverse.gif"
    viz.animate_reverse(frames, steps=[50, 40, 30, 20, 10, 0], path=path, fps=5)
    with Image.open(path) as gif:
        assert gif.format == "GIF"
        assert gif.n_frames == 6


def test_animate_reverse_grids_batched_frames(tmp_path):
    frames = torch.rand(4, 3, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    anim = viz.animate_reverse(frames, path=tmp_path / "batch.gif")
    assert anim._fig.axes[0].images[0].get_array().shape == (12, 32)
    with Image.open(tmp_path / "batch.gif") as gif:
        assert gif.n_frames == 4


def test_animate_reverse_rejects_non_gif_path(tmp_path):
    with pytest.raises(ValueError, match=r"\.gif.*'.*\.txt'"):
        viz.animate_reverse(torch.zeros(2, 1, 8, 8), path=tmp_path / "anim.txt")
    assert not (tmp_path / "anim.txt").exists()


def test_animate_reverse_rejects_three_dimensional_frames():
    with pytest.raises(ValueError, match=r"\[S, C, H, W\] or \[S, B, C, H, W\]"):
        viz.animate_reverse(torch.zeros(2, 8, 8))


def test_plot_histogram_uses_requested_bins_on_given_axes():
    _, ax = plt.subplots()
    out = viz.plot_histogram(torch.randn(1, 1, 16, 16), ax=ax, bins=20)
    assert out is ax
    assert len(ax.patches) == 20


def test_frame_slider_holds_one_png_per_frame_and_shows_only_the_first():
    from ddpm_lib.viz import frame_slider

    figs = []
    for k in range(3):
        fig, ax = plt.subplots(figsize=(1, 1))
        ax.plot([0, k])
        figs.append(fig)
    html = frame_slider(figs, ["t = 1", "t = 2", "t = 3"], name="step").data
    assert html.count('<img class="ddpm-frame"') == 3
    assert html.count('style="display:none"') == 2  # frames 2 and 3 wait for the slider
    assert 'type="range" min="0" max="2"' in html and "<output>t = 1</output>" in html
    assert not plt.get_fignums()  # every figure was rendered once and closed


def test_frame_slider_needs_one_label_per_frame():
    from ddpm_lib.viz import frame_slider

    fig, _ = plt.subplots()
    with pytest.raises(ValueError, match="one label per frame"):
        frame_slider([fig], ["a", "b"])
    plt.close(fig)


def test_plot_ladder_shows_panels_in_ascending_fd_with_models_highlighted():
    x = torch.zeros(4, 1, 8, 8)
    panels = [("noise", 1.7, x), ("model", 0.8, x), ("real", 0.06, x)]
    fig = viz.plot_ladder(panels, highlight=["model"], ncols=2)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["real\nFD 0.06", "model\nFD 0.8", "noise\nFD 1.7"]
    bold = [ax.title.get_fontweight() for ax in fig.axes if ax.get_title()]
    assert bold == ["normal", "bold", "normal"]
    plt.close(fig)


def test_plot_fd_vs_evaluations_draws_one_curve_per_model_and_sampler_kind():
    def entry(*names):
        return {"samplers": {n: {"network_evaluations": int(n.split("-")[1]), "fd": 1.0}
                             for n in names}}  # fmt: skip

    models = {"flow": entry("euler-4", "euler-8", "heun-2"), "ddpm": entry("ddim-4", "ddim-8")}
    comparison = {"n": 10, "floor_fd": 0.1, "models": models}
    ax = viz.plot_fd_vs_evaluations(comparison)
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels == ["flow: Euler", "flow: Heun", "ddpm: DDIM", "real-data floor"]
    plt.close(ax.figure)
