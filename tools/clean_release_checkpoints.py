"""Remove the trainer's machine paths from shipped checkpoints; the weights stay bit-identical.

A release checkpoint's config held ``data_root='.devdata'`` and ``out_dir=/tmp/...`` of the
machine that trained it, and its card and data note said "from /work/main/.devdata/...".
Resuming such a file looked for data in ``./.devdata`` only. This rewrites the config
(:func:`ddpm_lib.training.checkpoint.release_config`), the card's ``data`` line, the data note
and the ``data`` line of the ``.json`` card beside each file. Every tensor is compared with the
original before the new file replaces it (atomically); a difference aborts and keeps the
original.

    python tools/clean_release_checkpoints.py                 # every checkpoints/*.pt
    python tools/clean_release_checkpoints.py --check         # exit 1 if a file holds a path
    python tools/clean_release_checkpoints.py some/file.pt
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

from ddpm_lib.training.checkpoint import (
    FORMAT,
    load_checkpoint,
    release_card,
    release_config,
    save_checkpoint,
    without_machine_paths,
)

ROOT = Path(__file__).resolve().parents[1]


def cleaned(ckpt: dict[str, Any], name: str) -> dict[str, Any]:
    """``ckpt`` with its machine paths removed (the same objects for everything else)."""
    out = dict(ckpt)
    out["config"] = release_config(ckpt["config"], name)
    if isinstance(ckpt.get("card"), dict):
        out["card"] = release_card(ckpt["card"])
    if isinstance(ckpt.get("data_note"), str):
        out["data_note"] = without_machine_paths(ckpt["data_note"])
    return out


def _tensors(obj: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor in a nested checkpoint, by its path of keys."""
    if isinstance(obj, torch.Tensor):
        return {prefix: obj}
    if isinstance(obj, dict):
        out: dict[str, torch.Tensor] = {}
        for k, v in obj.items():
            out.update(_tensors(v, f"{prefix}/{k}"))
        return out
    if isinstance(obj, (list, tuple)):
        out = {}
        for i, v in enumerate(obj):
            out.update(_tensors(v, f"{prefix}/{i}"))
        return out
    return {}


def same_tensors(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The tensor paths where ``a`` and ``b`` differ (dtype, shape or any value); empty if none."""
    ta, tb = _tensors(a), _tensors(b)
    bad = sorted(set(ta) ^ set(tb))
    for k in set(ta) & set(tb):
        x, y = ta[k], tb[k]
        if x.dtype != y.dtype or x.shape != y.shape or not torch.equal(x, y):
            bad.append(k)
    return bad


def clean_file(path: Path) -> bool:
    """Rewrite ``path`` (and its .json card) without machine paths; True when it changed."""
    ckpt = load_checkpoint(path)
    new = cleaned(ckpt, path.stem)
    changed = new != ckpt
    if changed:
        tmp = path.with_name(path.name + ".clean")
        save_checkpoint({k: v for k, v in new.items() if k not in ("format", "version")}, tmp)
        written = torch.load(tmp, weights_only=True)
        bad = same_tensors(ckpt, written)
        if bad or written["format"] != FORMAT:
            tmp.unlink()
            raise SystemExit(f"{path}: the rewritten file differs in {bad}; original kept")
        os.replace(tmp, path)
    sidecar = path.with_suffix(".json")
    if sidecar.is_file():
        card = json.loads(sidecar.read_text())
        new_card = release_card(card)
        if new_card != card:
            sidecar.write_text(json.dumps(new_card, indent=2) + "\n")
            changed = True
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path, help="default: checkpoints/*.pt")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if needed")
    args = parser.parse_args(argv)
    files = args.files or sorted((ROOT / "checkpoints").glob("*.pt"))
    dirty = []
    for path in files:
        if args.check:
            ckpt = load_checkpoint(path)
            if cleaned(ckpt, path.stem) != ckpt:
                dirty.append(path)
        elif clean_file(path):
            print(f"cleaned {path}")
        else:
            print(f"{path}: no machine paths")
    if dirty:
        print("machine paths in: " + ", ".join(map(str, dirty)), file=sys.stderr)
        print("run: python tools/clean_release_checkpoints.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
