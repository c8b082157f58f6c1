"""Draw the book's static figures into book/figures/ (committed PNGs).

    python tools/make_figures.py

derivation_map.png: the nine chapters as boxes, each with its key equation, joined in the
order the derivation runs (used on book/intro.md).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "book" / "figures"

# (number, title, key equation in matplotlib mathtext, colour)
CHAPTERS = [
    (
        1,
        "Forward recurrence",
        r"$q(x_t\,|\,x_{t-1})=\mathcal{N}(\sqrt{1-\beta_t}\,x_{t-1},\,\beta_t I)$",
        "#dbe9f6",
    ),
    (
        2,
        "Closed form",
        r"$q(x_t\,|\,x_0)=\mathcal{N}(\sqrt{\bar\alpha_t}\,x_0,\,(1-\bar\alpha_t) I)$",
        "#dbe9f6",
    ),
    (
        3,
        "Bayes posterior",
        r"$q(x_{t-1}\,|\,x_t,x_0)=\mathcal{N}(\tilde\mu_t,\,\tilde\beta_t I)$",
        "#dbe9f6",
    ),
    (
        4,
        r"$\varepsilon$-reparameterization",
        r"$\mu_\theta=\frac{1}{\sqrt{\alpha_t}}\left(x_t-\frac{\beta_t}{\sqrt{1-\bar\alpha_t}}"
        r"\varepsilon_\theta(x_t,t)\right)$",
        "#fde8cf",
    ),
    (5, "ELBO", r"$-\log p_\theta(x_0)\leq L_T+\sum_{t\geq 2} L_{t-1}+L_0$", "#e3f1dc"),
    (6, "SDE view", r"$dx=-\frac{1}{2}\beta(t)\,x\,dt+\sqrt{\beta(t)}\,dW$", "#e3f1dc"),
    (
        7,
        "Sampling faster (DDIM)",
        r"$x_{t'}=\sqrt{\bar\alpha_{t'}}\,\hat x_0+\sqrt{1-\bar\alpha_{t'}}"
        r"\,\hat\varepsilon,\ \ t'<t$",
        "#efe3f5",
    ),
    (
        8,
        "Guidance",
        r"$\tilde\varepsilon=(1+w)\,\varepsilon_\theta(x_t,y)-w\,\varepsilon_\theta(x_t,\varnothing)$",
        "#fbe3e8",
    ),
    (
        9,
        "Flow matching",
        r"$\min_\theta\,\mathbb{E}\,\|v_\theta(x_t,t)-(\varepsilon-x_0)\|^2$",
        "#dff1ef",
    ),
]

# Grid positions (column, row): a snake, 1 → 4 on top, 5 → 7 right to left below, then down
# from 7 to 8 → 9 left to right on the bottom row.
POSITIONS = {
    1: (0, 1), 2: (1, 1), 3: (2, 1), 4: (3, 1), 5: (3, 0), 6: (2, 0), 7: (1, 0), 8: (1, -1),
    9: (2, -1),
}  # fmt: skip
W, H, DX, DY = 3.9, 1.25, 4.35, 2.0


def derivation_map(path: Path) -> None:
    fig, ax = plt.subplots(figsize=(17.0, 7.3))
    ax.set_xlim(-0.35, 3 * DX + W + 0.35)
    ax.set_ylim(-DY - 0.5, DY + H + 0.7)
    ax.axis("off")
    centres = {}
    for n, title, eq, colour in CHAPTERS:
        col, row = POSITIONS[n]
        x, y = col * DX, row * DY
        ax.add_patch(
            FancyBboxPatch(
                (x, y),
                W,
                H,
                boxstyle="round,pad=0.04,rounding_size=0.12",
                facecolor=colour,
                edgecolor="#33475b",
                linewidth=1.4,
            )
        )
        ax.text(
            x + W / 2,
            y + H - 0.32,
            f"{n}. {title}",
            ha="center",
            va="center",
            fontsize=13,
            fontweight="bold",
            color="#1f2d3a",
        )
        ax.text(x + W / 2, y + 0.42, eq, ha="center", va="center", fontsize=12)
        centres[n] = (x, y)

    def arrow(a: tuple[float, float], b: tuple[float, float]) -> None:
        ax.add_patch(
            FancyArrowPatch(
                a, b, arrowstyle="-|>", mutation_scale=18, linewidth=1.6, color="#33475b"
            )
        )

    for n in (1, 2, 3):  # left to right along the top row
        (x, y), (x2, y2) = centres[n], centres[n + 1]
        arrow((x + W + 0.06, y + H / 2), (x2 - 0.06, y2 + H / 2))
    (x, y), (x2, y2) = centres[4], centres[5]  # down the right-hand side
    arrow((x + W / 2, y - 0.06), (x2 + W / 2, y2 + H + 0.06))
    for n in (5, 6):  # right to left along the bottom row
        (x, y), (x2, y2) = centres[n], centres[n + 1]
        arrow((x - 0.06, y + H / 2), (x2 + W + 0.06, y2 + H / 2))
    (x, y), (x2, y2) = centres[7], centres[8]  # down again
    arrow((x + W / 2, y - 0.06), (x2 + W / 2, y2 + H + 0.06))
    (x, y), (x2, y2) = centres[8], centres[9]  # left to right along the last row
    arrow((x + W + 0.06, y + H / 2), (x2 - 0.06, y2 + H / 2))

    # The legend box in the free corner.
    ax.text(
        0.05,
        0.95 * H,
        "Train with Chapters 1–4:\nsample with Algorithm 2.\n"
        "Chapter 5 says why the\nloss works; 6–9 go beyond.",
        ha="left",
        va="top",
        fontsize=11,
        color="#33475b",
        linespacing=1.4,
    )
    ax.text(
        (3 * DX + W) / 2,
        DY + H + 0.45,
        r"From the data $x_0$ to noise $x_T$ and back: the map of the derivation",
        ha="center",
        va="center",
        fontsize=14,
        color="#1f2d3a",
    )
    fig.savefig(path, dpi=150, bbox_inches="tight", facecolor="white", metadata={"Software": None})
    plt.close(fig)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    derivation_map(OUT / "derivation_map.png")
    print(f"wrote {OUT / 'derivation_map.png'}")


if __name__ == "__main__":
    main()
