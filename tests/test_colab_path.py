"""Specification of the Colab path: the setup cell's logic and tools/colab_check.py's set-up.

The whole path (a chapter run as Colab would run it) is `make colab-check`, too slow for a unit
test; these tests pin the pieces it relies on.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.version import Version

import ddpm_lib

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import colab_check  # noqa: E402

SETUP = colab_check.SETUP_CELL


def run_setup_cell(monkeypatch, *, found: bool, version: str | None) -> list[list[str]]:
    """Execute the setup cell with ddpm_lib ``found`` or not, at ``version`` (None: no
    installed distribution); returns the commands it ran."""
    commands: list[list[str]] = []

    def find_spec(name, *args, **kwargs):
        return object() if name == "ddpm_lib" and found else None

    def dist_version(name):
        if version is None:
            raise importlib.metadata.PackageNotFoundError(name)
        return version

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    monkeypatch.setattr(importlib.metadata, "version", dist_version)
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: commands.append(cmd))
    exec(compile(SETUP, "<setup cell>", "exec"), {})
    return commands


def needs() -> str:
    match = re.search(r'NEEDS = Version\("([^"]+)"\)', SETUP)
    assert match, "the setup cell names the version it needs"
    return match.group(1)


def test_setup_cell_installs_ddpm_lib_when_it_is_missing(monkeypatch):
    commands = run_setup_cell(monkeypatch, found=False, version=None)
    assert len(commands) == 1
    assert commands[0][1:4] == ["-m", "pip", "install"]
    assert commands[0][-1].startswith("ddpm_lib @ git+https://")


def test_setup_cell_upgrades_a_copy_older_than_the_notebook_needs(monkeypatch):
    older = f"{Version(needs()).major}.{Version(needs()).minor}.{Version(needs()).micro}.dev0"
    commands = run_setup_cell(monkeypatch, found=True, version=older)
    assert len(commands) == 1 and "-U" in commands[0]


@pytest.mark.parametrize("offset", ["same", "newer"])
def test_setup_cell_keeps_a_copy_at_or_above_the_version_needed(monkeypatch, offset):
    v = Version(needs())
    version = needs() if offset == "same" else f"{v.major}.{v.minor + 1}.0"
    assert run_setup_cell(monkeypatch, found=True, version=version) == []


def test_setup_cell_keeps_a_source_checkout_that_has_no_installed_metadata(monkeypatch):
    # ddpm_lib importable from a folder on the path (a clone), not pip-installed.
    assert run_setup_cell(monkeypatch, found=True, version=None) == []


def test_setup_cell_never_asks_for_a_version_newer_than_the_library():
    assert Version(needs()) <= Version(ddpm_lib.__version__)


def test_setup_cell_keeps_torch_and_is_found_by_the_notebook_tests_rules():
    # tests/test_notebooks.py::test_colab_setup_cell_is_skipped_by_tests_and_book_and_keeps_torch
    assert 'find_spec("ddpm_lib")' in SETUP
    pip_lines = [line for line in SETUP.splitlines() if '"pip"' in line]
    assert pip_lines and not any(re.search(r"\btorch", line) for line in pip_lines)
    assert len(colab_check.INSTALL_URL.findall(SETUP)) == 1


def test_colab_copy_is_alone_in_its_folder_and_installs_from_the_local_url(tmp_path):
    notebook = ROOT / "notebooks" / "01_forward_recurrence.ipynb"
    copy = colab_check.colab_copy(notebook, tmp_path / "content", "git+file:///tmp/clone")
    assert [p.name for p in (tmp_path / "content").iterdir()] == [notebook.name]
    cells = json.loads(copy.read_text())["cells"]
    setup = [c for c in cells if "pip" in "".join(c["source"])]
    assert "git+file:///tmp/clone" in "".join(setup[0]["source"])
    assert "git+https://" not in "".join(setup[0]["source"])


def test_colab_copy_refuses_a_notebook_without_a_setup_cell(tmp_path):
    notebook = tmp_path / "plain.ipynb"
    notebook.write_text(json.dumps({"cells": [], "metadata": {}, "nbformat": 4}))
    with pytest.raises(colab_check.CheckFailed, match="expected one setup cell"):
        colab_check.colab_copy(notebook, tmp_path / "content", "git+file:///x")


def test_the_kernel_gets_a_fresh_home_quick_mode_the_mirror_and_no_ddpm_settings(
    monkeypatch, tmp_path
):
    monkeypatch.setenv("DDPM_DATA_ROOT", "/somewhere/with/data")
    monkeypatch.setenv("DDPM_CHECKPOINTS", "/somewhere/with/checkpoints")
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    python = tmp_path / "venv" / "bin" / "python"
    env = colab_check.kernel_environment(tmp_path / "home", python, "http://127.0.0.1:1/")
    assert env["HOME"] == str(tmp_path / "home") and env["DDPM_QUICK"] == "1"
    assert env["DDPM_DATA_MIRROR"] == "http://127.0.0.1:1/"
    assert env["PATH"].startswith(str(python.parent))
    assert not {"DDPM_DATA_ROOT", "DDPM_CHECKPOINTS", "PYTHONPATH"} & set(env)


def test_an_offline_copy_beside_the_scratch_folder_is_detected(tmp_path):
    (tmp_path / "shared" / "data").mkdir(parents=True)
    (tmp_path / "work").mkdir()
    assert colab_check.offline_copies_visible(tmp_path / "work") == [tmp_path / "shared" / "data"]


def test_the_links_folder_hides_ddpm_lib_but_not_torch_or_pip():
    hidden = colab_check.HIDDEN
    for name in ("ddpm_lib", "ddpm_lib-0.1.0.dist-info", "__editable__.ddpm_lib-0.1.0.pth"):
        assert hidden.search(name), name
    for name in ("torch", "torch-2.4.0.dist-info", "pip", "ipykernel", "packaging"):
        assert not hidden.search(name), name
