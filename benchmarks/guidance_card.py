"""Put the guidance sweep into the model card of a class-conditional release checkpoint.

``python benchmarks/guidance_card.py CHECKPOINT RESULTS.json`` adds ``card["guidance"]`` (the
sampler, n, the real-data floor, and per weight w: accuracy, FD, precision, recall) to the
checkpoint, so that Chapter 8 can draw the fidelity-diversity curve wherever the checkpoint is
(also in Colab, where the repository's results folder is not), and writes the card beside it as
``<checkpoint>.json`` in the form of the other shipped cards.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from cards import add_to_card


def summary(results: dict) -> dict:
    keep = ("w", "accuracy", "fd", "fd_over_floor", "precision", "recall")
    return {
        "sampler": results["sampler"],
        "n": results["n"],
        "labels": results["labels"],
        "floor_fd": results["floor"]["fd"],
        "classifier_test_accuracy": results["classifier"]["test_accuracy"],
        "made_by": "benchmarks/guidance.sh",
        "weights": [{k: r[k] for k in keep} for r in results["weights"].values()],
    }


def main(checkpoint: str, results_path: str) -> None:
    add_to_card(checkpoint, "guidance", summary(json.loads(Path(results_path).read_text())))


if __name__ == "__main__":
    main(*sys.argv[1:])
