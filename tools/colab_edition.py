"""Generate the Colab/Jupyter editions of the chapters: colab/NN_name.ipynb and colab/errata.ipynb.

    python tools/colab_edition.py            # (re)write colab/ from the chapters
    python tools/colab_edition.py --check    # exit 1 if colab/ is stale

The chapters (notebooks/NN_*.ipynb, book/errata.ipynb) are written in MyST for Jupyter Book.
Colab and plain Jupyter render Markdown only, so there the roles and directives would show as
raw text and every exercise's solution would be printed open. An edition is the same notebook
with that markup converted to what Jupyter's Markdown renderer understands:

- ``{eq}`label``` -> the equation's number as the book shows it, "(12)"; the labelled display
  ``$$ ... $$ (label)`` -> ``$$ ... \\tag{12} $$``. The book numbers labelled equations in one
  sequence over all its pages, in the order of _toc.yml (and propositions, lemmas and algorithms
  in one sequence per kind); the numbers here are counted the same way;
- ``{cite}`key``` -> "Ho et al. (2020)", linked to the paper (book/references.bib);
- ``{prf:ref}``, ``{ref}`` -> "Proposition 4", the section title or the explicit text, linked
  to the other edition when the target is in another notebook;
- ``{repo}`path``` -> a link to the file in the repository;
- ``:::{admonition} Solution`` with ``:class: dropdown`` -> ``<details><summary>Solution
  </summary> ... </details>`` (closed until clicked); other directives -> a bold title line and
  the body; ``(label)=`` target lines are dropped;
- links to other chapters -> the other edition; links to other pages of the book -> the
  rendered book (GitHub Pages address derived from repository.url).

The Colab badge and the setup cell's ``pip install git+...`` use ``repository.url`` of
_config.yml, the one place the address is written. Outputs are not kept: Colab and Jupyter run
the cells, the rendered book shows the outputs, and the editions stay small and change only when
a chapter's text or code does. Never edit colab/ by hand: change the chapter and run this tool
(tests/test_colab_edition.py fails when colab/ is stale).
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "colab"
CONFIG = ROOT / "_config.yml"
TOC = ROOT / "_toc.yml"
BIB = ROOT / "book" / "references.bib"
COLAB = "https://colab.research.google.com/github/"
BADGE = "https://colab.research.google.com/assets/colab-badge.svg"

ROLE = re.compile(r"\{(?P<role>[a-z]+(?::[a-z]+)?)\}`(?P<body>[^`]*)`")
TARGET = re.compile(r"^\((?P<label>[^()\s]+)\)=[ \t]*\n?", re.MULTILINE)
LABELLED_EQ = re.compile(r"\$\$[ \t]*\((?P<label>[A-Za-z][A-Za-z0-9-]*)\)")
DIRECTIVE = re.compile(r"^(?P<fence>:{3,})\{(?P<name>[a-z][a-z:-]*)\}[ \t]*(?P<title>.*)$")
OPTION = re.compile(r"^:(?P<key>[a-z-]+):[ \t]*(?P<value>.*)$")
CODE_FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,})")
HEADING = re.compile(r"^#{1,6}[ \t]+(?P<title>.+?)[ \t]*$", re.MULTILINE)
LINK = re.compile(r"\]\((?P<target>[^)\s]+)\)")
SETUP_URL = re.compile(r"git\+https?://[^\s\"']+")
BADGE_LINK = re.compile(
    r"\[!\[Open In Colab\]\(" + re.escape(BADGE) + r"\)\]\(" + re.escape(COLAB) + r"[^)]*\)"
)
# sphinx-proof directives and the word the book prints before their number.
PROOF_KINDS = {
    "prf:proposition": "Proposition",
    "prf:lemma": "Lemma",
    "prf:theorem": "Theorem",
    "prf:corollary": "Corollary",
    "prf:definition": "Definition",
    "prf:algorithm": "Algorithm",
    "prf:example": "Example",
    "prf:remark": "Remark",
}


class EditionError(ValueError):
    """The chapters use markup the converter does not know, or a reference that does not
    resolve; the message names the notebook and what to fix."""


# --- the repository address ---------------------------------------------------------------


def repository(config: Path = CONFIG) -> tuple[str, str]:
    """(url, branch) from the repository section of _config.yml."""
    repo = yaml.safe_load(config.read_text()).get("repository") or {}
    url = str(repo.get("url", "")).rstrip("/")
    if not re.fullmatch(r"https://github\.com/[^/\s]+/[^/\s]+", url):
        raise EditionError(
            f"{config}: repository.url must be https://github.com/<owner>/<name>, got {url!r}"
        )
    return url, str(repo.get("branch", "main"))


def book_url(repo_url: str) -> str:
    """The rendered book on GitHub Pages: https://<owner>.github.io/<name>/."""
    owner, name = repo_url.removeprefix("https://github.com/").split("/")
    return f"https://{owner.lower()}.github.io/{name}/"


def colab_url(repo_url: str, branch: str, path: str) -> str:
    return f"{COLAB}{repo_url.removeprefix('https://github.com/')}/blob/{branch}/{path}"


# --- the sources ---------------------------------------------------------------------------


def toc_pages(toc: Path = TOC) -> list[str]:
    """The book's pages (paths without suffix) in reading order."""
    data = yaml.safe_load(toc.read_text())
    pages = [data["root"]]

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                pages.append(entry["file"])
            walk(entry.get("sections"))

    for part in data.get("parts", []):
        walk(part.get("chapters"))
    walk(data.get("chapters"))
    return pages


def sources() -> list[Path]:
    """The notebooks that get an edition, in the book's reading order."""
    found = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")) + [ROOT / "book/errata.ipynb"]
    order = {page: i for i, page in enumerate(toc_pages())}
    return sorted(
        found, key=lambda p: order.get(p.relative_to(ROOT).with_suffix("").as_posix(), 1e9)
    )


def edition_name(source: Path) -> str:
    return source.name  # notebooks/01_x.ipynb -> colab/01_x.ipynb, book/errata.ipynb -> errata


def markdown_text(nb: dict) -> list[str]:
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown"]


# --- the bibliography ----------------------------------------------------------------------


def _bib_field(body: str, name: str) -> str | None:
    m = re.search(rf"\b{name}\s*=\s*", body, re.IGNORECASE)
    if not m:
        return None
    rest = body[m.end() :]
    if rest.startswith("{"):
        depth = 0
        for i, ch in enumerate(rest):
            depth += {"{": 1, "}": -1}.get(ch, 0)
            if depth == 0:
                return rest[1:i]
    if rest.startswith('"'):
        return rest[1 : rest.index('"', 1)]
    return re.match(r"[^,\s}]+", rest).group(0)


def _surname(author: str) -> str:
    author = author.strip().replace("{", "").replace("}", "")
    return author.split(",")[0].strip() if "," in author else author.split()[-1]


def read_bib(path: Path = BIB) -> dict[str, str]:
    """key -> "Ho et al. (2020)" (one author: "Feller (1949)", two: "A and B (year)"), as a
    Markdown link to the entry's url when it has one."""
    out = {}
    text = path.read_text()
    for m in re.finditer(r"^@\w+\s*\{\s*([^,\s]+)\s*,", text, re.MULTILINE):
        end = text.find("\n@", m.end())
        body = text[m.end() : end if end >= 0 else len(text)]
        authors = _bib_field(body, "author") or _bib_field(body, "editor")
        year = _bib_field(body, "year")
        if not authors or not year:
            raise EditionError(f"{path}: entry {m.group(1)} needs an author and a year")
        names = [_surname(a) for a in re.split(r"\s+and\s+", " ".join(authors.split()))]
        who = names[0] if len(names) == 1 else " and ".join(names) if len(names) == 2 else ""
        who = who or f"{names[0]} et al."
        cite = f"{who} ({year})"
        url = _bib_field(body, "url")
        out[m.group(1)] = f"[{cite}]({url})" if url else cite
    return out


# --- what the book numbers -----------------------------------------------------------------


@dataclass
class Target:
    text: str  # what a reference to it reads: "(12)", "Proposition 4", a section title
    source: Path  # the notebook that defines it


@dataclass
class BookIndex:
    equations: dict[str, Target] = field(default_factory=dict)
    proofs: dict[str, Target] = field(default_factory=dict)  # prf labels
    sections: dict[str, Target] = field(default_factory=dict)  # (label)= targets


def _without_code(text: str) -> str:
    """The Markdown with fenced code blocks blanked (labels in code are not targets)."""
    out, fence = [], None
    for line in text.split("\n"):
        m = CODE_FENCE.match(line)
        if fence is None and m:
            fence = m.group(1)
        elif fence is not None and line.strip().startswith(fence):
            fence = None
            out.append("")
            continue
        out.append("" if fence is not None else line)
    return "\n".join(out)


def build_index(paths: list[Path]) -> BookIndex:
    """Number what the book numbers, in reading order, and find every reference target."""
    index, counts, eq = BookIndex(), {}, 0
    for path in paths:
        for text in markdown_text(json.loads(path.read_text())):
            text = _without_code(text)
            events = [(m.start(), "eq", m.group("label")) for m in LABELLED_EQ.finditer(text)]
            lines = text.split("\n")
            offset = 0
            for i, line in enumerate(lines):
                d = DIRECTIVE.match(line)
                if d and d.group("name") in PROOF_KINDS:
                    label = None
                    for opt in lines[i + 1 :]:
                        o = OPTION.match(opt)
                        if not o:
                            break
                        label = o.group("value").strip() if o.group("key") == "label" else label
                    events.append((offset, d.group("name"), label))
                t = re.match(r"^\(([^()\s]+)\)=\s*$", line)
                if t:
                    heading = next((h for h in lines[i + 1 :] if h.strip()), "")
                    h = HEADING.match(heading)
                    index.sections[t.group(1).lower()] = Target(
                        h.group("title") if h else t.group(1), path
                    )
                offset += len(line) + 1
            for _, kind, label in sorted(events, key=lambda e: e[0]):
                if kind == "eq":
                    eq += 1
                    index.equations.setdefault(label.lower(), Target(f"({eq})", path))
                else:
                    counts[kind] = counts.get(kind, 0) + 1
                    if label:
                        index.proofs[label.lower()] = Target(
                            f"{PROOF_KINDS[kind]} {counts[kind]}", path
                        )
    return index


# --- converting one Markdown cell ----------------------------------------------------------


@dataclass
class Context:
    source: Path
    index: BookIndex
    bib: dict[str, str]
    repo_url: str
    branch: str

    def fail(self, what: str) -> EditionError:
        return EditionError(f"{self.source.relative_to(ROOT)}: {what}")


def _link(ctx: Context, text: str, target: Target) -> str:
    if target.source == ctx.source:
        return text
    return f"[{text}]({edition_name(target.source)})"


def convert_role(ctx: Context, role: str, body: str) -> str:
    explicit = re.fullmatch(r"(?P<text>.*\S)\s*<(?P<label>[^<>]+)>", body, re.DOTALL)
    text, label = (explicit["text"], explicit["label"]) if explicit else (None, body.strip())
    if role != "cite" and role != "repo" and role != "doc":
        label = label.lower()  # Sphinx lower-cases labels
    if role == "eq":
        if label not in ctx.index.equations:
            raise ctx.fail(f"{{eq}}`{label}`: no chapter labels an equation {label}")
        return _link(ctx, text or ctx.index.equations[label].text, ctx.index.equations[label])
    if role.startswith("cite"):
        keys = [k.strip() for k in label.split(",") if k.strip()]
        missing = [k for k in keys if k not in ctx.bib]
        if missing:
            raise ctx.fail(f"{{cite}}`{body}`: {', '.join(missing)} not in {BIB.name}")
        return "; ".join(ctx.bib[k] for k in keys)
    if role in ("prf:ref", "ref", "numref"):
        target = ctx.index.proofs.get(label) or ctx.index.sections.get(label)
        if target is None:
            raise ctx.fail(f"{{{role}}}`{body}`: the label {label} is defined nowhere")
        return _link(ctx, text or target.text, target)
    if role == "doc":
        path = (ctx.source.parent / label).resolve()
        return convert_link(ctx, text or path.stem, label)
    if role == "repo":
        path = label.lstrip("/")
        kind = "tree" if path.endswith("/") else "blob"
        shown = text if text else f"`{path}`"
        return f"[{shown}]({ctx.repo_url}/{kind}/{ctx.branch}/{path})"
    raise ctx.fail(f"the role {{{role}}} has no conversion in tools/colab_edition.py: add one")


def convert_link(ctx: Context, text: str, target: str) -> str:
    return f"[{text}]({link_target(ctx, target)})"


def link_target(ctx: Context, target: str) -> str:
    """A relative link of the book -> the other edition (a notebook) or the rendered page."""
    if re.match(r"^[a-z]+:|^#", target):
        return target
    path, _, anchor = target.partition("#")
    resolved = (ctx.source.parent / path).resolve()
    if not resolved.suffix:
        resolved = next(
            (
                p
                for p in (resolved.with_suffix(".ipynb"), resolved.with_suffix(".md"))
                if p.exists()
            ),
            resolved,
        )
    if resolved in {s.resolve() for s in sources()}:
        return edition_name(resolved)  # the anchors of the book are not Jupyter's: dropped
    try:
        page = resolved.relative_to(ROOT).with_suffix(".html").as_posix()
    except ValueError:
        raise ctx.fail(f"the link {target} leaves the repository") from None
    if not resolved.exists():
        raise ctx.fail(f"the link {target} points to no file")
    return book_url(ctx.repo_url) + page + (f"#{anchor}" if anchor else "")


def convert_directive(ctx: Context, name: str, title: str, options: dict, body: str) -> str:
    body = convert_blocks(ctx, body).strip("\n")
    classes = options.get("class", "").split()
    if name == "admonition" and "dropdown" in classes:
        # Blank lines around the body: Jupyter renders Markdown inside <details> only then.
        return f"<details>\n<summary>{title or 'Details'}</summary>\n\n{body}\n\n</details>"
    if name in PROOF_KINDS:
        label = options.get("label", "").lower()
        number = ctx.index.proofs[label].text if label in ctx.index.proofs else PROOF_KINDS[name]
        head = f"**{number}** ({title})" if title else f"**{number}.**"
        return f"{head}\n\n{body}"
    if name == "prf:proof":
        return f"*Proof.* {body} $\\quad\\blacksquare$"
    if name in ("admonition", "note", "warning", "tip", "important", "hint", "caution"):
        word = title or name.capitalize()
        mark = "⚠ " if name == "warning" or "warning" in classes else ""
        return f"**{mark}{word}**\n\n{body}"
    raise ctx.fail(f"the directive {{{name}}} has no conversion in tools/colab_edition.py: add one")


def convert_blocks(ctx: Context, text: str) -> str:
    """Replace every ``:::{name}`` directive (outside code fences) by its conversion."""
    lines, out, i, code = text.split("\n"), [], 0, None
    while i < len(lines):
        line = lines[i]
        fence = CODE_FENCE.match(line)
        if code is not None:
            code = None if line.strip().startswith(code) and fence else code
            out.append(line)
            i += 1
            continue
        if fence:
            code = fence.group(1)
            if re.match(r"^[ \t]*`{3,}\{", line):
                raise ctx.fail(f"the directive {line.strip()!r}: write it as :::{{...}}")
            out.append(line)
            i += 1
            continue
        d = DIRECTIVE.match(line)
        if not d:
            out.append(line)
            i += 1
            continue
        options, i = {}, i + 1
        while i < len(lines) and OPTION.match(lines[i]):
            o = OPTION.match(lines[i])
            options[o.group("key")] = o.group("value").strip()
            i += 1
        body, inner_code = [], None
        while i < len(lines):
            f = CODE_FENCE.match(lines[i])
            if inner_code is None and lines[i].strip() == d.group("fence"):
                break
            if inner_code is None and f:
                inner_code = f.group(1)
            elif inner_code is not None and f and lines[i].strip().startswith(inner_code):
                inner_code = None
            body.append(lines[i])
            i += 1
        else:
            raise ctx.fail(f"{line!r} is never closed by {d.group('fence')}")
        i += 1  # the closing fence
        converted = convert_directive(
            ctx, d.group("name"), d.group("title").strip(), options, "\n".join(body)
        )
        # A directive is a block of its own: keep blank lines around it.
        if out and out[-1].strip():
            out.append("")
        out.extend(converted.split("\n"))
        if i < len(lines) and lines[i].strip():
            out.append("")
    return "\n".join(out)


def _outside_fences(text: str, convert) -> str:
    """Apply convert to the parts of text outside fenced code blocks."""
    parts = re.split(
        r"(^[ \t]*```[^\n]*\n.*?^[ \t]*```[ \t]*$)", text, flags=re.MULTILINE | re.DOTALL
    )
    return "".join(p if k % 2 else convert(p) for k, p in enumerate(parts))


def convert_markdown(ctx: Context, text: str) -> str:
    text = TARGET.sub("", text)
    text = convert_blocks(ctx, text)

    def tag(m: re.Match) -> str:
        label = m.group("label").lower()
        if label not in ctx.index.equations:
            return m.group(0)
        return f"\\tag{{{ctx.index.equations[label].text[1:-1]}}} $$"

    def inline(part: str) -> str:
        # The book's own links first: the roles' conversions write links of their own.
        part = LINK.sub(lambda m: f"]({link_target(ctx, m.group('target'))})", part)
        part = LABELLED_EQ.sub(tag, part)
        return ROLE.sub(lambda m: convert_role(ctx, m.group("role"), m.group("body")), part)

    return _outside_fences(text, inline)


# --- a whole notebook ----------------------------------------------------------------------


def edition(source: Path, index: BookIndex, bib: dict[str, str], repo: tuple[str, str]) -> dict:
    repo_url, branch = repo
    ctx = Context(source, index, bib, repo_url, branch)
    nb = json.loads(source.read_text())
    new = copy.deepcopy(nb)
    me = colab_url(repo_url, branch, f"colab/{edition_name(source)}")
    badge = f"[![Open In Colab]({BADGE})]({me})"
    origin = source.relative_to(ROOT).as_posix()
    note = (
        f"*The Colab and Jupyter edition of this page, generated from `{origin}` by "
        f"`tools/colab_edition.py`. The book renders it, with its figures, at "
        f"<{book_url(repo_url)}{Path(origin).with_suffix('.html').as_posix()}>.*"
    )
    for k, cell in enumerate(new["cells"]):
        text = "".join(cell["source"])
        if cell["cell_type"] == "markdown":
            text = convert_markdown(ctx, text)
            if k == 0:
                if BADGE_LINK.search(text):
                    text = BADGE_LINK.sub(lambda _: badge, text, count=1)
                else:  # after the title line
                    title, _, rest = text.partition("\n")
                    text = f"{title}\n\n{badge}\n{rest}"
                text = text.replace(badge, f"{badge}\n\n{note}", 1)
        elif cell["cell_type"] == "code":
            if "pip" in text and "install" in text:
                text = SETUP_URL.sub(f"git+{repo_url}", text)
            cell["outputs"], cell["execution_count"] = [], None
            meta = cell.get("metadata", {})
            meta.pop("execution", None)
            if {"hide-input", "hide-cell"} & set(meta.get("tags", [])):
                meta.setdefault("jupyter", {})["source_hidden"] = True  # folded, as in the book
            cell["metadata"] = meta
        cell["source"] = text.splitlines(keepends=True)
    new["metadata"] = {
        "kernelspec": nb["metadata"].get("kernelspec", {}),
        "language_info": {"name": "python"},
        "colab": {"provenance": [], "toc_visible": True},
    }
    return new


def write_all(out: Path = OUT) -> list[Path]:
    paths = sources()
    index, bib, repo = build_index(paths), read_bib(), repository()
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for source in paths:
        nb = edition(source, index, bib, repo)
        dst = out / edition_name(source)
        tmp = dst.with_name(dst.name + ".tmp")
        tmp.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
        tmp.replace(dst)  # a crash never leaves a half-written edition
        written.append(dst)
    return written


def stale(out: Path = OUT) -> list[str]:
    """The editions that differ from what the generator writes now (or are missing or extra)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        fresh = {p.name: p.read_text() for p in write_all(Path(tmp))}
    have = {p.name: p.read_text() for p in out.glob("*.ipynb")} if out.is_dir() else {}
    return sorted(n for n in fresh.keys() | have.keys() if fresh.get(n) != have.get(n))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if colab/ is stale")
    args = parser.parse_args(argv)
    try:
        if args.check:
            bad = stale()
            if bad:
                print(f"colab/ is stale ({', '.join(bad)}): run python tools/colab_edition.py")
                return 1
            print("colab/ is up to date")
            return 0
        for path in write_all():
            print(f"wrote {path.relative_to(ROOT)}")
    except EditionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
