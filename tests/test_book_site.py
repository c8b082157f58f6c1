"""The built book, checked in a real browser (headless Chromium driven by Playwright).

`make test` builds the book (`make book`) and then runs this file against _build/html. Every page
of the site is served from localhost with all other network access blocked (the site must work
offline) and checked for:

- maths: MathJax finished, every formula became an mjx-container, no MathJax error nodes, no
  undefined macros, and no raw `$$`, `$\\command...$` or TeX command (`\\alpha`) left in the
  visible text outside code;
- images: every <img> is served by the site and loaded (naturalWidth > 0);
- links: every internal link resolves to an existing file, and its #anchor to an existing id;
- the sidebar lists every chapter;
- chapter pages: a Colab launch link whose path ends with that chapter's notebooks/NN_name.ipynb;
- no uncaught JavaScript errors;
- the page fits (tools/measure_pages.py measures, with the same code): at 1280 px no display
  equation (number included), code block or printed output is wider than its box; at 375 px (a
  phone) nothing is cut off without a scroll bar; no output figure is shown at less than 60% of
  its natural width; no progress bars in the outputs; every static frame slider
  (ddpm_lib.viz.frame_slider) changes its picture and its label when moved.

A screenshot of each page at 1280 px and at 375 px goes to _build/screenshots/. The tests skip,
with the reason, when the site has not been built or no browser is available;
BOOK_SITE_REQUIRED=1 (set by `make test`) turns those skips into failures. BOOK_SITE=DIR checks
another built site (e.g. an older build kept for comparison) instead of _build/html.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urldefrag, urlsplit

import pytest
import yaml

from helpers import load_tool

ROOT = Path(__file__).resolve().parents[1]
SITE = Path(os.environ.get("BOOK_SITE") or ROOT / "_build" / "html").resolve()
SHOTS = ROOT / "_build" / "screenshots"
REQUIRED = os.environ.get("BOOK_SITE_REQUIRED", "") == "1"


def _load_measure():
    """tools/measure_pages.py: the measuring code (JavaScript) that this check shares."""
    return load_tool("measure_pages")


measure = _load_measure()
CHROMIUM = measure.CHROMIUM
CHROMIUM_ARGS = measure.CHROMIUM_ARGS
# External images a page may show although they cannot load offline: none (the chapters' Colab
# badge is served from the site, tools/site_fixes.py).
EXTERNAL_IMAGE_ALLOWLIST: tuple[str, ...] = ()
CHAPTER_RE = re.compile(r"^\d\d_[a-z0-9_]+$")
# A TeX command in the visible text (code excluded) is maths that MathJax never saw.
TEX_COMMAND_RE = re.compile(
    r"\\(?:frac|sqrt|bar|hat|tilde|alpha|beta|gamma|sigma|epsilon|varepsilon|theta|mu|nabla"
    r"|mathcal|mathbb|mathrm|mathbf|sum|prod|int|left|right|cdot|mid|log|exp|begin|end)(?![A-Za-z])"
)
REDIRECT_RE = re.compile(r'<meta http-equiv="refresh" content="\d+;\s*url=([^"]+)"', re.IGNORECASE)


def skip_or_fail(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"{reason} (BOOK_SITE_REQUIRED=1: `make test` must build and check the site)")
    pytest.skip(reason)


# ----------------------------------------------------------------- the book's own configuration
def toc_files() -> list[str]:
    """Every file listed in _toc.yml, without suffix, in order."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]

    def walk(entries: list[dict]) -> None:
        for entry in entries or []:
            if "file" in entry:
                files.append(entry["file"])
            walk(entry.get("sections", []))

    for part in toc.get("parts", []):
        walk(part.get("chapters", []))
    walk(toc.get("chapters", []))
    return files


def chapter_names() -> list[str]:
    """The chapter notebooks on disk: notebooks/NN_name.ipynb (not the _template)."""
    return sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb") if CHAPTER_RE.match(p.stem))


def colab_base() -> str:
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    repo = config["repository"]
    owner_name = repo["url"].rstrip("/").removeprefix("https://github.com/")
    return f"https://colab.research.google.com/github/{owner_name}/blob/{repo['branch']}"


def test_every_chapter_notebook_is_in_the_toc():
    listed = toc_files()
    missing = [f"notebooks/{c}" for c in chapter_names() if f"notebooks/{c}" not in listed]
    assert not missing, f"chapter notebooks not listed in _toc.yml: {missing}"
    for f in listed:
        assert any((ROOT / f"{f}{ext}").is_file() for ext in (".md", ".ipynb")), f"{f} in _toc.yml"


# ----------------------------------------------------------------- the site and the browser
def site_pages() -> list[str]:
    """Every HTML page of the built site, relative to SITE (_build/html)."""
    skip_dirs = {"_static", "_sources", "_images"}
    return sorted(
        p.relative_to(SITE).as_posix()
        for p in SITE.rglob("*.html")
        if not skip_dirs.intersection(p.relative_to(SITE).parts[:-1])
    )


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    if not (SITE / "index.html").is_file():
        skip_or_fail(f"{SITE}/index.html does not exist: build the book with `make book`")
    with measure.serve(SITE) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        skip_or_fail("playwright is not installed (pip install -e '.[test]')")
    if not Path(CHROMIUM).is_file():
        skip_or_fail(f"no Chromium at {CHROMIUM} (make test installs Debian's chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


class _Ids(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs) -> None:
        for key, value in attrs:
            if key == "id" or (tag == "a" and key == "name"):
                self.ids.add(value or "")


@functools.cache
def static_ids(path: Path) -> frozenset[str]:
    parser = _Ids()
    parser.feed(path.read_text(errors="replace"))
    return frozenset(parser.ids)


def resolve_local(url_path: str) -> Path | None:
    """The file under _build/html that a same-site URL path serves, or None."""
    target = SITE / unquote(url_path).lstrip("/")
    if target.is_dir():
        target = target / "index.html"
    return target if target.is_file() else None


# Runs in the page: wait for MathJax (if the page loads it) and for every image to settle.
SETTLE_JS = measure.SETTLE_JS

INSPECT_JS = """
() => {
  const visible = (root) => {
    const clone = root.cloneNode(true);
    clone.querySelectorAll("pre, code, script, style, mjx-container, .highlight, textarea")
         .forEach(n => n.remove());
    return clone.textContent;
  };
  const main = document.querySelector("main") || document.body;
  const math = [...document.querySelectorAll(".math")];
  return {
    text: visible(main),
    unrendered: math.filter(m => !m.querySelector("mjx-container"))
        .map(m => m.textContent.slice(0, 80)),
    mathErrors: [...document.querySelectorAll("mjx-merror, [data-mjx-error], .math-error")]
        .map(n => (n.getAttribute("data-mjx-error") || n.textContent).slice(0, 120)),
    undefinedMacros: [...document.querySelectorAll("mjx-container mjx-mtext")]
        .map(n => n.textContent).filter(t => /^\\\\[A-Za-z]+$/.test(t)),
    containers: document.querySelectorAll("mjx-container").length,
    images: [...document.images].map(i => ({src: i.currentSrc || i.src, w: i.naturalWidth,
                                             complete: i.complete})),
    links: [...document.querySelectorAll("a[href]")].map(a => a.href),
    sidebar: [...document.querySelectorAll("#bd-docs-nav a[href], nav.bd-docs-nav a[href]")]
        .map(a => a.href),
    ids: [...document.querySelectorAll("[id]")].map(n => n.id),
  };
}
"""


def page_id(page: str) -> str:
    return page.removesuffix(".html")


def pytest_generate_tests(metafunc) -> None:
    if "page" in metafunc.fixturenames:
        pages = site_pages() if SITE.is_dir() else ["(site not built)"]
        metafunc.parametrize("page", pages, ids=[page_id(p) for p in pages])


def test_site_has_every_toc_page(server):
    built = set(site_pages())
    missing = [f for f in toc_files() if f"{f}.html" not in built]
    assert not missing, f"pages in _toc.yml but not in the built site: {missing}"


# Each page is opened once (1280 px, then 375 px) and what was seen is kept for the tests below.
_VISITS: dict[str, dict] = {}


def visit(page: str, server: str, browser) -> dict | None:
    """Open a page (once per session), inspect it at 1280 px, measure it at 1280 and 375 px.

    Returns None for a redirect page (index.html), after checking where it points.
    """
    if page == "(site not built)":
        skip_or_fail("the book has not been built: run `make book`")
    redirect = REDIRECT_RE.search((SITE / page).read_text(errors="replace"))
    if redirect:  # e.g. index.html -> book/intro.html: check where it points, nothing else
        target = (SITE / page).parent / redirect.group(1)
        assert target.is_file(), f"{page} redirects to a missing page: {redirect.group(1)}"
        return None
    if page not in _VISITS:
        _VISITS[page] = _open(page, server, browser)
    return _VISITS[page]


def _open(page: str, server: str, browser) -> dict:
    context = browser.new_context(viewport=measure.WIDE)
    # The site must work offline: every request that leaves localhost is refused.
    blocked: list[str] = []

    def route(r):
        if r.request.url.startswith(server) or r.request.url.startswith("data:"):
            r.continue_()
        else:
            blocked.append(r.request.url)
            r.abort()

    context.route("**/*", route)
    browser_page = context.new_page()
    js_errors: list[str] = []
    browser_page.on("pageerror", lambda e: js_errors.append(str(e)))
    shot = SHOTS / page_id(page).replace("/", "__")
    try:
        browser_page.goto(f"{server}/{page}", wait_until="load", timeout=60_000)
        settled = browser_page.evaluate(SETTLE_JS)
        info = browser_page.evaluate(INSPECT_JS)
        SHOTS.mkdir(parents=True, exist_ok=True)
        browser_page.screenshot(path=f"{shot}.png")
        fit = measure.measure_page(browser_page)  # ends at 375 px, folded content opened
        browser_page.evaluate("() => window.scrollTo(0, 0)")
        browser_page.screenshot(path=f"{shot}__375.png")
    finally:
        context.close()
    return {
        "settled": settled,
        "info": info,
        "fit": fit,
        "js_errors": js_errors,
        "blocked": blocked,
    }


def test_page(page, server, browser):
    seen = visit(page, server, browser)
    if seen is None:
        return
    settled, info, js_errors, blocked = (
        seen["settled"],
        seen["info"],
        seen["js_errors"],
        seen["blocked"],
    )
    problems: list[str] = []
    # Maths.
    if settled["mathNodes"] and not settled["mathjax"]:
        problems.append(f"{settled['mathNodes']} formulas but MathJax did not load")
    if info["unrendered"]:
        problems.append(f"formulas MathJax did not render: {info['unrendered'][:5]}")
    if info["mathErrors"]:
        problems.append(f"MathJax errors: {info['mathErrors'][:5]}")
    if info["undefinedMacros"]:
        problems.append(f"undefined TeX macros: {sorted(set(info['undefinedMacros']))}")
    if "$$" in info["text"]:
        i = info["text"].index("$$")
        problems.append(f"raw $$ in the text: ...{info['text'][max(0, i - 60) : i + 60]!r}...")
    raw_inline = re.search(r"\$[^$\n]{0,200}?\\[A-Za-z]+[^$\n]{0,200}?\$", info["text"])
    if raw_inline:
        problems.append(f"raw $...$ maths in the text: {raw_inline.group(0)[:120]!r}")
    raw_tex = TEX_COMMAND_RE.search(info["text"])
    if raw_tex:
        around = info["text"][max(0, raw_tex.start() - 60) : raw_tex.end() + 40]
        problems.append(f"raw TeX in the text: ...{around!r}...")
    # Images.
    for img in info["images"]:
        src = img["src"]
        if src.startswith(server) or src.startswith("data:"):
            if not img["complete"] or img["w"] == 0:
                problems.append(f"image did not load: {src}")
        elif not src.startswith(EXTERNAL_IMAGE_ALLOWLIST):
            problems.append(f"external image (cannot load offline): {src}")
    # Internal links and anchors.
    own_ids = set(info["ids"])
    for href in sorted(set(info["links"])):
        if not href.startswith(server):
            continue
        url, fragment = urldefrag(href)
        path = urlsplit(url).path
        target = resolve_local(path)
        if target is None:
            problems.append(f"broken link: {href.removeprefix(server)}")
            continue
        if not fragment or target.suffix != ".html":
            continue
        fragment = unquote(fragment)
        same_page = target == resolve_local(f"/{page}")
        ids = own_ids if same_page else static_ids(target)
        if fragment not in ids:
            problems.append(f"broken anchor: {href.removeprefix(server)}")
    # The sidebar lists every chapter.
    sidebar = {urlsplit(h).path.removeprefix("/") for h in info["sidebar"]}
    for chapter in chapter_names():
        if f"notebooks/{chapter}.html" not in sidebar:
            problems.append(f"sidebar does not list notebooks/{chapter}")
    # Chapter pages: the Colab links (badge and launch button) open this chapter's Colab
    # edition (colab/NN_name.ipynb, generated by tools/colab_edition.py), and only that.
    name = Path(page).stem
    if page.startswith("notebooks/") and CHAPTER_RE.match(name):
        want = f"{colab_base()}/colab/{name}.ipynb"
        colab = [h for h in info["links"] if h.startswith("https://colab.research.google.com/")]
        if want not in colab:
            problems.append(f"no Colab link {want}; Colab links on the page: {colab}")
        stray = [h for h in colab if not urlsplit(h).path.endswith(f"/colab/{name}.ipynb")]
        if stray:
            problems.append(f"Colab links to something else than this chapter's edition: {stray}")
    # Scripts.
    if js_errors:
        problems.append(f"JavaScript errors: {js_errors[:3]}")
    blocked_scripts = [u for u in blocked if not u.startswith(EXTERNAL_IMAGE_ALLOWLIST)]
    if blocked_scripts:
        problems.append(f"requests to other hosts (the site must work offline): {blocked_scripts}")

    assert not problems, f"{page}:\n  " + "\n  ".join(problems)
    if settled["mathNodes"]:
        assert info["containers"] >= settled["mathNodes"], "MathJax rendered fewer formulas"


# ----------------------------------------------------------------- the page fits
def test_page_fits_at_1280_and_375_px(page, server, browser):
    """At 1280 px every display equation (with its number), code block and printed output fits
    its box; at 375 px whatever is wider than its box can be scrolled (nothing is cut off)."""
    seen = visit(page, server, browser)
    if seen is None:
        return
    wide, phone = seen["fit"]["wide"], seen["fit"]["phone"]
    problems = [measure.describe(b, 1280) for b in wide["clipped"]]
    problems += [measure.describe(b, 375) + " (cut off, no scroll bar)" for b in phone["cutoff"]]
    problems += [measure.describe(b, 1280) + " (cut off, no scroll bar)" for b in wide["cutoff"]]
    assert not problems, f"{page}: {len(problems)} blocks do not fit:\n  " + "\n  ".join(problems)


def test_output_images_are_legible(page, server, browser):
    """No output figure shrinks below IMAGE_MIN_RATIO (60%) of its natural width at 1280 px: a
    figure made for the column (<= ~7 in at dpi 100) shows at >= 90%; a row of 16 tiny images
    (the old 12-16 in grids) at 40-55%, too small to see what the prose points at."""
    seen = visit(page, server, browser)
    if seen is None:
        return
    small = [i for i in seen["fit"]["wide"]["images"] if measure.image_too_small(i)]
    assert not small, f"{page}: output images shown too small at 1280 px:\n  " + "\n  ".join(
        f"image {i['alt'] or i['src']}: shown {i['shown']} px of its natural {i['natural']} px "
        f"({i['shown'] / i['natural']:.0%} < {measure.IMAGE_MIN_RATIO:.0%}); make the figure "
        "narrower (<= 7 in at dpi 100) or the grid <= 8 per row"
        for i in small
    )


def test_no_progress_bars_in_outputs(page, server, browser):
    """Rendered cell outputs carry no progress bars (tqdm's text or widget bars): pass
    progress=False to the library's loops."""
    seen = visit(page, server, browser)
    if seen is None:
        return
    bars = seen["fit"]["wide"]["progress"]
    assert not bars, f"{page}: {len(bars)} outputs show progress bars:\n  " + "\n  ".join(
        f"{b['bars']} widget bars; text {b['text']!r}" for b in bars
    )


def test_static_frame_sliders_move(page, server, browser):
    """Every ddpm_lib.viz.frame_slider on the page works without a kernel: moving its range
    input (an 'input' event) shows another picture and another label."""
    seen = visit(page, server, browser)
    if seen is None:
        return
    problems = measure.slider_problems(seen["fit"]["sliders"])
    assert not problems, f"{page}:\n  " + "\n  ".join(problems)


# ----------------------------------------------------------------- the measure, on known cases
SYNTHETIC = """
<html><body style="margin:0; font: 16px monospace">
<article class="bd-article" style="max-width:600px">
<div class="highlight"><pre id="fits" style="overflow:auto">short line</pre></div>
<div class="highlight"><pre id="long" style="overflow:auto">{long}</pre></div>
<div class="cell_output"><div class="output"><pre id="cut" style="overflow:hidden">{long}</pre>
</div></div>
<p id="wide" style="white-space:nowrap">{long}</p>
{slider}
{dead}
</article></body></html>
"""


def test_the_measure_finds_clipped_blocks_and_dead_sliders(browser):
    """The measuring code on a page whose answers are known: a code line longer than its block,
    an output cut off by overflow: hidden, a paragraph sticking out of the article; a working
    frame slider and a dead one (its handler removed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ddpm_lib.viz import frame_slider

    def frames() -> list:
        figs = []
        for k in range(3):
            fig, ax = plt.subplots(figsize=(2, 1), dpi=50)
            ax.plot([0, 1], [0, k])
            figs.append(fig)
        return figs

    labels = ["t = 1", "t = 500", "t = 1000"]
    slider = frame_slider(frames(), labels, name="t").data
    dead = re.sub(r'oninput="[^"]*"', "", frame_slider(frames(), labels, name="t").data)
    html = SYNTHETIC.format(long="x = 1  # " + "long " * 40, slider=slider, dead=dead)
    page = browser.new_page(viewport=measure.WIDE)
    try:
        page.set_content(html)
        result = measure.measure_page(page)
    finally:
        page.close()
    wide, phone = result["wide"], result["phone"]
    clipped = {(b["kind"], b["text"][:10]) for b in wide["clipped"]}
    assert clipped == {("code", "x = 1 # lo"), ("output", "x = 1 # lo")}, wide["clipped"]
    assert wide["counts"]["code"] == 2 and wide["counts"]["output"] == 1
    # Cut off without a scroll bar: the hidden-overflow output and the paragraph, not the code.
    cut = sorted(b["kind"] for b in phone["cutoff"])
    assert cut == ["other", "output"], phone["cutoff"]
    problems = measure.slider_problems(result["sliders"])
    assert len(result["sliders"]) == 2
    assert not [p for p in problems if p.startswith("frame slider 1")], problems
    assert any("did not change the picture" in p for p in problems), problems
    assert any("did not change its label" in p for p in problems), problems
