"""Run one chapter as "Open in Colab" would, and check that the path works (``make colab-check``).

What Colab gives a reader, rebuilt here from local parts:

- an empty folder holding only the notebook, and a fresh home (an empty ``~/.cache``);
- a Python that has torch and Jupyter but not ddpm_lib: a new virtual environment that sees this
  environment's packages through a folder of links to them, minus ddpm_lib (so the repository's
  editable ddpm_lib is invisible, while pip counts torch as installed and keeps it);
- the setup cell run, not skipped, with its ``git+https://...`` address rewritten to a local git
  URL of this clone (a one-commit snapshot of the working tree, so uncommitted work is tested);
- the data reachable only through the download path: ``$DDPM_DATA_MIRROR`` points at a local
  HTTP server serving ``../shared/data`` (no folder with an offline copy is searched).

The notebook runs in quick mode (DDPM_QUICK=1). The checks: no cell fails; the setup cell
installed ddpm_lib from the git URL, into the new environment, without installing torch; the
data was downloaded from the mirror into the fresh home's cache. A log of the run is printed
(every cell's first line, its time and its text output). Exit status 0 when all checks pass.

    .venv/bin/python tools/colab_check.py [--notebook colab/01_forward_recurrence.ipynb]
        [--data ../shared/data] [--keep]
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What the Colab badge opens: the chapter's Colab edition (colab/, made by tools/colab_edition.py)
# where there is one, else the chapter itself.
EDITION = ROOT / "colab" / "01_forward_recurrence.ipynb"
DEFAULT_NOTEBOOK = EDITION if EDITION.is_file() else ROOT / "notebooks" / EDITION.name
DEFAULT_DATA = ROOT.parent / "shared" / "data"
INSTALL_URL = re.compile(r"git\+https?://[^\s\"']+")
# What the links folder leaves out: ddpm_lib itself (and its editable-install hooks) and .pth
# files (their paths are not wanted there). pip is seen through it: Colab's pip is recent, and
# the pip that `python -m venv` bundles with an older Python rejects git+file:// requirements.
HIDDEN = re.compile(r"^(_*ddpm|__editable__)|\.pth$", re.IGNORECASE)

# The proposed Colab setup cell (problem 25 of the newcomer report): installs ddpm_lib when it is
# missing or older than the version the notebook was written for, keeping Colab's torch. The
# chapters carry it as their setup cell; tests/test_colab_path.py checks its logic.
SETUP_CELL = """\
# Colab setup: installs ddpm_lib when it is missing or older than this notebook
# needs, keeping Colab's own torch.
import importlib.metadata
import importlib.util
import subprocess
import sys

from packaging.version import Version

NEEDS = Version("0.2.0")  # the ddpm_lib version this notebook was written for
try:
    have = Version(importlib.metadata.version("ddpm_lib"))
except importlib.metadata.PackageNotFoundError:
    have = None
if importlib.util.find_spec("ddpm_lib") is None or (have and have < NEEDS):
    url = "git+https://github.com/ddpm-book/ddpm-book"
    pip = [sys.executable, "-m", "pip", "install", "-q", "-U"]
    subprocess.run([*pip, f"ddpm_lib @ {url}"], check=True)
"""


class CheckFailed(Exception):
    """One of the checks failed; the message says which and what was seen."""


def log(message: str = "") -> None:
    print(message, flush=True)


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kwargs)


def snapshot_clone(repo: Path, dst: Path) -> str:
    """A one-commit git repository at ``dst`` holding ``repo``'s working tree (tracked files as
    they are now, plus untracked files git does not ignore); returns its git+file:// URL."""
    files = run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=repo
    ).stdout.split("\0")
    dst.mkdir(parents=True)
    for name in filter(None, files):
        src = repo / name
        if src.is_file():  # a tracked file deleted in the working tree is left out
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / name)
    ident = ["-c", "user.name=colab-check", "-c", "user.email=colab-check@localhost"]
    run(["git", "init", "-q", "-b", "main"], cwd=dst)
    run(["git", "add", "-A"], cwd=dst)
    run(["git", *ident, "commit", "-q", "-m", "working tree of " + str(repo)], cwd=dst)
    return f"git+file://{dst}"


def make_environment(work: Path) -> Path:
    """A new venv seeing this environment's packages but not ddpm_lib; returns its python."""
    venv = work / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    links = work / "packages"
    links.mkdir()
    here = Path(sysconfig.get_paths()["purelib"])
    for entry in sorted(here.iterdir()):
        if not HIDDEN.search(entry.name) and entry.name != "__pycache__":
            (links / entry.name).symlink_to(entry)
    purelib = run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
    (Path(purelib.stdout.strip()) / "_colab_check_packages.pth").write_text(f"{links}\n")
    return python


def kernel_spec(work: Path, python: Path) -> Path:
    """A Jupyter data folder with the kernel "colab-check", which runs ``python``."""
    folder = work / "jupyter"
    spec = folder / "kernels" / "colab-check"
    spec.mkdir(parents=True)
    argv = [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    spec_json = {"argv": argv, "display_name": "colab-check", "language": "python"}
    (spec / "kernel.json").write_text(json.dumps(spec_json))
    return folder


class Mirror:
    """``folder`` served over HTTP on 127.0.0.1 (a free port), logging the paths asked for."""

    def __init__(self, folder: Path) -> None:
        self.requests: list[str] = []
        requests = self.requests

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                requests.append(f"{self.command} {self.path} -> {args[1] if len(args) > 1 else ''}")

        handler = functools.partial(Handler, directory=str(folder))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Mirror:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def colab_copy(notebook: Path, content: Path, install_url: str) -> Path:
    """The notebook alone in ``content``, its setup cell installing from ``install_url``."""
    nb = json.loads(notebook.read_text())
    setup = [
        c
        for c in nb["cells"]
        if c["cell_type"] == "code"
        and "pip" in "".join(c["source"])
        and "install" in "".join(c["source"])
    ]
    if len(setup) != 1:
        raise CheckFailed(f"{notebook}: expected one setup cell (pip install), found {len(setup)}")
    source = "".join(setup[0]["source"])
    if len(INSTALL_URL.findall(source)) != 1:
        raise CheckFailed(f"{notebook}: the setup cell has no single git+https:// address")
    setup[0]["source"] = INSTALL_URL.sub(install_url, source)
    content.mkdir(parents=True)
    copy = content / notebook.name
    copy.write_text(json.dumps(nb, indent=1))
    return copy


def kernel_environment(home: Path, python: Path, mirror: str) -> dict[str, str]:
    """The environment of a fresh runtime: a new home, the new venv first on PATH, quick mode,
    the data mirror; none of this machine's ddpm_lib settings, Python paths or caches (its pip
    settings are kept: they say where packages come from, as Colab's own do)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DDPM_", "PYTHON", "VIRTUAL_ENV", "JUPYTER", "XDG_CACHE_HOME"))
    }
    env.update(
        HOME=str(home),
        PATH=f"{python.parent}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}",
        VIRTUAL_ENV=str(python.parent.parent),
        DDPM_QUICK="1",
        DDPM_DATA_MIRROR=mirror,
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
        MPLBACKEND="module://matplotlib_inline.backend_inline",
    )
    return env


def cell_seconds(cell: dict) -> float | None:
    timing = cell.get("metadata", {}).get("execution", {})
    try:
        start = datetime.fromisoformat(timing["iopub.execute_input"].replace("Z", "+00:00"))
        end = datetime.fromisoformat(timing["shell.execute_reply"].replace("Z", "+00:00"))
    except (KeyError, ValueError):
        return None
    return (end - start).total_seconds()


def text_of(output: dict) -> str:
    if output["output_type"] == "stream":
        return "".join(output["text"])
    if output["output_type"] == "error":
        return "\n".join(output["traceback"][-3:])
    data = output.get("data", {})
    if "text/plain" in data and not any(k.startswith("image/") for k in data):
        return "".join(data["text/plain"])
    kinds = [k for k in data if k != "text/plain"]
    return f"[{', '.join(kinds)}]" if kinds else ""


def print_cells(nb: dict, max_lines: int = 6) -> None:
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        lines = "".join(cell["source"]).strip().splitlines() or [""]
        seconds = cell_seconds(cell)
        took = f"{seconds:5.1f} s" if seconds is not None else "  -    "
        log(f"[cell {i:2d}] {took}  {lines[0][:80]}")
        for output in cell.get("outputs", []):
            text = re.sub(r"\x1b\[[0-9;]*m", "", text_of(output)).rstrip()
            shown = [line for line in text.splitlines() if line.strip()][:max_lines]
            for line in shown:
                log(f"           | {line[:100]}")


def execute(copy: Path, jupyter_path: Path, env: dict[str, str], timeout: int) -> dict:
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    os.environ["JUPYTER_PATH"] = str(jupyter_path)  # where the kernel spec is looked up
    nb = nbformat.read(copy, as_version=4)
    client = NotebookClient(
        nb,
        kernel_name="colab-check",
        timeout=timeout,
        startup_timeout=120,
        resources={"metadata": {"path": str(copy.parent)}},
    )
    try:
        client.execute(env=env, cwd=str(copy.parent))
    except CellExecutionError as err:
        print_cells(nb)
        raise CheckFailed(f"a cell failed:\n{err}") from err
    finally:
        nbformat.write(nb, copy)
    return nb


def check_install(python: Path, clone_url: str, env: dict[str, str], cwd: Path) -> str:
    """ddpm_lib in the new venv, installed from the git URL; torch still the environment's."""
    probe = (
        "import importlib.metadata as m, json, ddpm_lib, torch; "
        "d = m.distribution('ddpm_lib'); "
        "print(json.dumps({'file': ddpm_lib.__file__, 'version': ddpm_lib.__version__, "
        "'direct_url': json.loads(d.read_text('direct_url.json') or '{}'), "
        "'torch': torch.__file__}))"
    )
    found = json.loads(run([str(python), "-c", probe], env=env, cwd=cwd).stdout)
    venv = python.parent.parent.resolve()
    if not Path(found["file"]).resolve().is_relative_to(venv):
        raise CheckFailed(f"ddpm_lib was imported from {found['file']}, not from {venv}")
    url = found["direct_url"].get("url", "")
    if f"git+{url}" != clone_url or "vcs_info" not in found["direct_url"]:
        raise CheckFailed(f"ddpm_lib was not installed from {clone_url}: {found['direct_url']}")
    if Path(found["torch"]).resolve().is_relative_to(venv):
        raise CheckFailed(f"the setup cell installed torch into {venv}: it must keep Colab's")
    commit = found["direct_url"]["vcs_info"].get("commit_id", "?")[:12]
    return f"ddpm_lib {found['version']} from {url} (commit {commit}), torch kept"


def check_data(home: Path, mirror: Mirror) -> str:
    cache = home / ".cache" / "ddpm_lib" / "data"
    downloaded = sorted(p.relative_to(cache).as_posix() for p in cache.rglob("*") if p.is_file())
    served = [r for r in mirror.requests if r.startswith("GET") and r.endswith("200")]
    if not downloaded or not served:
        raise CheckFailed(
            f"no data came through the mirror: in {cache}: {downloaded}; "
            f"requests: {mirror.requests}"
        )
    return f"{len(served)} files from the mirror into {cache}: {', '.join(downloaded)}"


def offline_copies_visible(work: Path) -> list[Path]:
    """Folders ``shared/data`` that ddpm_lib would search from ``work`` (there must be none)."""
    return [
        a / "shared" / "data" for a in (work, *work.parents) if (a / "shared" / "data").is_dir()
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--notebook", type=Path, default=DEFAULT_NOTEBOOK)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the mirror's folder")
    parser.add_argument("--timeout", type=int, default=300, help="seconds per cell")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args(argv)
    if not (args.data / "MNIST" / "raw").is_dir():
        log(f"colab-check: no MNIST/raw under {args.data}: pass --data, a folder laid out like")
        log("  a data root (MNIST/raw/<files>), e.g. the offline copy ../shared/data")
        return 2
    start = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="colab_check_")).resolve()
    ok = False
    try:
        if visible := offline_copies_visible(work):
            raise CheckFailed(f"an offline data copy is visible from {work}: {visible}")
        log(f"colab-check: {args.notebook.name} as Colab would run it, in {work}")
        clone_url = snapshot_clone(ROOT, work / "clone")
        log(f"  package source: {clone_url} (a snapshot of {ROOT}'s working tree)")
        python = make_environment(work)
        log(f"  runtime: {python} (torch and Jupyter visible, ddpm_lib not)")
        jupyter_path = kernel_spec(work, python)
        home, content = work / "home", work / "content"
        home.mkdir()
        copy = colab_copy(args.notebook, content, clone_url)
        log(f"  notebook: {copy} (alone in its folder); HOME={home} (empty)")
        with Mirror(args.data) as mirror:
            log(f"  data: DDPM_DATA_MIRROR={mirror.url} serving {args.data}; DDPM_QUICK=1")
            log()
            t0 = time.monotonic()
            env = kernel_environment(home, python, mirror.url)
            nb = execute(copy, jupyter_path, env, args.timeout)
            print_cells(nb)
            log(f"\n  ran in {time.monotonic() - t0:.0f} s; mirror requests:")
            for request in mirror.requests:
                log(f"    {request}")
            results = [
                "every cell ran without an error",
                check_install(python, clone_url, env, content),
                check_data(home, mirror),
            ]
        log()
        for line in results:
            log(f"  ok: {line}")
        log(f"colab-check passed in {time.monotonic() - start:.0f} s")
        ok = True
        return 0
    except CheckFailed as err:
        log(f"\ncolab-check FAILED: {err}")
        return 1
    except subprocess.CalledProcessError as err:
        log(f"\ncolab-check FAILED: {' '.join(map(str, err.cmd))} exited {err.returncode}")
        log(err.stdout or "")
        log(err.stderr or "")
        return 1
    finally:
        if ok and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"  the scratch folder is kept for inspection: {work}")


if __name__ == "__main__":
    sys.exit(main())
