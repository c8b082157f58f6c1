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
- no uncaught JavaScript errors.

A screenshot of each page goes to _build/screenshots/. The tests skip, with the reason, when the
site has not been built or no browser is available; BOOK_SITE_REQUIRED=1 (set by `make test`)
turns those skips into failures.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import threading
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urldefrag, urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "_build" / "html"
SHOTS = ROOT / "_build" / "screenshots"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
REQUIRED = os.environ.get("BOOK_SITE_REQUIRED", "") == "1"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
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
    """Every HTML page of the built site, relative to _build/html."""
    skip_dirs = {"_static", "_sources", "_images"}
    return sorted(
        p.relative_to(SITE).as_posix()
        for p in SITE.rglob("*.html")
        if not skip_dirs.intersection(p.relative_to(SITE).parts[:-1])
    )


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    if not (SITE / "index.html").is_file():
        skip_or_fail(f"{SITE.relative_to(ROOT)} does not exist: build the book with `make book`")
    handler = functools.partial(_Quiet, directory=str(SITE))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def browser(server):
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
SETTLE_JS = """
async () => {
  for (const img of document.images) { img.loading = "eager"; }
  await Promise.all([...document.images].map(img => img.complete ? null :
      new Promise(r => { img.addEventListener("load", r); img.addEventListener("error", r); })));
  const mathNodes = document.querySelectorAll(".math");
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    await MathJax.startup.promise;
    if (MathJax.typesetPromise) { await MathJax.typesetPromise(); }
  }
  return {mathjax: !!(window.MathJax && MathJax.version), mathNodes: mathNodes.length};
}
"""

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


def test_page(page, server, browser):
    if page == "(site not built)":
        skip_or_fail("the book has not been built: run `make book`")
    redirect = REDIRECT_RE.search((SITE / page).read_text(errors="replace"))
    if redirect:  # e.g. index.html -> book/intro.html: check where it points, nothing else
        target = (SITE / page).parent / redirect.group(1)
        assert target.is_file(), f"{page} redirects to a missing page: {redirect.group(1)}"
        return
    context = browser.new_context(viewport={"width": 1280, "height": 900})
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
    try:
        browser_page.goto(f"{server}/{page}", wait_until="load", timeout=60_000)
        settled = browser_page.evaluate(SETTLE_JS)
        info = browser_page.evaluate(INSPECT_JS)
        SHOTS.mkdir(parents=True, exist_ok=True)
        browser_page.screenshot(path=str(SHOTS / f"{page_id(page).replace('/', '__')}.png"))
    finally:
        context.close()

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
    # Chapter pages: the Colab launch link for this very notebook.
    name = Path(page).stem
    if page.startswith("notebooks/") and CHAPTER_RE.match(name):
        want = f"{colab_base()}/notebooks/{name}.ipynb"
        colab = [h for h in info["links"] if h.startswith("https://colab.research.google.com/")]
        if want not in colab:
            problems.append(f"no Colab link {want}; Colab links on the page: {colab}")
        if not any(urlsplit(h).path.endswith(f"/notebooks/{name}.ipynb") for h in colab):
            problems.append("no Colab link whose path ends with this chapter's notebook")
    # Scripts.
    if js_errors:
        problems.append(f"JavaScript errors: {js_errors[:3]}")
    blocked_scripts = [u for u in blocked if not u.startswith(EXTERNAL_IMAGE_ALLOWLIST)]
    if blocked_scripts:
        problems.append(f"requests to other hosts (the site must work offline): {blocked_scripts}")

    assert not problems, f"{page}:\n  " + "\n  ".join(problems)
    if settled["mathNodes"]:
        assert info["containers"] >= settled["mathNodes"], "MathJax rendered fewer formulas"
