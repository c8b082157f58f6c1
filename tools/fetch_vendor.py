"""Unpack pinned browser libraries into _build/vendor so the built book works offline.

Jupyter Book 1.x loads MathJax (and, on pages with widgets, RequireJS and the Jupyter widgets
embedder) from CDNs. The book is read and tested on machines without internet, so `make book`
serves them from the site itself: _config.yml adds _build/vendor to html_static_path and points
mathjax_path and nb_ipywidgets_js at these copies.

The files come from the npm registry: `npm pack <name>@<version>` when npm is installed,
otherwise the same tarball is downloaded from the registry directly. Each tarball's SHA-256 is
checked before anything is unpacked.

    python tools/fetch_vendor.py          # a no-op for packages already unpacked
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENDOR = ROOT / "_build" / "vendor"  # _config.yml: html_static_path


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    sha256: str
    folder: str  # the folder inside the tarball to keep (npm tarballs unpack into package/)
    dest: str  # under _build/vendor
    check: str  # a file that must exist afterwards (relative to dest)


PACKAGES = [
    # MathJax 3: _config.yml mathjax_path = mathjax/tex-mml-chtml.js
    Package(
        "mathjax",
        "3.2.2",
        "1b9c0a1c44df864e915690558e72adb9cc5203360daefd385084ced3b6c64c09",
        "package/es5",
        "mathjax",
        "tex-mml-chtml.js",
    ),
    # The two scripts myst-nb adds to pages that hold widget state (ipywidgets).
    Package(
        "requirejs",
        "2.3.4",
        "583693b373f6ab0528ea6644fab5cdb5822011c9b5b1ff1615590d5f2f473dcd",
        "package",
        "requirejs",
        "require.js",
    ),
    Package(
        "@jupyter-widgets/html-manager",
        "1.0.6",
        "6c198ceb99ba7e7526990a1de16e8147ad7d3a714e3fb06741183623c04b5f6e",
        "package/dist",
        "jupyter-widgets",
        "embed-amd.js",
    ),
]


def registry() -> str:
    url = os.environ.get("NPM_CONFIG_REGISTRY") or os.environ.get("npm_config_registry")
    return (url or "https://registry.npmjs.org/").rstrip("/")


def fetch_tarball(pkg: Package, workdir: Path) -> Path:
    """The npm tarball of pkg in workdir: via `npm pack` if npm exists, else over HTTPS."""
    npm = shutil.which("npm")
    if npm:
        subprocess.run(
            [
                npm,
                "pack",
                f"{pkg.name}@{pkg.version}",
                "--pack-destination",
                str(workdir),
                "--silent",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        found = list(workdir.glob("*.tgz"))
        if len(found) == 1:
            return found[0]
        print(f"npm pack {pkg.name} did not leave one tarball; downloading it", file=sys.stderr)
    base = pkg.name.split("/")[-1]
    url = f"{registry()}/{pkg.name}/-/{base}-{pkg.version}.tgz"
    dst = workdir / f"{base}-{pkg.version}.tgz"
    with urllib.request.urlopen(url, timeout=120) as response, open(dst, "wb") as f:
        shutil.copyfileobj(response, f)
    return dst


def install(pkg: Package, vendor: Path, force: bool) -> bool:
    """Unpack pkg into vendor/pkg.dest; False (with a message) when the tarball is not trusted."""
    dest = vendor / pkg.dest
    stamp = dest / ".version"
    if not force and (dest / pkg.check).is_file() and stamp.is_file():
        if stamp.read_text().strip() == f"{pkg.name}@{pkg.version}":
            return True
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "dl").mkdir()
        tarball = fetch_tarball(pkg, work / "dl")
        digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
        if digest != pkg.sha256:
            print(
                f"{tarball.name} has SHA-256 {digest}, expected {pkg.sha256}: refusing it",
                file=sys.stderr,
            )
            return False
        unpacked = work / "unpacked"
        prefix = pkg.folder.rstrip("/") + "/"
        with tarfile.open(tarball) as tar:
            members = [
                m
                for m in tar.getmembers()
                if m.name.startswith(prefix) and not m.name.endswith(".map")
            ]
            try:
                tar.extractall(unpacked, members=members, filter="data")
            except TypeError:  # Python < 3.10.12 / 3.11.4: no extraction filters
                tar.extractall(unpacked, members=members)
        staged = unpacked / pkg.folder
        (staged / ".version").write_text(f"{pkg.name}@{pkg.version}\n")
        if not (staged / pkg.check).is_file():
            print(f"{pkg.name}@{pkg.version} has no {pkg.folder}/{pkg.check}", file=sys.stderr)
            return False
        if dest.exists():
            shutil.rmtree(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staged), str(dest))
    shown = dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest
    print(f"{pkg.name}@{pkg.version} unpacked into {shown}")
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vendor", type=Path, default=VENDOR)
    parser.add_argument("--force", action="store_true", help="fetch even if already present")
    args = parser.parse_args()
    ok = all([install(pkg, args.vendor, args.force) for pkg in PACKAGES])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
