"""The calibration ladder of the book's Fréchet distance, at the n of the shipped models' figures.

``python benchmarks/ladder.py`` (CPU is enough: a few minutes) writes
benchmarks/results/quality/ladder_fashion_mnist.json: the real-data floor (10,000 training images
against 10,000 test images, the sets ``evaluate`` uses) and the FD of the floor images after
each perturbation of ``ddpm_lib.evaluation.ladder.RUNGS``, in the shipped classifier's feature
space, with the seed. ``--dataset mnist --n 5000``: the same for MNIST (offline only its 10,000
test digits: two disjoint sets of 5,000, as for ``mnist.pt``'s figures).
``--card`` also stores the ladder in the shipped classifier's card (``card["ladder"]``, and its
sidecar JSON), so that the chapters can show it wherever the classifier is (also in Colab).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ddpm_lib.evaluation.evaluate import find_classifier, load_classifier, real_sets  # noqa: E402
from ddpm_lib.evaluation.ladder import calibration_ladder  # noqa: E402
from ddpm_lib.evaluation.metrics import extract_features  # noqa: E402
from ddpm_lib.training.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402

# The configs of the models whose figures the ladder calibrates (their real sets).
CONFIGS = {
    "fashion_mnist": {"dataset": "fashion_mnist", "split": "train"},
    "mnist": {"dataset": "mnist", "split": "test", "holdout": 1000},
}


def add_to_classifier_card(path: Path, ladder: dict) -> None:
    """Store ``ladder`` as ``card["ladder"]`` in the classifier checkpoint and its sidecar."""
    state = load_checkpoint(path)
    save_checkpoint({**state, "card": {**state["card"], "ladder": ladder}}, path)
    sidecar = path.with_suffix(".json")
    if sidecar.is_file():
        sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "ladder": ladder},
                                      indent=2, ensure_ascii=False) + "\n")  # fmt: skip
    print(f"added the ladder to the card of {path}")


def main(dataset: str, n: int, seed: int, card: bool) -> None:
    sets = real_sets(CONFIGS[dataset], n, seed=seed)
    classifier = find_classifier(dataset)
    net, _ = load_classifier(classifier, "cpu")

    def features(x):
        return extract_features(net, x)

    ladder = calibration_ladder(sets["floor"], features(sets["reference"]), features, seed=seed)
    out = ROOT / "benchmarks" / "results" / "quality" / f"ladder_{dataset}.json"
    result = {"n": sets["n"], "seed": seed, "reference": sets["note"], "ladder": ladder}
    out.write_text(json.dumps(result, indent=2) + "\n")
    for r in ladder:
        print(f"{r['fd']:8.3f}  {r['rung']}")
    print(f"wrote {out.relative_to(ROOT)}")
    if card:
        add_to_classifier_card(classifier, result)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", choices=sorted(CONFIGS), default="fashion_mnist")
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--card", action="store_true", help="store the ladder in the classifier card")
    args = p.parse_args()
    main(args.dataset, args.n, args.seed, args.card)
