"""Put the flow-vs-DDPM comparison into the model card of the flow-matching release checkpoint.

``python benchmarks/flow_card.py FLOW.pt FLOW.json DDPM.json`` (the two results of
``benchmarks/flow_vs_ddpm.sh``) adds ``card["flow_vs_ddpm"]``: n, the real-data floor, and per
model its training (steps, minutes, GPU), its ODE bits/dim and per sampler the network
evaluations, FD, precision and recall, so that Chapter 9 can draw the FD-versus-evaluations
curves wherever the checkpoint is (also in Colab).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from cards import add_to_card

KEEP = ("network_evaluations", "fd", "fd_over_floor", "precision", "recall")


def model_summary(results: dict) -> dict:
    ode = results.get("ode_likelihood", {})
    return {
        "checkpoint": Path(results["checkpoint"]).name,
        "training": results["model_card"],
        "ode_bits_per_dim": {k: ode.get(k) for k in ("n", "bits_per_dim", "standard_error")},
        "samplers": {name: {k: r[k] for k in KEEP} for name, r in results["samplers"].items()},
    }


def summary(flow: dict, ddpm: dict) -> dict:
    return {
        "n": flow["n"],
        "floor_fd": flow["floor"]["fd"],
        "made_by": "benchmarks/flow_vs_ddpm.sh",
        "models": {"flow": model_summary(flow), "ddpm": model_summary(ddpm)},
    }


def main(checkpoint: str, flow_path: str, ddpm_path: str) -> None:
    flow, ddpm = (json.loads(Path(p).read_text()) for p in (flow_path, ddpm_path))
    add_to_card(checkpoint, "flow_vs_ddpm", summary(flow, ddpm))


if __name__ == "__main__":
    main(*sys.argv[1:])
