"""Time each chapter notebook top to bottom as plain Python (no Jupyter kernel), e.g. on a GPU.

    python tools/time_chapters.py --out times.json notebooks/0*.ipynb

Each notebook runs in a fresh subprocess: its code cells in order, in one namespace, with the
notebook's folder as working directory and matplotlib's Agg backend; the cells tagged
``nbval-skip`` (the Colab setup cell) are skipped, as in the tests. ``display`` is IPython's.
Quick mode follows ``DDPM_QUICK`` as everywhere else. Used for the instructors' timing table on
machines without Jupyter; the times include importing torch and loading the checkpoints.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def run_one(path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = json.loads(path.read_text())["cells"]
    os.chdir(path.parent)
    namespace: dict = {"__name__": "__main__"}
    try:
        from IPython.display import display

        namespace["display"] = display
    except ImportError:
        namespace["display"] = print
    start = time.perf_counter()
    for i, cell in enumerate(cells):
        if cell["cell_type"] != "code" or "nbval-skip" in cell["metadata"].get("tags", []):
            continue
        source = "".join(cell["source"])
        exec(compile(source, f"{path.name}:cell{i}", "exec"), namespace)  # noqa: S102
        plt.close("all")
    print(json.dumps({"seconds": time.perf_counter() - start}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, help="write the times here as JSON")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        run_one(args.notebooks[0].resolve())
        return 0
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    result = {
        "device": device,
        "torch": torch.__version__,
        "quick_mode": os.environ.get("DDPM_QUICK", "") not in ("", "0"),
        "threads": torch.get_num_threads(),
        "seconds": {},
    }
    for path in args.notebooks:
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, __file__, "--one", str(path)], capture_output=True, text=True
        )
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
            result["seconds"][path.name] = None
            result.setdefault("failed", []).append(path.name)
        else:
            inner = json.loads(proc.stdout.strip().splitlines()[-1])["seconds"]
            result["seconds"][path.name] = {"cells": round(inner, 1), "process": round(wall, 1)}
        print(path.name, result["seconds"][path.name], flush=True)
        if args.out:
            args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 1 if result.get("failed") else 0


if __name__ == "__main__":
    sys.exit(main())
