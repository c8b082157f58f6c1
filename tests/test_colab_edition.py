"""The Colab/Jupyter editions (colab/) read right where MyST is not understood.

tools/colab_edition.py writes colab/NN_name.ipynb and colab/errata.ipynb from the chapters,
converting the MyST markup of the book (roles, directives, labelled equations, dropdown
solutions) into Markdown that Colab and Jupyter render. These tests regenerate the editions, render
each one with Jupyter's own Markdown renderer (nbconvert) and look at what a reader would see.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

from helpers import load_tool

ROOT = Path(__file__).resolve().parents[1]
COLAB_DIR = ROOT / "colab"


def _load_tool():
    return load_tool("colab_edition")


tool = _load_tool()
SOURCES = tool.sources()
NAMES = [tool.edition_name(s) for s in SOURCES]


@pytest.fixture(scope="module")
def index():
    return tool.build_index(SOURCES)


def markdown_of(path: Path) -> list[str]:
    return tool.markdown_text(json.loads(path.read_text()))


@pytest.fixture(scope="module")
def rendered():
    """name -> the Markdown cells of the edition as nbconvert's HTML renders them (BeautifulSoup
    elements), rendered once per module."""
    pytest.importorskip("nbconvert", reason="pip install -e '.[test]' (nbconvert renders)")
    import nbformat
    from bs4 import BeautifulSoup
    from nbconvert import HTMLExporter

    exporter, out = HTMLExporter(), {}
    for name in NAMES:
        html, _ = exporter.from_notebook_node(nbformat.read(COLAB_DIR / name, as_version=4))
        out[name] = BeautifulSoup(html, "html.parser").select(".jp-MarkdownCell")
    return out


# --- the editions are generated, never hand-edited -------------------------------------------


def test_every_chapter_and_the_errata_have_an_edition():
    chapters = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert [p.name for p in SOURCES] == [*(p.name for p in chapters), "errata.ipynb"]
    assert sorted(p.name for p in COLAB_DIR.glob("*.ipynb")) == sorted(NAMES)


def test_the_editions_are_what_the_generator_writes():
    assert tool.stale() == [], "colab/ is stale: run python tools/colab_edition.py"


def test_a_changed_chapter_makes_the_editions_stale(tmp_path):
    # The staleness check can fail: an edition edited by hand is reported.
    for name in NAMES:
        (tmp_path / name).write_text((COLAB_DIR / name).read_text())
    edited = tmp_path / NAMES[0]
    edited.write_text(edited.read_text().replace("Chapter 1", "Chapter One", 1))
    assert tool.stale(tmp_path) == [NAMES[0]]


def test_outputs_are_left_for_colab_to_compute():
    for name in NAMES:
        nb = json.loads((COLAB_DIR / name).read_text())
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        assert code and all(c["outputs"] == [] and c["execution_count"] is None for c in code)


def test_code_cells_are_the_chapters_code_cells():
    for source in SOURCES:
        chapter = json.loads(source.read_text())
        nb = json.loads((COLAB_DIR / tool.edition_name(source)).read_text())
        assert [c["cell_type"] for c in nb["cells"]] == [c["cell_type"] for c in chapter["cells"]]
        for mine, theirs in zip(nb["cells"], chapter["cells"], strict=True):
            if mine["cell_type"] == "code" and "install" not in "".join(theirs["source"]):
                assert mine["source"] == theirs["source"]


# --- what Jupyter's Markdown renderer shows ----------------------------------------------------

RAW_ROLE = re.compile(r"\{(?:eq|cite(?::\w+)?|prf:\w+|ref|numref|doc|repo)\}")


@pytest.mark.parametrize("name", NAMES)
def test_no_myst_role_is_left_raw(rendered, name):
    raw = [m.group(0) for cell in rendered[name] for m in RAW_ROLE.finditer(cell.get_text())]
    assert raw == [], f"{name}: raw MyST roles in the rendered page: {raw[:5]}"


@pytest.mark.parametrize("name", NAMES)
def test_no_myst_directive_or_target_is_left_raw(rendered, name):
    problems = []
    for cell in rendered[name]:
        text = cell.get_text("\n")
        problems += re.findall(r"^.*(?::::|```\{).*$", text, re.MULTILINE)
        problems += re.findall(r"^\s*\([\w:.-]+\)=\s*$", text, re.MULTILINE)
        problems += re.findall(r"^\s*:(?:class|label|name|nonumber):.*$", text, re.MULTILINE)
    assert problems == [], f"{name}: raw MyST in the rendered page: {problems[:5]}"


@pytest.mark.parametrize("name", NAMES)
def test_code_in_markdown_is_rendered_as_code(rendered, name):
    # An unrendered fence (e.g. inside <details> without the blank lines) would show as text.
    fences = [c for c in rendered[name] if "```" in c.get_text()]
    assert fences == [], f"{name}: a code fence is shown as text"


@pytest.mark.parametrize("name", NAMES)
def test_every_solution_is_folded_in_details(rendered, name):
    source = next(s for s in SOURCES if tool.edition_name(s) == name)
    expected = sum(
        len(re.findall(r"^:::\{admonition\} Solution\s*\n:class: dropdown", text, re.MULTILINE))
        for text in markdown_of(source)
    )
    folded = [
        d
        for cell in rendered[name]
        for d in cell.find_all("details")
        if d.find("summary") and d.find("summary").get_text(strip=True) == "Solution"
    ]
    assert len(folded) == expected
    # Each has a rendered body (paragraphs, lists or code), not only a title.
    assert all(d.find(["p", "pre", "ol", "ul"]) for d in folded)
    # And no "Solution" heading line is printed open outside a <details>.
    for cell in rendered[name]:
        for node in cell.find_all(string=re.compile(r"^\s*Solution\s*$")):
            assert node.find_parent("details") is not None, f"{name}: a Solution left open"


def test_the_chapters_have_the_solutions_the_issue_counted():
    total = sum(
        len(re.findall(r"^:::\{admonition\} Solution", t, re.MULTILINE))
        for s in SOURCES
        for t in markdown_of(s)
    )
    assert total >= 30  # the issue counted 30 exercises with solutions; a broken regex finds 0


# --- numbers and references as the book shows them ---------------------------------------------


@pytest.mark.parametrize("source", SOURCES, ids=NAMES)
def test_every_labelled_equation_keeps_its_number(source, index):
    labels = [
        m.group("label").lower()
        for text in markdown_of(source)
        for m in tool.LABELLED_EQ.finditer(text)
    ]
    edition = "\n".join(markdown_of(COLAB_DIR / tool.edition_name(source)))
    tags = re.findall(r"\\tag\{(\d+)\}", edition)
    assert tags == [index.equations[label].text[1:-1] for label in labels]


def test_equations_are_numbered_in_one_sequence_over_the_book(index):
    numbers = [int(t.text[1:-1]) for t in index.equations.values()]
    assert numbers == list(range(1, len(numbers) + 1)) and len(numbers) > 70


def test_numbers_are_those_of_the_built_book(index):
    # Against the HTML of `make book` when it is there (it is built after the unit tests).
    html_dir = ROOT / "_build" / "html"
    if not html_dir.is_dir():
        pytest.skip("no built book in _build/html (make book)")
    checked = 0
    for source in SOURCES:
        page = html_dir / source.relative_to(ROOT).with_suffix(".html")
        if not page.is_file() or page.stat().st_mtime < source.stat().st_mtime:
            continue  # not built, or built before the chapter last changed
        html = page.read_text()
        for number, label in re.findall(
            r'<span class="eqno">\((\d+)\)<a class="headerlink" href="#equation-([^"]+)"', html
        ):
            if label in index.equations:
                assert index.equations[label].text == f"({number})", (label, page)
                checked += 1
        for label, text in re.findall(
            r'<a class="reference internal" href="[^"]*#((?:lem|prop|alg)-[^"]*)"[^>]*>([^<]*)</a>',
            html,
        ):
            if label in index.proofs:
                assert index.proofs[label].text == text, (label, page)
                checked += 1
    if not checked:
        pytest.skip("the built book in _build/html is older than the chapters (make book)")
    assert checked > 10


def test_a_reference_to_another_chapter_links_to_its_edition(index):
    ch7 = next(s for s in SOURCES if s.name.startswith("07_"))
    ctx = tool.Context(ch7, index, tool.read_bib(), "https://github.com/o/r", "main")
    assert tool.convert_role(ctx, "ref", "sec-ch3-gaussian-reverse") == (
        "[Why a small reverse step is Gaussian](03_bayes_posterior.ipynb)"
    )
    assert tool.convert_role(ctx, "prf:ref", "prop-ch7-marginals") == "Proposition 22"
    assert tool.convert_link(ctx, "Chapter 2", "02_closed_form.ipynb") == (
        "[Chapter 2](02_closed_form.ipynb)"
    )
    assert (
        tool.link_target(ctx, "../book/notation.md") == "https://o.github.io/r/book/notation.html"
    )


def test_every_link_between_editions_points_to_an_edition():
    for name in NAMES:
        for text in markdown_of(COLAB_DIR / name):
            for target in re.findall(r"\]\(([^)\s]+)\)", text):
                if not re.match(r"^[a-z]+:", target):
                    assert (COLAB_DIR / target.partition("#")[0]).is_file(), (name, target)


def test_citations_read_author_and_year():
    bib = tool.read_bib()
    assert bib["ho2020denoising"] == "[Ho et al. (2020)](https://arxiv.org/abs/2006.11239)"
    assert bib["nichol2021improved"].startswith("[Nichol and Dhariwal (2021)](")
    assert bib["luo2022understanding"].startswith("[Luo (2022)](")


def test_every_cited_key_is_in_the_bibliography():
    bib = tool.read_bib()
    keys = {
        key.strip()
        for s in SOURCES
        for text in markdown_of(s)
        for body in re.findall(r"\{cite(?::\w+)?\}`([^`]*)`", text)
        for key in body.split(",")
    }
    assert keys and keys <= bib.keys(), sorted(keys - bib.keys())


def test_an_unknown_label_is_an_error_that_names_the_notebook(index):
    ctx = tool.Context(SOURCES[0], index, tool.read_bib(), "https://github.com/o/r", "main")
    missing = "eq-" + "ch1-nope"  # split, so that the equation index does not count it as named
    with pytest.raises(tool.EditionError, match=rf"01_forward_recurrence.*{missing}"):
        tool.convert_role(ctx, "eq", missing)
    with pytest.raises(tool.EditionError, match="no conversion"):
        tool.convert_markdown(ctx, ":::{figure} x.png\n:::")


def test_an_unclosed_directive_is_an_error(index):
    ctx = tool.Context(SOURCES[0], index, tool.read_bib(), "https://github.com/o/r", "main")
    with pytest.raises(tool.EditionError, match="never closed"):
        tool.convert_markdown(ctx, ":::{note}\nbody without end")


# --- one repository address --------------------------------------------------------------------


def test_badge_and_setup_cell_use_the_configured_repository():
    url, branch = tool.repository()
    for source in SOURCES:
        name = tool.edition_name(source)
        nb = json.loads((COLAB_DIR / name).read_text())
        first = "".join(nb["cells"][0]["source"])
        assert f"({tool.colab_url(url, branch, f'colab/{name}')})" in first
        setup = [
            "".join(c["source"])
            for c in nb["cells"]
            if c["cell_type"] == "code" and "pip" in "".join(c["source"])
        ]
        assert len(setup) == 1 and f'"git+{url}"' in setup[0]


def test_the_chapters_use_the_configured_repository():
    # The chapters write the address themselves (badge, setup cell): they must agree with
    # _config.yml, or a changed address would reach the editions and not the chapters.
    url, branch = tool.repository()
    colab = tool.colab_url(url, branch, "")
    problems = []
    for source in SOURCES:
        nb = json.loads(source.read_text())
        for k, cell in enumerate(nb["cells"]):
            text = "".join(cell["source"])
            for found in re.findall(r"git\+https?://[^\s\"']+", text):
                if found != f"git+{url}":
                    problems.append(f"{source.name} cell {k}: {found}")
            for found in re.findall(r"https://colab\.research\.google\.com/github/[^)\s]+", text):
                if not found.startswith(colab):
                    problems.append(f"{source.name} cell {k}: {found}")
    assert problems == [], f"not {url} (repository.url of _config.yml): {problems}"


def test_another_repository_address_reaches_badge_setup_cell_and_links(index, tmp_path):
    config = tmp_path / "_config.yml"
    config.write_text(
        tool.CONFIG.read_text().replace(tool.repository()[0], "https://github.com/Someone/fork")
    )
    repo = tool.repository(config)
    assert repo == ("https://github.com/Someone/fork", "main")
    nb = tool.edition(SOURCES[-1], index, tool.read_bib(), repo)
    text = json.dumps(nb)
    assert "colab.research.google.com/github/Someone/fork/blob/main/colab/errata.ipynb" in text
    assert "git+https://github.com/Someone/fork" in text
    assert "https://someone.github.io/fork/" in text
    assert "https://github.com/Someone/fork/blob/main/tests/test_errata.py" in text
    assert tool.repository()[0] not in text


def test_a_malformed_repository_address_is_refused(tmp_path):
    config = tmp_path / "_config.yml"
    config.write_text("repository:\n  url: github.com/o/r\n")
    with pytest.raises(tool.EditionError, match="repository.url must be"):
        tool.repository(config)


def _site_fixes():
    spec = importlib.util.spec_from_file_location("site_fixes", ROOT / "tools" / "site_fixes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _launch_context(path: str) -> dict:
    colab = f"https://colab.research.google.com/github/o/r/blob/main/{path}"
    return {
        "header_buttons": [
            {"type": "group", "label": "launch-buttons", "buttons": [{"url": colab}]},
            {"type": "link", "url": "https://github.com/o/r"},
        ]
    }


def _launch_url(context: dict) -> str:
    return context["header_buttons"][0]["buttons"][0]["url"]


@pytest.mark.parametrize("page", ["notebooks/02_closed_form", "book/errata"])
def test_the_books_colab_launch_button_opens_the_edition(page):
    app = type("App", (), {"srcdir": str(ROOT)})()
    context = _launch_context(f"{page}.ipynb")
    _site_fixes().colab_edition_launch(app, page, "page.html", context, None)
    name = page.split("/")[-1]
    assert _launch_url(context) == (
        f"https://colab.research.google.com/github/o/r/blob/main/colab/{name}.ipynb"
    )


def test_a_page_without_an_edition_keeps_its_launch_button():
    app = type("App", (), {"srcdir": str(ROOT)})()
    context = _launch_context("book/intro.ipynb")
    _site_fixes().colab_edition_launch(app, "book/intro", "page.html", context, None)
    assert _launch_url(context).endswith("/blob/main/book/intro.ipynb")
