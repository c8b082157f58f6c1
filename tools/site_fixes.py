"""Sphinx extension: small fixes to the HTML that Jupyter Book 1.x produces.

1. Repeated <script> entries are dropped from every page. sphinx-thebe (loaded by Jupyter Book)
   registers its inline configuration each time Sphinx starts reading documents, so a page could
   carry `const THEBE_JS_URL = ...` twice and the browser reported "Identifier 'THEBE_JS_URL'
   has already been declared". Keeping the first of each identical script fixes it.
2. book/_static/widgets-mathjax-shim.js is added to every page, after the MathJax configuration:
   it gives the Jupyter widgets embedder the MathJax 2 call it expects (see that file).
3. book/_static/book.css, the book's own styles, is added to every page.
4. The chapters' "Open in Colab" badge image, which the notebooks load from Google, is served
   from the site (book/_static/colab-badge.svg), so pages have no external images and look
   the same offline. The badge's link to Colab is unchanged.
5. The "Colab" launch button of a page that has a Colab/Jupyter edition (colab/<name>.ipynb,
   written by tools/colab_edition.py) opens that edition instead of the MyST source, which
   Colab would show with raw roles and open solutions.

tests/test_book_site.py fails on JavaScript errors and on images that do not load, which is
how these were found. Loaded through `sphinx: local_extensions` in _config.yml.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

from sphinx.application import Sphinx

SHIM = "widgets-mathjax-shim.js"  # in book/_static, which _config.yml adds to html_static_path
COLAB_BADGE = "https://colab.research.google.com/assets/colab-badge.svg"
LOCAL_BADGE = "_static/colab-badge.svg"
COLAB_SITE = "https://colab.research.google.com/github/"


def _key(script: Any) -> tuple[str, tuple[tuple[str, str], ...]]:
    """What makes two scripts the same: the file (None and "" both mean an inline script) and
    the attributes, including an inline script's body."""
    filename = str(getattr(script, "filename", script) or "")
    attributes = getattr(script, "attributes", {}) or {}
    return (filename, tuple(sorted((k, str(v)) for k, v in attributes.items())))


def dedupe(app: Sphinx, pagename: str, templatename: str, context: dict, doctree: Any) -> None:
    scripts = context.get("script_files")
    if not scripts:
        return
    seen: set[tuple] = set()
    unique = []
    for script in scripts:
        key = _key(script)
        if key not in seen:
            seen.add(key)
            unique.append(script)
    scripts[:] = unique  # in place: handlers after this one still add to the same list


def local_badge(app: Sphinx, pagename: str, templatename: str, context: dict, doctree: Any) -> None:
    body = context.get("body")
    if body and COLAB_BADGE in body:
        context["body"] = body.replace(COLAB_BADGE, context["pathto"](LOCAL_BADGE, 1))


def colab_edition_launch(
    app: Sphinx, pagename: str, templatename: str, context: dict, doctree: Any
) -> None:
    edition = Path(app.srcdir) / "colab" / f"{PurePosixPath(pagename).name}.ipynb"
    if not edition.is_file():
        return
    source = f"/{pagename}.ipynb"
    for group in context.get("header_buttons", []):
        for button in group.get("buttons", []) if isinstance(group, dict) else []:
            url = button.get("url", "") if isinstance(button, dict) else ""
            if url.startswith(COLAB_SITE) and url.endswith(source):
                button["url"] = url.removesuffix(source) + f"/colab/{edition.name}"


def setup(app: Sphinx) -> dict[str, Any]:
    # Priority 600: after the MathJax configuration script (500), which it amends; it is not
    # deferred, so it still runs before MathJax itself (deferred) starts.
    app.add_js_file(SHIM, priority=600)
    app.add_css_file("book.css")
    # Early: Sphinx stops calling html-page-context handlers at the first one that returns a
    # value, so a late handler might never run.
    app.connect("html-page-context", dedupe, priority=100)
    app.connect("html-page-context", local_badge, priority=100)
    # After sphinx-book-theme's add_launch_buttons (priority 501), which writes the buttons.
    app.connect("html-page-context", colab_edition_launch, priority=502)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
