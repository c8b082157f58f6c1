"""Put each shipped model's measured sample quality into its model card.

``python benchmarks/quality_card.py`` reads benchmarks/results/quality/quality_<name>.json (written
by ``python -m ddpm_lib evaluate``, see run_quality.sh) for the shipped image checkpoints and adds
``card["quality"]`` (n, the real-data floor and per sampler the FD and FD / floor) to
checkpoints/<name>.pt and its sidecar, so that the chapters can put a model's figure on the
calibration ladder wherever the checkpoint is (also in Colab).
"""

from __future__ import annotations

import json
from pathlib import Path

from cards import add_to_card

ROOT = Path(__file__).resolve().parents[1]
NAMES = (
    "mnist",
    "fashion_mnist",
    "fashion_mnist_fast",
    "fashion_mnist_hybrid",
    "fashion_mnist_large",
)


def summary(result: dict) -> dict:
    return {
        "n": result["n"],
        "floor_fd": result["floor"]["fd"],
        "made_by": "python -m ddpm_lib evaluate (benchmarks/run_quality.sh)",
        "samplers": {
            name: {"fd": r["fd"], "fd_over_floor": r["fd_over_floor"]}
            for name, r in result["samplers"].items()
        },
    }


def main() -> None:
    for name in NAMES:
        result = json.loads((ROOT / f"benchmarks/results/quality/quality_{name}.json").read_text())
        add_to_card(ROOT / "checkpoints" / f"{name}.pt", "quality", summary(result))


if __name__ == "__main__":
    main()
