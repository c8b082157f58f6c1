"""Shared test helpers: Monte Carlo tolerances. (The exact models live in ddpm_lib.oracles.)"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def mc_tolerance(std: float, n: int, z: float = 5.0) -> float:
    """z standard errors of a mean of n draws with standard deviation ``std``.

    z = 5 makes a false alarm (two-sided) about 6e-7 per comparison.
    """
    return z * std / n**0.5


def load_tool(name: str) -> ModuleType:
    """The script tools/<name>.py as a module (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module
