"""Generate book/equation_index.md: every labelled equation, its function and its tests.

    python tools/equation_index.py            # write the page
    python tools/equation_index.py --check    # exit 1 if the page is stale or a label is
                                              # missing its function or its test

Where the links come from:
- the chapters (notebooks/NN_*.ipynb and the book's executed pages book/*.ipynb) label
  equations as ``$$ ... $$ (eq-chN-name)`` and algorithms as ``:label: alg-chN-name``;
- a function, method or class of ddpm_lib whose docstring names a label implements it;
- a test function in tests/ whose docstring or comments name a label checks it.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "book" / "equation_index.md"
LABEL = re.compile(r"\b((?:eq|alg)-(?:ch\d+|errata)-[A-Za-z0-9]+(?:-[A-Za-z0-9]+)*)")
DEFINED = re.compile(
    r"\$\$\s*\((?P<eq>eq-[A-Za-z0-9-]+)\)|:label:\s*(?P<alg>alg-[A-Za-z0-9-]+)", re.MULTILINE
)


@dataclass
class Entry:
    label: str
    page: str  # the chapter's path without suffix, e.g. notebooks/01_forward_recurrence
    title: str
    functions: list[str] = field(default_factory=list)  # "module.Qual.name"
    tests: list[str] = field(default_factory=list)  # "tests/file.py::test_name"


def chapter_pages() -> list[Path]:
    return sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")) + sorted(
        (ROOT / "book").glob("*.ipynb")
    )


def labels_in_chapters() -> dict[str, Entry]:
    """Every label defined in a chapter, in reading order."""
    out: dict[str, Entry] = {}
    for path in chapter_pages():
        cells = json.loads(path.read_text())["cells"]
        text = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
        title = next(
            (line[2:].strip() for line in text.splitlines() if line.startswith("# ")), path.stem
        )
        page = path.relative_to(ROOT).with_suffix("").as_posix()
        for m in DEFINED.finditer(text):
            label = m.group("eq") or m.group("alg")
            out.setdefault(label, Entry(label, page, title))
    return out


def _defs(tree: ast.AST, prefix: str = ""):
    """(qualified name, node) of every function, method and class, at any depth."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            name = f"{prefix}{node.name}"
            yield name, node
            yield from _defs(node, f"{name}.")


def labels_in_library() -> dict[str, list[str]]:
    """label -> the ddpm_lib functions whose docstrings name it."""
    out: dict[str, list[str]] = {}
    for path in sorted((ROOT / "ddpm_lib").rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        module = module.removesuffix(".__init__")
        for name, node in _defs(ast.parse(path.read_text())):
            for label in sorted(set(LABEL.findall(ast.get_docstring(node) or ""))):
                out.setdefault(label, []).append(f"{module}.{name}")
    return out


def labels_in_tests() -> dict[str, list[str]]:
    """label -> the tests whose docstring or comments name it."""
    out: dict[str, list[str]] = {}
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        source = path.read_text()
        for name, node in _defs(ast.parse(source)):
            if not name.split(".")[-1].startswith("test"):
                continue
            text = ast.get_source_segment(source, node) or ""
            for label in sorted(set(LABEL.findall(text))):
                out.setdefault(label, []).append(f"tests/{path.name}::{name}")
    return out


def collect() -> tuple[dict[str, Entry], list[str]]:
    """The entries, and the problems: labels without a function or a test, and labels named
    in the library or the tests that no chapter defines (a typo, or a removed equation)."""
    entries = labels_in_chapters()
    functions, tests = labels_in_library(), labels_in_tests()
    problems = []
    for label, entry in entries.items():
        entry.functions = functions.get(label, [])
        entry.tests = tests.get(label, [])
        if not entry.functions:
            problems.append(f"{label} ({entry.page}): no ddpm_lib docstring names it")
        if not entry.tests:
            problems.append(f"{label} ({entry.page}): no test in tests/ names it")
    for label, where in sorted({**functions, **tests}.items()):
        if label not in entries:
            problems.append(f"{label} is named in {where[0]} but no chapter defines it")
    return entries, problems


def _source_link(function: str) -> str:
    module, *_ = function.split(".")
    parts = function.split(".")
    # the longest prefix that is a module file (or package __init__) is the file
    for k in range(len(parts), 0, -1):
        candidate = ROOT / Path(*parts[:k])
        if candidate.with_suffix(".py").is_file():
            path, short = candidate.with_suffix(".py"), ".".join(parts[k:])
            break
        if (candidate / "__init__.py").is_file():
            path, short = candidate / "__init__.py", ".".join(parts[k:])
            break
    rel = path.relative_to(ROOT).as_posix()
    return f"{{repo}}`{short} <{rel}>` ({'.'.join(parts[1:k])})"


def _test_link(test: str) -> str:
    file, name = test.split("::")
    return f"{{repo}}`{name.split('.')[-1]} <{file}>`"


def render(entries: dict[str, Entry]) -> str:
    lines = [
        "# Equation index",
        "",
        "Every labelled equation and algorithm of the book, with the function of `ddpm_lib` that",
        "implements it (its docstring names the label) and the tests that check it (their",
        "docstrings or comments name it). Derivation steps point to the function that computes",
        "the result they lead to. This page is generated by `python tools/equation_index.py`;",
        "`make test` fails when it is stale, or when a label has no function or no test.",
        "",
    ]
    page = None
    for entry in entries.values():
        if entry.page != page:
            page = entry.page
            lines += [f"## [{entry.title}](../{page}.ipynb)", ""]
        ref = (
            f"{{eq}}`{entry.label}`"
            if entry.label.startswith("eq-")
            else f"{{prf:ref}}`{entry.label}`"
        )
        lines.append(f"- {ref} `{entry.label}`")
        lines.append("  - implemented by " + ", ".join(map(_source_link, entry.functions)))
        lines.append("  - checked by " + ", ".join(map(_test_link, entry.tests)))
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if stale or incomplete")
    args = parser.parse_args()
    entries, problems = collect()
    text = render(entries)
    if args.check:
        stale = not PAGE.exists() or PAGE.read_text() != text
        for p in problems:
            print(p, file=sys.stderr)
        if stale:
            print(
                f"{PAGE.relative_to(ROOT)} is stale: run python tools/equation_index.py",
                file=sys.stderr,
            )
        return 1 if problems or stale else 0
    PAGE.write_text(text)
    print(f"wrote {PAGE.relative_to(ROOT)}: {len(entries)} labels, {len(problems)} problems")
    for p in problems:
        print("  " + p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
