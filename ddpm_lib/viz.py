"""Pictures for the book: image grids, β schedules, reverse-process trajectories, animations.

Every function takes images in the model's range [-1, 1] (shape ``[B, C, H, W]`` with C = 1 or 3)
and maps them to [0, 1] for display itself. Only matplotlib (and Pillow, which ships with it) is
used; no backend is forced, so notebooks keep their inline display.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.animation import FuncAnimation, PillowWriter
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from PIL import Image
from torch import Tensor

__all__ = [
    "animate_reverse",
    "frame_slider",
    "make_grid",
    "plot_fd_vs_evaluations",
    "plot_histogram",
    "plot_ladder",
    "plot_schedules",
    "plot_trajectory",
    "save_grid",
    "show_images",
    "to_display",
]


def to_display(x: Tensor) -> Tensor:
    """Map model-range values to display range: ``(x + 1) / 2`` clamped to [0, 1].

    x: any shape, usually ``[B, C, H, W]``, values nominally in [-1, 1]. Returns a float32 CPU
    tensor of the same shape with -1 -> 0 and 1 -> 1; values outside are clamped.
    """
    x = torch.as_tensor(x).detach().to("cpu", torch.float32)
    return ((x + 1.0) / 2.0).clamp(0.0, 1.0)


def _check_batch(x: Tensor, who: str) -> Tensor:
    """Return ``x`` as a tensor after checking it is ``[B, C, H, W]`` with C in {1, 3}."""
    x = torch.as_tensor(x)
    if x.ndim != 4:
        raise ValueError(
            f"{who} expects a batch of images of shape [B, C, H, W]; got shape {tuple(x.shape)}"
            + (" (add a batch axis with x.unsqueeze(0))" if x.ndim == 3 else "")
        )
    if x.shape[0] == 0:
        raise ValueError(f"{who} got an empty batch (shape {tuple(x.shape)})")
    if x.shape[1] not in (1, 3):
        raise ValueError(
            f"{who} expects 1 (grayscale) or 3 (RGB) channels in dim 1 of [B, C, H, W]; "
            f"got shape {tuple(x.shape)}"
        )
    return x


def make_grid(x: Tensor, nrow: int = 8, padding: int = 2, pad_value: float = 1.0) -> Tensor:
    """Tile a batch into one image, ``nrow`` images per row (like ``torchvision.utils.make_grid``).

    x: ``[B, C, H, W]`` in [-1, 1], C = 1 or 3. Returns ``[C, H', W']`` in [0, 1] with
    ``ncol = min(nrow, B)``, ``nrows = ceil(B / ncol)``, ``H' = nrows * (H + padding) + padding``
    and ``W' = ncol * (W + padding) + padding``. Padding and unused cells are ``pad_value``
    (display range, default white).
    """
    x = to_display(_check_batch(x, "make_grid"))
    if nrow < 1:
        raise ValueError(f"make_grid needs nrow >= 1, got {nrow}")
    if padding < 0:
        raise ValueError(f"make_grid needs padding >= 0, got {padding}")
    b, c, h, w = x.shape
    ncol = min(nrow, b)
    nrows = math.ceil(b / ncol)
    grid = torch.full(
        (c, nrows * (h + padding) + padding, ncol * (w + padding) + padding), float(pad_value)
    )
    for i in range(b):
        top = padding + (i // ncol) * (h + padding)
        left = padding + (i % ncol) * (w + padding)
        grid[:, top : top + h, left : left + w] = x[i]
    return grid


def _hwc(img: Tensor) -> np.ndarray:
    """``[C, H, W]`` in [0, 1] -> numpy ``[H, W]`` (C = 1) or ``[H, W, 3]`` for ``imshow``."""
    arr = img.permute(1, 2, 0).numpy()
    return arr[..., 0] if arr.shape[-1] == 1 else arr


def _imshow(ax: Axes, img: Tensor) -> None:
    """Draw one ``[C, H, W]`` image in [0, 1] on ``ax`` without ticks or frame."""
    ax.imshow(_hwc(img), cmap="gray" if img.shape[0] == 1 else None, vmin=0.0, vmax=1.0)
    ax.set_axis_off()


def save_grid(x: Tensor, path: str | Path, nrow: int = 8) -> Path:
    """Write ``make_grid(x, nrow)`` to a PNG file, creating parent directories; return the path.

    x: ``[B, C, H, W]`` in [-1, 1]. One channel is written as an 8-bit grayscale PNG, three as RGB.
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(
            f"save_grid writes PNG files; use a path ending in .png, got {str(path)!r}"
        )
    grid = make_grid(x, nrow=nrow)
    arr = (grid * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()
    image = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)  # uint8: "L" or "RGB"
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
    return path


def show_images(x: Tensor, nrow: int = 8, title: str | None = None, ax: Axes | None = None) -> Axes:
    """Show a batch ``[B, C, H, W]`` in [-1, 1] as one grid on ``ax`` (a new figure if None)."""
    grid = make_grid(x, nrow=nrow)
    if ax is None:
        _, hh, ww = grid.shape
        scale = 6.0 / max(hh, ww)
        _, ax = plt.subplots(figsize=(max(ww * scale, 1.5), max(hh * scale, 1.5)))
    _imshow(ax, grid)
    if title is not None:
        ax.set_title(title)
    return ax


def plot_schedules(betas_by_name: Mapping[str, Tensor]) -> Figure:
    """Plot each named β schedule (``[T]``, float64) in three panels against t = 1..T.

    Panels: β_t; ᾱ_t = ∏_{s≤t} (1 - β_s); log SNR(t) = log(ᾱ_t / (1 - ᾱ_t)). One line per
    schedule in every panel, with a legend on the first.
    """
    if not betas_by_name:
        raise ValueError("plot_schedules needs at least one named schedule")
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), layout="constrained")
    for name, betas in betas_by_name.items():
        betas = torch.as_tensor(betas).detach().to("cpu", torch.float64)
        if betas.ndim != 1 or betas.numel() == 0:
            raise ValueError(
                f"schedule {name!r} must be a 1-D tensor [T]; got shape {tuple(betas.shape)}"
            )
        if not bool(((betas >= 0) & (betas <= 1)).all()):
            raise ValueError(f"schedule {name!r} has betas outside [0, 1]")
        t = np.arange(1, betas.numel() + 1)
        alpha_bar = torch.cumprod(1.0 - betas, dim=0)
        log_snr = torch.log(alpha_bar) - torch.log1p(-alpha_bar)
        for ax, values in zip(axes, (betas, alpha_bar, log_snr), strict=True):
            ax.plot(t, values.numpy(), label=name)
    panels = (
        ("noise added per step", r"$\beta_t$"),
        ("signal kept", r"$\bar\alpha_t$"),
        ("log signal-to-noise ratio", r"$\log \bar\alpha_t \,/\, (1 - \bar\alpha_t)$"),
    )
    for ax, (title, ylabel) in zip(axes, panels, strict=True):
        ax.set_title(title)
        ax.set_xlabel(r"step $t$")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend()
    return fig


def _stack_steps(xs: Tensor | Sequence[Tensor], who: str) -> Tensor:
    """Stack a list of S batches ``[B, C, H, W]`` (or take a tensor) into ``[S, B, C, H, W]``."""
    if not isinstance(xs, Tensor):
        if len(xs) == 0:
            raise ValueError(f"{who} got no time steps")
        xs = torch.stack([torch.as_tensor(x).detach().cpu() for x in xs])
    return xs


def plot_trajectory(
    xs: Tensor | Sequence[Tensor],
    steps: Sequence[int],
    rows: int | None = None,
    title: str | None = None,
) -> Figure:
    """Show samples along the reverse (or forward) process: one column per time step.

    xs: ``[S, B, C, H, W]`` in [-1, 1], or a list of S tensors ``[B, C, H, W]``; ``steps`` gives
    the S time steps (column titles "t=…"). The first ``rows`` samples (default ``min(B, 4)``)
    become the rows.
    """
    xs = _stack_steps(xs, "plot_trajectory")
    if xs.ndim != 5:
        raise ValueError(
            f"plot_trajectory expects xs of shape [S, B, C, H, W]; got {tuple(xs.shape)}"
        )
    n_steps, batch = xs.shape[0], xs.shape[1]
    if len(steps) != n_steps:
        raise ValueError(f"plot_trajectory got {len(steps)} steps for {n_steps} snapshots in xs")
    rows = min(batch, 4) if rows is None else rows
    if not 1 <= rows <= batch:
        raise ValueError(f"plot_trajectory needs 1 <= rows <= B = {batch}, got rows={rows}")
    _check_batch(xs[0], "plot_trajectory")
    shown = to_display(xs[:, :rows])
    fig, axes = plt.subplots(
        rows, n_steps, figsize=(1.3 * n_steps, 1.3 * rows + 0.4), squeeze=False
    )
    for j, t in enumerate(steps):
        for i in range(rows):
            _imshow(axes[i, j], shown[j, i])
        axes[0, j].set_title(f"t={t}", fontsize=9)
    if title is not None:
        fig.suptitle(title)
    return fig


def animate_reverse(
    frames: Tensor | Sequence[Tensor],
    steps: Sequence[int] | None = None,
    path: str | Path | None = None,
    fps: int = 10,
) -> FuncAnimation:
    """Animate the reverse process; optionally save it as a GIF.

    frames: ``[S, C, H, W]`` (one image per frame) or ``[S, B, C, H, W]`` (each frame shown as a
    grid), in [-1, 1]. ``steps`` (length S) titles the frames "t=…". ``path`` must end in
    ``.gif`` (written with Pillow). The figure is closed in pyplot so that a notebook does not
    also show it as a still; display the result with ``HTML(anim.to_jshtml())``.
    Note: GIF writers merge identical consecutive frames.
    """
    if path is not None and Path(path).suffix.lower() != ".gif":
        raise ValueError(
            f"animate_reverse can only save GIFs (Pillow); use a path ending in .gif, got "
            f"{str(path)!r}, or pass path=None and display HTML(anim.to_jshtml())"
        )
    if fps < 1:
        raise ValueError(f"animate_reverse needs fps >= 1, got {fps}")
    frames = _stack_steps(frames, "animate_reverse")
    if frames.ndim == 4:
        images = to_display(_check_batch(frames, "animate_reverse"))
    elif frames.ndim == 5:
        images = torch.stack([make_grid(f) for f in frames])
    else:
        raise ValueError(
            "animate_reverse expects frames of shape [S, C, H, W] or [S, B, C, H, W]; "
            f"got {tuple(frames.shape)}"
        )
    n = images.shape[0]
    if steps is not None and len(steps) != n:
        raise ValueError(f"animate_reverse got {len(steps)} steps for {n} frames")
    labels = [f"t={t}" for t in steps] if steps is not None else [f"frame {i}" for i in range(n)]

    fig, ax = plt.subplots(figsize=(4, 4))
    _imshow(ax, images[0])
    artist = ax.images[0]
    text = ax.set_title(labels[0])

    def update(i: int) -> tuple:
        artist.set_data(_hwc(images[i]))
        text.set_text(labels[i])
        return artist, text

    anim = FuncAnimation(fig, update, frames=n, interval=1000 / fps, blit=False)
    plt.close(fig)
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        anim.save(path, writer=PillowWriter(fps=fps))
    return anim


def plot_histogram(x: Tensor, ax: Axes | None = None, bins: int = 50, normal: bool = False) -> Axes:
    """Histogram (density) of all values of ``x`` (any shape, model range, not clamped).

    With ``normal=True`` the standard normal density is drawn over it, the target of the forward
    process.
    """
    values = torch.as_tensor(x).detach().to("cpu", torch.float64).flatten().numpy()
    if values.size == 0:
        raise ValueError("plot_histogram got an empty tensor")
    if ax is None:
        _, ax = plt.subplots(figsize=(4, 3))
    ax.hist(values, bins=bins, density=True, alpha=0.7, label="pixels")
    if normal:
        lo, hi = min(values.min(), -4.0), max(values.max(), 4.0)
        grid = np.linspace(lo, hi, 400)
        ax.plot(grid, np.exp(-0.5 * grid**2) / math.sqrt(2 * math.pi), label=r"$\mathcal{N}(0, 1)$")
        ax.legend()
    ax.set_xlabel("pixel value")
    ax.set_ylabel("density")
    return ax


def frame_slider(frames: Sequence[Figure], labels: Sequence[str], *, name: str = "frame") -> object:
    """A slider over pre-rendered figures that works without a kernel (the book's static pages).

    Each matplotlib figure in ``frames`` is rendered to a PNG once and closed; the result is an
    ``IPython.display.HTML`` whose range input shows one frame at a time, with ``labels[k]``
    beside it ("t = 100"). The page needs no Python: the input's own handler swaps the images, so
    the control also works on the rendered site (the browser check moves it). In a live notebook
    the same output works too; chapters may add an ipywidgets version for free exploration.
    """
    from IPython.display import HTML

    if len(frames) == 0 or len(frames) != len(labels):
        raise ValueError(
            f"need one label per frame, got {len(frames)} frames, {len(labels)} labels"
        )
    images = []
    for k, fig in enumerate(frames):
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=fig.dpi, bbox_inches="tight")
        plt.close(fig)
        data = base64.b64encode(buf.getvalue()).decode("ascii")
        hidden = "" if k == 0 else ' style="display:none"'
        images.append(
            f'<img class="ddpm-frame" alt="{html.escape(labels[k])}"{hidden} '
            f'src="data:image/png;base64,{data}">'
        )
    handler = (
        "const r=this.closest('.ddpm-frame-slider');"
        "r.querySelectorAll('img.ddpm-frame').forEach("
        "(im,k)=>{im.style.display=(k==this.value)?'':'none';});"
        "r.querySelector('output').textContent=JSON.parse(r.dataset.labels)[this.value];"
    )
    return HTML(
        f'<div class="ddpm-frame-slider" data-labels="{html.escape(json.dumps(list(labels)))}">'
        f'<label>{html.escape(name)}: <input type="range" min="0" max="{len(frames) - 1}" '
        f'value="0" step="1" oninput="{html.escape(handler)}"> '
        f"<output>{html.escape(labels[0])}</output></label>"
        f'<div class="ddpm-frames">{"".join(images)}</div></div>'
    )


_SAMPLER_STYLE = {"euler": "o-", "heun": "s--", "ddim": "^:"}


def plot_fd_vs_evaluations(comparison: Mapping, ax: Axes | None = None) -> Axes:
    """Fréchet distance against network evaluations, one curve per model and sampler (Ch. 9).

    ``comparison`` is the ``flow_vs_ddpm`` entry of the flow-matching checkpoint's card
    (``benchmarks/flow_card.py``): ``models[name]["samplers"][sampler]`` holds
    ``network_evaluations`` and ``fd``; ``floor_fd`` is drawn as the real-data floor. Log-log axes.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.6), layout="constrained")
    for model, entry in comparison["models"].items():
        by_kind: dict[str, list[tuple[int, float]]] = {}
        for name, r in entry["samplers"].items():
            by_kind.setdefault(name.split("-")[0], []).append((r["network_evaluations"], r["fd"]))
        for kind, points in by_kind.items():
            nfe, fd = zip(*sorted(points), strict=True)
            label = f"{model}: {'DDIM' if kind == 'ddim' else kind.capitalize()}"
            ax.plot(
                nfe,
                fd,
                _SAMPLER_STYLE.get(kind, "o-"),
                label=label,
                color="C0" if model == "flow" else "C1",
                alpha=1.0 if kind != "heun" else 0.7,
            )
    ax.axhline(comparison["floor_fd"], color="gray", lw=0.8, label="real-data floor")
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="network evaluations",
        ylabel=f"FD (n = {comparison['n']:,})",
    )
    ax.legend(fontsize=8, ncol=2)
    return ax


def plot_ladder(
    panels: Sequence[tuple[str, float, Tensor]],
    *,
    highlight: Sequence[str] = (),
    ncols: int = 5,
    nrow: int = 3,
) -> Figure:
    """Image panels sorted by their Fréchet distance: what each FD looks like (Chapter 4, 7).

    ``panels``: (label, FD, images [B, C, H, W] in [-1, 1]) — the calibration ladder's damaged
    real images (:mod:`ddpm_lib.evaluation.ladder`) and, for comparison, model samples. Each
    panel is one grid (``nrow`` images a row) titled with its label and FD, in ascending FD,
    ``ncols`` panels a row. Labels in ``highlight`` (the models) get bold blue titles.
    """
    if not panels:
        raise ValueError("plot_ladder needs at least one (label, fd, images) panel")
    ordered = sorted(panels, key=lambda p: p[1])
    rows = math.ceil(len(ordered) / ncols)
    fig, axes = plt.subplots(
        rows, ncols, figsize=(1.75 * ncols, 2.05 * rows), layout="constrained", squeeze=False
    )
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, (label, fd, images) in zip(axes.flat, ordered, strict=False):
        _imshow(ax, make_grid(images, nrow=nrow))
        model = label in highlight
        ax.set_title(
            f"{label}\nFD {fd:.3g}",
            fontsize=7.5,
            color="#1f4e9c" if model else "black",
            fontweight="bold" if model else "normal",
        )
    return fig
