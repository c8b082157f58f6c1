"""The calibration ladder as pictures, with the shipped models among its rungs (performance page).

``python benchmarks/ladder_figure.py`` draws book/figures/quality/ladder_fashion_mnist.png: nine
Fashion-MNIST test images under each rung of the ladder (``ddpm_lib.evaluation.ladder.perturb``,
the FD of each rung measured at n = 10,000 in benchmarks/results/quality/ladder_fashion_mnist.json),
and nine samples of each shipped Fashion-MNIST model cut from its committed 64-sample grid, with
its FD at the same n (benchmarks/results/quality and benchmarks/results/flow). All panels are
sorted by FD, so a reader sees what each value looks like.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import numpy as np
import torch
from PIL import Image

matplotlib.use("Agg")
from ddpm_lib.data import load_image_dataset  # noqa: E402
from ddpm_lib.evaluation.ladder import ladder_panels  # noqa: E402
from ddpm_lib.viz import plot_ladder  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
# (label, grid PNG written by evaluate --grids, results JSON, sampler): models at n = 10,000.
MODELS = [
    ("fashion_mnist_large\\nDDPM-1000", "book/figures/quality/fashion_mnist_large_ddpm-1000.png",
     "quality/quality_fashion_mnist_large.json", "ddpm-1000"),
    ("fashion_mnist_fast\\nDDPM-1000", "book/figures/quality/fashion_mnist_fast_ddpm-1000.png",
     "quality/quality_fashion_mnist_fast.json", "ddpm-1000"),
    ("flow model\\nEuler-100", "benchmarks/results/flow/fashion_mnist_flow_euler-100.png",
     "flow/flow_vs_ddpm_flow.json", "euler-100"),
    ("flow model\\nEuler-10", "benchmarks/results/flow/fashion_mnist_flow_euler-10.png",
     "flow/flow_vs_ddpm_flow.json", "euler-10"),
]  # fmt: skip


def tiles(png: Path, k: int = 9, size: int = 28, pad: int = 2) -> torch.Tensor:
    """The first k images [k, 1, size, size] in [-1, 1] of a grid written by viz.save_grid."""
    arr = np.asarray(Image.open(png).convert("L"), dtype=np.float32) / 255.0
    ncol = (arr.shape[1] - pad) // (size + pad)
    out = []
    for i in range(k):
        top, left = pad + (i // ncol) * (size + pad), pad + (i % ncol) * (size + pad)
        out.append(arr[top : top + size, left : left + size])
    return torch.from_numpy(np.stack(out))[:, None] * 2 - 1


def main() -> None:
    ladder = json.loads((RESULTS / "quality" / "ladder_fashion_mnist.json").read_text())
    real = load_image_dataset("fashion_mnist", "test", str(ROOT.parent / "shared" / "data"))
    panels = ladder_panels(real.to_model_range()[:9], ladder["ladder"])
    for label, png, result, sampler in MODELS:
        value = json.loads((RESULTS / result).read_text())["samplers"][sampler]["fd"]
        panels.append((label.replace("\\n", "\n"), value, tiles(ROOT / png)))
    models = [label.replace("\\n", "\n") for label, *_ in MODELS]
    fig = plot_ladder(panels, highlight=models, ncols=7)
    out = ROOT / "book" / "figures" / "quality" / "ladder_fashion_mnist.png"
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
