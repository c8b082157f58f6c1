"""Packaging: a wheel built from a clean copy of the repository holds every ddpm_lib module."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Build a wheel from the files git knows (tracked, or new and not ignored): no build
    folders or egg-info from earlier installs, as in a fresh clone."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs the git checkout to know which files a clone holds")
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout.split("\0")  # fmt: skip
    src = tmp_path_factory.mktemp("clone")
    for name in filter(None, files):
        if (ROOT / name).is_file() and not name.startswith(("checkpoints/", "notebooks/")):
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(out), str(src)],
        check=True, capture_output=True,
    )  # fmt: skip
    (built,) = out.glob("ddpm_lib-*.whl")
    return built


def test_the_wheel_holds_every_module_of_every_subpackage(wheel):
    with zipfile.ZipFile(wheel) as z:
        inside = {n for n in z.namelist() if n.startswith("ddpm_lib/")}
    expected = {p.relative_to(ROOT).as_posix() for p in (ROOT / "ddpm_lib").rglob("*.py")}
    assert expected - inside == set(), f"missing from the wheel: {sorted(expected - inside)}"
    subpackages = {p.parent.name for p in (ROOT / "ddpm_lib").glob("*/__init__.py")}
    assert subpackages >= {"nets", "accel", "training", "evaluation"}


def test_the_wheel_has_the_command_line_entry_point(wheel):
    with zipfile.ZipFile(wheel) as z:
        entry = next(n for n in z.namelist() if n.endswith("entry_points.txt"))
        assert "ddpm = ddpm_lib.cli:main" in z.read(entry).decode()
