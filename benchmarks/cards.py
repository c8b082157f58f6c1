"""Add a benchmark's summary to a release checkpoint's model card (and its JSON sidecar).

The chapters draw their curves from the card wherever the checkpoint is (also in Colab, where the
repository's results folder is not); the sidecar ``<checkpoint>.json`` has the form of the other
shipped cards. Used by guidance_card.py (Chapter 8) and flow_card.py (Chapter 9).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ddpm_lib.nets import count_parameters
from ddpm_lib.training.checkpoint import load_checkpoint, load_model, save_checkpoint


def add_to_card(checkpoint: str | Path, key: str, summary: dict[str, Any]) -> Path:
    """Store ``summary`` as ``card[key]`` in ``checkpoint`` and rewrite its sidecar; returns it."""
    path = Path(checkpoint)
    ckpt = load_checkpoint(path)
    card = {**ckpt["card"], key: summary}
    save_checkpoint({**ckpt, "card": card}, path)
    old = path.with_suffix(".json")
    if old.is_file():  # an existing sidecar keeps its own fields; the card's are updated
        sidecar = {**json.loads(old.read_text()), **card}
    else:
        model, _ = load_model(path)
        config = ckpt["config"]
        sidecar = {
            **card,
            "parameters": count_parameters(model),
            "config": {k: config[k] for k in config if k not in ("model", "data_root", "out_dir")},
            "model": config["model"],
        }
    path.with_suffix(".json").write_text(json.dumps(sidecar, indent=2) + "\n")
    print(f"added {key!r} to the card of {path}; wrote {path.with_suffix('.json')}")
    return path.with_suffix(".json")
