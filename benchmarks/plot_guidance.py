"""The fidelity-diversity figure of the guidance sweep (Chapter 8, the performance page).

``python benchmarks/plot_guidance.py`` reads benchmarks/results/guidance/
guidance_fashion_mnist_cond.json (written by benchmarks/guidance.sh) and writes
fidelity_diversity.png beside it: the classifier's accuracy on the samples, and their Fréchet
distance and recall, against the guidance weight w.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent / "results" / "guidance"


def main() -> None:
    result = json.loads((HERE / "guidance_fashion_mnist_cond.json").read_text())
    rows = list(result["weights"].values())
    ws = [r["w"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(7, 2.8), layout="constrained")
    ax1.plot(ws, [r["accuracy"] for r in rows], "o-", label="samples")
    ax1.axhline(result["classifier"]["test_accuracy"], color="gray", ls="--", label="real test")
    ax1.set(xlabel="guidance weight w", ylabel="classifier accuracy")
    ax1.legend(fontsize=8)
    ax2.plot(ws, [r["fd"] for r in rows], "o-", label="FD to real")
    ax2.axhline(result["floor"]["fd"], color="gray", ls="--", label="floor")
    ax2.plot(ws, [r["recall"] for r in rows], "s:", label="recall")
    ax2.set(xlabel="guidance weight w", yscale="log")
    ax2.legend(fontsize=8)
    fig.suptitle(
        f"class-conditional Fashion-MNIST, {result['sampler']}, n = {result['n']:,}", fontsize=9
    )
    out = HERE / "fidelity_diversity.png"
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
