"""The calibration ladder of the book's Fréchet distance on Fashion-MNIST, at n = 10,000.

``python benchmarks/ladder.py`` (CPU is enough: a few minutes) writes
benchmarks/results/quality/ladder_fashion_mnist.json: the real-data floor (10,000 training images
against 10,000 test images, the sets ``evaluate`` uses) and the FD of the floor images after
each perturbation of ``ddpm_lib.evaluation.ladder.RUNGS``, in the shipped classifier's feature
space, with the seed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ddpm_lib.evaluation.evaluate import find_classifier, load_classifier, real_sets  # noqa: E402
from ddpm_lib.evaluation.ladder import calibration_ladder  # noqa: E402
from ddpm_lib.evaluation.metrics import extract_features  # noqa: E402


def main(n: int = 10_000, seed: int = 0) -> None:
    sets = real_sets({"dataset": "fashion_mnist", "split": "train"}, n, seed=seed)
    net, card = load_classifier(find_classifier("fashion_mnist"), "cpu")

    def features(x):
        return extract_features(net, x)

    ladder = calibration_ladder(sets["floor"], features(sets["reference"]), features, seed=seed)
    out = ROOT / "benchmarks" / "results" / "quality" / "ladder_fashion_mnist.json"
    result = {"n": sets["n"], "seed": seed, "reference": sets["note"], "ladder": ladder}
    out.write_text(json.dumps(result, indent=2) + "\n")
    for r in ladder:
        print(f"{r['fd']:8.3f}  {r['rung']}")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
