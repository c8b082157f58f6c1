"""The results table of the book's performance page, from the committed evaluation JSONs.

    python benchmarks/quality_table.py          # rewrites benchmarks/results/quality/table.md
    python benchmarks/quality_table.py --check  # exits 1 if table.md is not what the JSONs say

Each JSON is the output of ``python -m ddpm_lib evaluate`` (benchmarks/run_quality.sh).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "quality"
ORDER = (
    "mnist",
    "fashion_mnist",
    "fashion_mnist_fast",
    "fashion_mnist_hybrid",
    "fashion_mnist_large",
    "toy_gmm",
)
SAMPLERS = ("ddpm-1000", "ddim-100", "ddim-50")


def _fd(row: dict) -> str:
    ratio = row["fd_over_floor"]
    return f"{row['fd']:.3g} ({ratio:.1f}×)" if ratio < 10 else f"{row['fd']:.3g} ({ratio:.0f}×)"


def _ode(path: Path) -> str:
    if not path.is_file():
        return "not measured"
    m = json.loads(path.read_text())["main"]
    if "bits_per_dim" in m:
        return f"{m['bits_per_dim']:.3f} ± {m['standard_error']:.3f} bits/dim"
    return (
        f"{m['mean_log_likelihood_nats']:.3f} ± {m['standard_error']:.3f} nats/point "
        f"(exact {m['exact_mean_log_density_nats']:.3f})"
    )


def render(folder: Path = RESULTS) -> str:
    """Two tables: sample quality (FD, floor, precision/recall); training and likelihood."""
    quality = [
        "| checkpoint | n | real-data floor | FD DDPM-1000 | FD DDIM-100 | FD DDIM-50 "
        "| precision / recall, DDPM-1000 (floor) |",
        "|---|---|---|---|---|---|---|",
    ]
    likelihood = [
        "| checkpoint | training (steps × batch, GPU time) | ELBO, bits/dim | ODE likelihood |",
        "|---|---|---|---|",
    ]
    for name in ORDER:
        path = folder / f"quality_{name}.json"
        if not path.is_file():
            continue
        r = json.loads(path.read_text())
        card = r["model_card"]
        training = f"{card['steps']:,} × {card['batch_size']}, {card['train_minutes']} min"
        s, floor = r["samplers"], r["floor"]
        pr = (
            f"{s['ddpm-1000']['precision']:.2f} / {s['ddpm-1000']['recall']:.2f} "
            f"({floor['precision']:.2f} / {floor['recall']:.2f})"
        )
        if "elbo" in r:
            e = r["elbo"]
            elbo = f"{e['bits_per_dim']:.3f} ± {e['standard_error']:.3f} (n = {e['n']:,})"
        else:
            elbo = "n/a (continuous 2-D data)"
        cells = [f"`{name}.pt`", f"{r['n']:,}", f"{floor['fd']:.3g}"]
        cells += [_fd(s[k]) for k in SAMPLERS] + [pr]
        quality.append("| " + " | ".join(cells) + " |")
        cells = [f"`{name}.pt`", training, elbo, _ode(folder / f"ode_{name}.json")]
        likelihood.append("| " + " | ".join(cells) + " |")
    return "\n".join(quality) + "\n\n" + "\n".join(likelihood) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="compare with the committed table.md")
    args = p.parse_args()
    table, out = render(), RESULTS / "table.md"
    if args.check:
        same = out.is_file() and out.read_text() == table
        print("table.md matches the JSONs" if same else "table.md is stale: run without --check")
        return 0 if same else 1
    out.write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
