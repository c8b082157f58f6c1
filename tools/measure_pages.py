"""Measure how well the built book fits its column: clipped equations, code and outputs.

    python tools/measure_pages.py _build/html --out measure.json

For every chapter page of a built site (served from localhost, as tests/test_book_site.py does)
it counts, in headless Chromium:

- at 1280 px: display equations whose rendered maths (equation number included) is wider than
  its box, code blocks and printed-output blocks whose text is wider than the block
  (scrollWidth > clientWidth), output images shown at less than IMAGE_MIN_RATIO of their natural
  width, progress bars in the outputs, and the page height;
- at 375 px (a phone): the blocks that are cut off *without* a scroll bar (wider than a box that
  hides its overflow, or than the article), by kind;

and, from the notebook itself, the number of code lines in the cells the reader sees unfolded
(cells without the tags hide-input, remove-input, remove-cell, hide-cell).

Folded content (hide-input cells, dropdown solutions) is unfolded before the blocks are
measured: it is one click away, so it must fit too; each block records whether it was folded.

The measuring code (MEASURE_JS, SLIDERS_JS, ``measure_page``) is shared with the browser check,
tests/test_book_site.py, which fails on what this tool counts.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import os
import re
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
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
WIDE = {"width": 1280, "height": 900}  # a laptop
PHONE = {"width": 375, "height": 800}  # a phone (iPhone SE/mini width)
# An output image may be scaled down to fit the column, but not below 60% of its natural width:
# a figure made for the column (at most ~7 in at dpi 100, i.e. <= ~700 px, in a ~690 px output
# area) shows at >= 90%, a 10-inch figure still at ~70%, while a one-row grid of 16 images
# (12-16 in wide) drops to 40-55% and its tiles to ~40 px, too small to see what the prose shows.
IMAGE_MIN_RATIO = 0.6
# Images narrower than this on the page are icons or badges, not figures.
IMAGE_MIN_NATURAL = 200
HIDDEN_TAGS = {"hide-input", "remove-input", "remove-cell", "hide-cell"}
CHAPTER_RE = re.compile(r"^\d\d_[a-z0-9_]+$")

# Runs in the page (after MathJax has finished): measures every block against its box.
# Argument: {unfold: bool, phone: bool}. Returns counts and the offending blocks (kind, text,
# widths).
MEASURE_JS = r"""
async ({unfold, phone}) => {
  const art = document.querySelector("article.bd-article") || document.querySelector("main")
      || document.body;
  const pageHeight = document.documentElement.scrollHeight;
  // Mark what is folded, then unfold it: hide-input <details>, dropdown admonitions.
  document.querySelectorAll("details:not([open]) > :not(summary)").forEach(
      n => n.querySelectorAll("*").forEach(d => d.dataset.ddpmFolded = "1"));
  document.querySelectorAll(".toggle-hidden").forEach(
      n => n.querySelectorAll("*").forEach(d => d.dataset.ddpmFolded = "1"));
  if (unfold) {
    document.querySelectorAll("details").forEach(d => { d.open = true; });
    document.querySelectorAll(".toggle-hidden").forEach(n => n.classList.remove("toggle-hidden"));
    await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
  }
  const clean = s => (s || "").replace(/\s+/g, " ").trim().slice(0, 60);
  const folded = el => el.dataset.ddpmFolded === "1";
  const shown = el => el.getClientRects().length > 0
      && getComputedStyle(el).visibility !== "hidden";
  const scrolls = el => ["auto", "scroll"].includes(getComputedStyle(el).overflowX);
  // The TeX source of a formula (MathJax keeps it), else its text.
  const sources = new Map();
  try {
    for (const item of MathJax.startup.document.math) {
      if (item.typesetRoot) sources.set(item.typesetRoot, item.math);
    }
  } catch (e) {}
  const tex = c => clean(sources.get(c) || (c.closest(".math") || c).textContent);
  const width = el => el.getBoundingClientRect().width;
  const out = {pageHeight, counts: {math: 0, code: 0, output: 0, image: 0}, clipped: [],
               cutoff: [], images: [], progress: []};

  // 1. Display equations: the maths (mjx-math) against the room its container has. In a
  // numbered equation (div.math) the container shares the line with span.eqno (flex), so the
  // room is also bounded by the box minus the number.
  for (const c of art.querySelectorAll(
      'mjx-container[display="true"]:not(mjx-assistive-mml mjx-container)')) {
    if (!shown(c)) continue;
    out.counts.math++;
    const m = c.querySelector("mjx-math") || c;
    const content = Math.max(width(m), c.scrollWidth);
    // The room: a block-level container's own width, else the width of the block around it
    // (an inline formula, or display maths inside span.math, is only as wide as its content).
    let room = getComputedStyle(c).display.startsWith("inline") ? Infinity : c.clientWidth;
    for (let a = c.parentElement; a && room === Infinity; a = a.parentElement) {
      const cs = getComputedStyle(a);
      if (!cs.display.startsWith("inline") && cs.display !== "contents") {
        room = a.clientWidth - parseFloat(cs.paddingLeft) - parseFloat(cs.paddingRight);
      }
    }
    const box = c.closest("div.math");
    if (box && box !== c) {
      const cs = getComputedStyle(box);
      const eqno = box.querySelector(":scope > span.eqno");
      const gap = eqno ? (parseFloat(cs.columnGap) || 0) + width(eqno) : 0;
      room = Math.min(room, box.clientWidth - parseFloat(cs.paddingLeft)
                      - parseFloat(cs.paddingRight) - gap);
    }
    if (content > room + 1) {
      out.clipped.push({kind: "math", text: tex(c), content: Math.round(content),
                        box: Math.round(room), folded: folded(c), scrolls: scrolls(c)});
    }
  }
  // 2. Code and printed outputs: the text of a <pre> against its box.
  for (const pre of art.querySelectorAll("pre")) {
    if (!shown(pre) || pre.closest("mjx-container")) continue;
    const kind = pre.closest(".cell_output, div.output") ? "output" : "code";
    out.counts[kind]++;
    if (pre.scrollWidth > pre.clientWidth + 1) {
      out.clipped.push({kind, text: clean(pre.textContent), content: pre.scrollWidth,
                        box: pre.clientWidth, folded: folded(pre), scrolls: scrolls(pre)});
    }
  }
  // 3. Output images: shown width against natural width.
  for (const img of art.querySelectorAll(".cell_output img, div.output img")) {
    if (!shown(img) || !img.naturalWidth) continue;
    out.counts.image++;
    out.images.push({src: (img.currentSrc || img.src).slice(0, 60), alt: clean(img.alt),
                     natural: img.naturalWidth, shown: Math.round(width(img)),
                     folded: folded(img), frame: img.classList.contains("ddpm-frame")});
  }
  // 4. Progress bars: widget bars, and tqdm's text ("100%|###| 100/100 [00:09<00:00, 10it/s]").
  const TQDM = /\d+%\|[^|\n]*\||\[\d+:\d\d<\d+:\d\d|\d(?:it\/s|s\/it)\]/;
  for (const o of art.querySelectorAll(".cell_output, div.output")) {
    if (o.parentElement.closest(".cell_output, div.output")) continue;
    const bars = o.querySelectorAll(".widget-hprogress, .widget-progress, progress, "
                                    + "[role=progressbar]").length;
    const text = [...o.childNodes].map(n => n.nodeName === "SCRIPT" ? "" : n.textContent)
        .join(" ");
    const match = text.match(TQDM);
    if (bars || match) {
      out.progress.push({bars, text: clean(match ? text.slice(Math.max(0, match.index - 30))
                                                   : text)});
    }
  }
  // 5. Cut off without a scroll bar: walk the article; an element wider than the nearest box
  // that clips (overflow hidden/clip, or the article itself) is cut off, unless a box between
  // them scrolls. A box that hides its own overflow while its content is wider is cut off too.
  const kindOf = el => el.matches("mjx-container") ? "math"
      : el.closest(".cell_output, div.output") ? "output"
      : el.closest("pre, div.highlight") ? "code"
      : el.matches("img") ? "image" : el.matches("table") || el.closest("table") ? "table"
      : "other";
  const label = el => el.matches("mjx-container") ? tex(el) : clean(el.textContent)
      || (el.matches("img") ? `img ${clean(el.alt) || (el.currentSrc || "").slice(0, 40)}` : "");
  const ar = art.getBoundingClientRect();
  const walk = (el, left, right) => {
    for (const child of el.children) {
      if (["SCRIPT", "STYLE", "TEMPLATE"].includes(child.tagName)) continue;
      const cs = getComputedStyle(child);
      if (cs.display === "none" || cs.visibility === "hidden" || cs.position === "fixed") continue;
      const r = child.getBoundingClientRect();
      if (r.width === 0 && r.height === 0 && !child.children.length) continue;
      if (child.matches(".full-width, .full_width")) {
        // Meant to reach into the right margin (the theme's full-width blocks): the window
        // bounds it, not the article.
        walk(child, Math.max(0, left), document.documentElement.clientWidth);
        continue;
      }
      const ox = cs.overflowX;
      if (child.matches(".math, mjx-container")) {
        // A formula: its rendered maths (mjx-math; the box's scrollWidth also counts MathJax's
        // hidden assistive MathML) against the clip, unless its container scrolls.
        const c = child.matches("mjx-container") ? child : child.querySelector("mjx-container");
        if (!c) continue;
        const m = (c.querySelector("mjx-math") || c).getBoundingClientRect();
        // The box that scrolls, if any: the formula's container, or span.math around it.
        const scroller = scrolls(c) ? c : child !== c && scrolls(child) ? child : null;
        const canScroll = !!scroller;
        const sr = canScroll ? scroller.getBoundingClientRect() : m;
        const [l, rr] = [sr.left, sr.right];
        let lo = left, hi = right;
        if (!canScroll && c !== child && ["hidden", "clip"].includes(ox)) {
          lo = Math.max(lo, r.left + child.clientLeft);
          hi = Math.min(hi, r.left + child.clientLeft + child.clientWidth);
        }
        if (rr > hi + 1 || l < lo - 1) {
          out.cutoff.push({kind: "math", text: tex(c), content: Math.round(rr - l),
                           box: Math.round(hi - lo), folded: folded(c), tag: "mjx-container"});
        }
        continue;
      }
      if (r.width > 0 && (r.right > right + 1 || r.left < left - 1)) {
        out.cutoff.push({kind: kindOf(child), text: label(child), content: Math.round(r.width),
                         box: Math.round(right - left), folded: folded(child),
                         tag: child.tagName.toLowerCase()});
        continue;
      }
      if (ox === "auto" || ox === "scroll") continue;  // reachable with its scroll bar
      if (ox === "hidden" || ox === "clip") {
        if (child.scrollWidth > child.clientWidth + 1 && r.width > 0) {
          out.cutoff.push({kind: kindOf(child), text: label(child), content: child.scrollWidth,
                           box: child.clientWidth, folded: folded(child),
                           tag: child.tagName.toLowerCase()});
          continue;
        }
        const inner = r.left + child.clientLeft;
        walk(child, Math.max(left, inner), Math.min(right, inner + child.clientWidth));
      } else {
        const before = out.cutoff.length;
        walk(child, left, right);
        // Text (not an element) wider than the box: the element whose content spills out.
        const spill = r.left + child.clientLeft + child.scrollWidth;
        if (out.cutoff.length === before && child.scrollWidth > child.clientWidth + 1
            && child.clientWidth > 0 && (spill > right + 1)
            && !child.querySelector(".full-width, .full_width")) {
          out.cutoff.push({kind: kindOf(child), text: label(child),
                           content: Math.round(spill - r.left), box: Math.round(right - left),
                           folded: folded(child), tag: child.tagName.toLowerCase()});
        }
      }
    }
  };
  // The article, and the window: what sticks out of the window makes the page scroll sideways.
  walk(art, Math.max(ar.left, 0), Math.min(ar.right, document.documentElement.clientWidth));
  return out;
}
"""

# Runs in the page: move every static frame slider (ddpm_lib.viz.frame_slider) to its last
# position and report what the reader sees before and after.
SLIDERS_JS = r"""
() => [...document.querySelectorAll(".ddpm-frame-slider")].map((s, k) => {
  const input = s.querySelector('input[type="range"]');
  const out = s.querySelector("output");
  const visible = () => [...s.querySelectorAll("img.ddpm-frame")]
      .filter(im => getComputedStyle(im).display !== "none" && im.getClientRects().length);
  const state = () => ({srcs: visible().map(im => (im.currentSrc || im.src).slice(-40)),
                        label: out ? out.textContent : null, value: input ? input.value : null});
  const before = state();
  const frames = s.querySelectorAll("img.ddpm-frame").length;
  if (input) {
    const target = String(Math.max(Number(input.min || 0), Number(input.max || 0)));
    input.value = target === input.value ? String(input.min || 0) : target;
    input.dispatchEvent(new Event("input", {bubbles: true}));
  }
  return {index: k, frames, hasInput: !!input, hasOutput: !!out, before, after: state()};
})
"""

SETTLE_JS = """
async () => {
  for (const img of document.images) { img.loading = "eager"; }
  await Promise.all([...document.images].map(img => img.complete ? null :
      new Promise(r => { img.addEventListener("load", r); img.addEventListener("error", r); })));
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    await MathJax.startup.promise;
    // Typeset again only what is left: a second full pass would also typeset the hidden
    // assistive MathML copy of every formula (a second, nested mjx-container each).
    const left = [...document.querySelectorAll(".math")].filter(
        m => !m.querySelector("mjx-container"));
    if (left.length && MathJax.typesetPromise) { await MathJax.typesetPromise(left); }
  }
  return {mathjax: !!(window.MathJax && MathJax.version),
          mathNodes: document.querySelectorAll(".math").length};
}
"""


# ----------------------------------------------------------------- what the results mean
def image_too_small(img: dict[str, Any]) -> bool:
    """An output figure shown at less than IMAGE_MIN_RATIO of its natural width."""
    return img["natural"] >= IMAGE_MIN_NATURAL and img["shown"] < IMAGE_MIN_RATIO * img["natural"]


def slider_problems(sliders: list[dict[str, Any]]) -> list[str]:
    """What is wrong with the static frame sliders after SLIDERS_JS moved them."""
    problems = []
    for s in sliders:
        name = f"frame slider {s['index'] + 1}"
        if not s["hasInput"] or not s["hasOutput"] or s["frames"] < 2:
            problems.append(f"{name}: needs a range input, an <output> and >= 2 frames")
            continue
        before, after = s["before"], s["after"]
        if len(before["srcs"]) != 1 or len(after["srcs"]) != 1:
            problems.append(
                f"{name}: {len(before['srcs'])} then {len(after['srcs'])} frames "
                "visible, want exactly one"
            )
        elif before["srcs"] == after["srcs"]:
            problems.append(
                f"{name}: moving it ({before['value']} -> {after['value']}) did not "
                "change the picture"
            )
        if before["label"] == after["label"]:
            problems.append(f"{name}: moving it did not change its label ({before['label']!r})")
    return problems


def describe(block: dict[str, Any], width: int) -> str:
    """One failure line: width, kind, the block's first characters and the two widths."""
    where = " (folded)" if block.get("folded") else ""
    return (
        f"{width} px, {block['kind']}{where}: {block['text']!r}: content {block['content']} px"
        f" > box {block['box']} px"
    )


# ----------------------------------------------------------------- serving and measuring
class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def serve(site: Path) -> Iterator[str]:
    """Serve a built site from localhost; yields its base URL."""
    handler = functools.partial(_Quiet, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def measure_page(browser_page: Any, css: str | None = None) -> dict[str, Any]:
    """Measure a loaded, settled page at 1280 px and at 375 px; moves its sliders last.

    ``css``: a style sheet to add to the page first (to try CSS on a site built without it).
    Leaves the page at the phone width, unfolded. Returns {"wide": ..., "phone": ...,
    "sliders": [...]}, with "wide" and "phone" as MEASURE_JS returns them.
    """
    if css:
        browser_page.add_style_tag(content=css)
    browser_page.set_viewport_size(WIDE)
    wide = browser_page.evaluate(MEASURE_JS, {"unfold": True, "phone": False})
    sliders = browser_page.evaluate(SLIDERS_JS)
    browser_page.set_viewport_size(PHONE)
    browser_page.evaluate(
        "() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))"
    )
    phone = browser_page.evaluate(MEASURE_JS, {"unfold": True, "phone": True})
    return {"wide": wide, "phone": phone, "sliders": sliders}


def read_notebook(notebook: Path, rev: str | None = None) -> dict[str, Any]:
    """A notebook from the working tree, or as committed in git revision ``rev``."""
    if rev is None:
        return json.loads(notebook.read_text())
    path = notebook.resolve().relative_to(ROOT).as_posix()
    shown = subprocess.run(
        ["git", "show", f"{rev}:{path}"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return json.loads(shown.stdout)


def visible_code_lines(notebook: Path, blank: bool = True, rev: str | None = None) -> int:
    """Lines of code in the code cells the reader sees unfolded (not hidden, folded or removed);
    ``blank=False`` leaves out the empty lines; ``rev``: the notebook as committed there."""
    cells = read_notebook(notebook, rev)["cells"]
    return sum(
        len([line for line in "".join(c["source"]).splitlines() if blank or line.strip()])
        for c in cells
        if c["cell_type"] == "code" and not HIDDEN_TAGS.intersection(c["metadata"].get("tags", []))
    )


def all_pages(site: Path) -> list[str]:
    """Every HTML page of a built site (not the theme's own folders)."""
    skip = {"_static", "_sources", "_images"}
    return sorted(
        p.relative_to(site).as_posix()
        for p in site.rglob("*.html")
        if not skip.intersection(p.relative_to(site).parts[:-1])
        and 'http-equiv="refresh"' not in p.read_text(errors="replace").lower()
    )


def chapter_pages(site: Path) -> list[str]:
    pages = sorted(p.relative_to(site).as_posix() for p in (site / "notebooks").glob("*.html"))
    pages = [p for p in pages if CHAPTER_RE.match(Path(p).stem)]
    errata = site / "book" / "errata.html"
    return pages + (["book/errata.html"] if errata.is_file() else [])


def summarize(page: str, m: dict[str, Any], rev: str | None = None) -> dict[str, Any]:
    wide, phone = m["wide"], m["phone"]

    def count(blocks: list[dict], kind: str, **flags: bool) -> int:
        return sum(
            b["kind"] == kind and all(b.get(k) == v for k, v in flags.items()) for b in blocks
        )

    row = {
        "page": page,
        "page_height_px": wide["pageHeight"],
        "blocks": wide["counts"],
        "clipped_1280": {k: count(wide["clipped"], k) for k in ("math", "code", "output")},
        "clipped_1280_unfolded_only": {
            k: count(wide["clipped"], k, folded=False) for k in ("math", "code", "output")
        },
        "cutoff_375": len(phone["cutoff"]),
        "cutoff_375_by_kind": {},
        "small_images_1280": sum(image_too_small(i) for i in wide["images"]),
        "progress_outputs": len(wide["progress"]),
        "sliders": len(m["sliders"]),
        "slider_problems": slider_problems(m["sliders"]),
        "details": {
            "clipped_1280": [describe(b, 1280) for b in wide["clipped"]],
            "cutoff_375": [describe(b, 375) for b in phone["cutoff"]],
            "small_images_1280": [
                f"{i['alt'] or i['src']}: shown {i['shown']} of {i['natural']} px"
                for i in wide["images"]
                if image_too_small(i)
            ],
            "progress": [p["text"] for p in wide["progress"]],
        },
    }
    for b in phone["cutoff"]:
        row["cutoff_375_by_kind"][b["kind"]] = row["cutoff_375_by_kind"].get(b["kind"], 0) + 1
    stem = Path(page).stem
    notebook = ROOT / ("notebooks" if page.startswith("notebooks/") else "book") / f"{stem}.ipynb"
    if notebook.is_file():
        row["visible_code_lines"] = visible_code_lines(notebook, rev=rev)
        row["visible_code_lines_nonblank"] = visible_code_lines(notebook, blank=False, rev=rev)
    return row


def measure_site(
    site: Path, pages: list[str], css: str | None = None, rev: str | None = None
) -> list[dict[str, Any]]:
    from playwright.sync_api import sync_playwright

    rows = []
    with serve(site) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        context = browser.new_context(viewport=WIDE)
        context.route(
            "**/*", lambda r: r.continue_() if r.request.url.startswith(url) else r.abort()
        )
        for page in pages:
            browser_page = context.new_page()
            browser_page.goto(f"{url}/{page}", wait_until="load", timeout=60_000)
            browser_page.evaluate(SETTLE_JS)
            rows.append(summarize(page, measure_page(browser_page, css), rev))
            browser_page.close()
        browser.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("site", type=Path, help="the built site (e.g. _build/html)")
    parser.add_argument("--out", type=Path, help="write the figures to this JSON file")
    parser.add_argument("--css", type=Path, help="add this style sheet to every page first")
    parser.add_argument(
        "--rev", help="count code lines in the notebooks as committed in this git revision"
    )
    parser.add_argument("--all", action="store_true", help="every page, not only the chapters")
    parser.add_argument("pages", nargs="*", help="pages to measure (default: every chapter)")
    args = parser.parse_intermixed_args(argv)
    css = args.css.read_text() if args.css else None
    pages = args.pages or (all_pages(args.site) if args.all else chapter_pages(args.site))
    rows = measure_site(args.site, pages, css, args.rev)
    header = f"{'page':38} {'math':>5} {'code':>5} {'out':>5} {'375':>5} {'img':>4} {'bars':>4}"
    print(header + f" {'lines':>6} {'height':>7}")
    for r in rows:
        c = r["clipped_1280"]
        print(
            f"{r['page']:38} {c['math']:5} {c['code']:5} {c['output']:5} {r['cutoff_375']:5}"
            f" {r['small_images_1280']:4} {r['progress_outputs']:4}"
            f" {r.get('visible_code_lines', '-'):>6} {r['page_height_px']:7}"
        )
    if args.out:
        meta = {
            "site": str(args.site),
            "css": str(args.css) if args.css else None,
            "notebooks": args.rev or "working tree",
        }
        args.out.write_text(json.dumps({**meta, "pages": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
