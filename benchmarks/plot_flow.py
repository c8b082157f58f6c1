"""The figure and table of the flow-vs-DDPM comparison (Chapter 9, the performance page).

``python benchmarks/plot_flow.py`` reads benchmarks/results/flow/flow_vs_ddpm_{flow,ddpm}.json
(written by benchmarks/flow_vs_ddpm.sh) and writes fd_vs_evaluations.png (the curves the chapter
draws from the checkpoint's card, ``ddpm_lib.viz.plot_fd_vs_evaluations``) and table.md beside
them.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
from flow_card import summary  # noqa: E402

from ddpm_lib.viz import plot_fd_vs_evaluations  # noqa: E402

HERE = Path(__file__).resolve().parent / "results" / "flow"


def table(comparison: dict) -> str:
    rows = ["| model | sampler | network evaluations | FD | FD / floor | precision | recall |"]
    rows.append("|---|---|---|---|---|---|---|")
    for model, entry in comparison["models"].items():
        for name, r in entry["samplers"].items():
            rows.append(
                f"| {model} | {name} | {r['network_evaluations']} | {r['fd']:.2f} | "
                f"{r['fd_over_floor']:.0f} | {r['precision']:.3f} | {r['recall']:.3f} |"
            )
    lines = [f"n = {comparison['n']:,}; real-data floor {comparison['floor_fd']:.3f}", ""]
    for model, entry in comparison["models"].items():
        t, ode = entry["training"], entry["ode_bits_per_dim"]
        lines.append(
            f"- {model}: {t['steps']:,} steps of batch {t['batch_size']} in {t['train_minutes']} "
            f"min on {t['device']}; ODE bits/dim {ode['bits_per_dim']:.3f} ± "
            f"{ode['standard_error']:.3f} ({ode['n']:,} test images)"
        )
    return "\n".join([*lines, "", *rows]) + "\n"


def main() -> None:
    flow, ddpm = (
        json.loads((HERE / f"flow_vs_ddpm_{m}.json").read_text()) for m in ("flow", "ddpm")
    )
    comparison = summary(flow, ddpm)
    ax = plot_fd_vs_evaluations(comparison)
    ax.figure.savefig(HERE / "fd_vs_evaluations.png", dpi=120)
    (HERE / "table.md").write_text(table(comparison))
    print(f"wrote {HERE / 'fd_vs_evaluations.png'} and {HERE / 'table.md'}")


if __name__ == "__main__":
    main()
