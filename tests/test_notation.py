"""One notation across the book (book/notation.md): the variants the book rules out.

Scanned: the Markdown cells of the chapters (notebooks/NN_*.ipynb) and of book/errata.ipynb,
the LaTeX in their code cells' strings (plot labels such as r"$\\varepsilon$"), and the pages
book/*.md. Maths ($...$, $$...$$, amsmath environments) is checked for TeX variants, the prose
around it for words. Code (fenced blocks, `inline code`) is not notation and is skipped.

Quoting another paper's notation (the notation page's map to the papers) is allowed inside the
table ``::::{div} ... notation-table`` or between the Markdown comments
``<!-- other-notation -->`` and ``<!-- /other-notation -->``.
"""

from __future__ import annotations

import io
import json
import re
import tokenize
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
PAGES = sorted((ROOT / "book").glob("*.md")) + [ROOT / "book" / "errata.ipynb"]
SOURCES = CHAPTERS + PAGES


@dataclass(frozen=True)
class Rule:
    """A variant the book rules out: where it is looked for, and why it is wrong."""

    pattern: re.Pattern
    reason: str
    where: str = "math"  # "math", "prose" (without the maths) or "text" (prose with maths)
    only: tuple[str, ...] = ()  # only in these sources (file stems); empty: everywhere
    except_in: tuple[str, ...] = ()  # not in these sources (file stems)
    words: bool = False  # also look inside \mathrm{...}, \text{...}, \mathcal{...} etc.


I_RULE = (
    "i only ever means the 0-based code index i = t - 1: maths counts steps with t = 1..T "
    "(x_t, beta_t, alpha_bar_t), and a pixel or component takes another letter (j)"
)
RULES = [
    Rule(
        re.compile(r"\\epsilon(?![A-Za-z])"),
        "the book's epsilon is \\varepsilon (the network is \\varepsilon_\\theta), never \\epsilon",
        words=True,
    ),
    Rule(re.compile("\u03f5"), "the book's epsilon is ε (\\varepsilon), not ϵ", where="prose"),
    Rule(
        re.compile(r"\\mathbb\s*\{?\s*R\s*\}?\s*\^\s*\{?\s*D\b"),
        "the data dimension is d: x lives in \\mathbb{R}^d",
    ),
    Rule(
        # D where a dimension stands: R^D, a product or sum up to D, 1/D, D ln 2, T * D, 8D,
        # D = 784, or the symbol alone ("$D$").
        re.compile(
            r"\^\s*\{?\s*D\s*\}?(?![A-Za-z])|/\s*D(?![A-Za-z_])|\\frac\{[^{}]*\}\{D\}"
            r"|(?<![A-Za-z\\])D\s*\\(?:ln|log|cdot)\b|\\cdot\s*D(?![A-Za-z_])"
            r"|(?<![A-Za-z\\])D\s*=\s*\d|(?<![A-Za-z\\.])\d+\s*D(?![A-Za-z_])"
            r"|(?<![A-Za-z\\])D\s*c_|^\$\s*D\s*\$$"
        ),
        "the data dimension is d, never D",
    ),
    Rule(
        re.compile(r"\b(?:dimension|dimensions)\s+D\b|\bD\s*=\s*\d"),
        "the data dimension is d, never D",
        where="prose",
    ),
    Rule(
        re.compile(r"(?<![A-Za-z\\])p_\{?\s*[ts]\s*\}?(?![A-Za-z0-9{])"),
        "the marginal of x_t under the forward process is q_t (q_t(x), \\nabla_x \\log q_t); "
        "p is kept for the model p_\\theta and the prior p(x_T), so no other quantity is p_t",
    ),
    Rule(
        re.compile(r"\\sigma\s*(?:\^\{?2\}?)?\s*\(\s*[ts]\s*\)"),
        "sigma(t) was Chapter 6's name for the noise level: write \\sqrt{1-\\bar\\alpha(t)} "
        "(or \\sigma_{\\mathrm{VE}} for the variance-exploding level); sigma_t is only the "
        "reverse step's standard deviation",
    ),
    Rule(
        re.compile(r"\\sigma_\{?t\}?\^\{?2\}?\s*=\s*1\s*-"),
        "Var[x_t] is written \\operatorname{Var}[x_t], not sigma_t^2 (sigma_t is only the reverse "
        "step's standard deviation)",
    ),
    Rule(
        re.compile(r"\\sigma_\{?t\}?(?![A-Za-z0-9])"),
        "sigma_t is only the standard deviation of the reverse step p_theta(x_{t-1} | x_t) "
        "(Chapters 3-5, and DDIM's sigma_t in Chapter 7); the noise level of x_t is "
        "\\sqrt{1-\\bar\\alpha_t}, its variance \\operatorname{Var}[x_t]",
        # Where no reverse step exists yet; later chapters may use sigma_t in its one meaning.
        only=("01_forward_recurrence", "02_closed_form"),
    ),
    Rule(
        re.compile(r"\\sigma_(?!\{\\mathrm\{VE\}[,}])\{?[^{}$]{0,12}VE"),
        "the variance-exploding noise level is one symbol: \\sigma_{\\mathrm{VE}}",
        words=True,
    ),
    Rule(
        re.compile(r"(?<![A-Za-z\\])c_\{?t\}?(?![A-Za-z0-9])"),
        "c_t is only Chapter 5's KL constant: name this quantity with another letter",
        only=tuple(p.stem for p in CHAPTERS if not p.stem.startswith("05_")),
    ),
    Rule(
        re.compile(r"(?<!\\operatorname\{)(?<!\\operatorname\{\{)(?<![A-Za-z])Var\b"),
        "a variance is written \\operatorname{Var}[...]",
        words=True,
    ),
    # The letter i: never a 1-based step, a pixel, or a component in maths.
    Rule(re.compile(r"_\s*i(?![A-Za-z0-9])"), I_RULE),
    Rule(re.compile(r"_\{\s*i\s*\}|_\{[^{}$]*[,\s]i\s*\}"), I_RULE),
    Rule(re.compile(r"_\{\s*i\s*-"), I_RULE + " (x_{i-1} counts steps with i)"),
    Rule(re.compile(r"_\{\s*i\s*=\s*1\b|(?<![A-Za-z\\])i\s*=\s*1\s*,"), I_RULE + " (1-based)"),
    Rule(re.compile(r"(?<![A-Za-z\\])i\s*\\in\s*\\\{\s*1\b"), I_RULE + " (1-based)"),
    Rule(re.compile(r"(?<![A-Za-z\\])1\s*\\le(?:q)?\s*i\b"), I_RULE + " (1-based)"),
    Rule(
        re.compile(r"\bsteps?\s+(?:\$i\$|i\b|`i`)(?!\s*[+=-])"),
        "steps are t = 1..T; i is the code index i = t - 1 (write 'step t', or 'code index i')",
        where="text",
    ),
]


# ----------------------------------------------------------------- what is maths, what is prose
FENCE_RE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
CODE_SPAN_RE = re.compile(r"(`+)(?!`).*?(?<!`)\1(?!`)", re.DOTALL)
EXEMPT_RES = [
    re.compile(r"<!--\s*other-notation\s*-->.*?<!--\s*/other-notation\s*-->", re.DOTALL),
    re.compile(r"^(:{3,})\{div\}[^\n]*notation-table.*?^\1\s*$", re.MULTILINE | re.DOTALL),
]
DISPLAY_RE = re.compile(r"\$\$(.+?)\$\$", re.DOTALL)
ENV_RE = re.compile(r"\\begin\{(\w+\*?)\}.*?\\end\{\1\}", re.DOTALL)
INLINE_RE = re.compile(r"(?<![\\$])\$(?!\$)((?:[^$\n]|\n(?!\s*\n))+?)(?<!\\)\$")
# Text in \mathrm{...}, \text{...} and the like is words, not symbols (\mathcal{D}: a set).
WORDS_RE = re.compile(
    r"\\(?:mathrm|text|textrm|operatorname|mathcal|mathbf|mathsf|label)\{[^{}]*\}"
)


def blank(match: re.Match) -> str:
    """Replace a match by spaces, keeping line lengths (and so the offsets) unchanged."""
    return re.sub(r"[^\n]", " ", match.group(0))


def split_markdown(text: str) -> tuple[list[str], str, str]:
    """(the maths segments, the prose, the prose with its maths) of a Markdown text, without
    code and exempt regions."""
    for exempt in EXEMPT_RES:
        text = exempt.sub(blank, text)
    text = FENCE_RE.sub(blank, text)
    text = CODE_SPAN_RE.sub(blank, text)
    with_maths = text
    maths = []
    for regex in (DISPLAY_RE, ENV_RE, INLINE_RE):
        maths += [m.group(0) for m in regex.finditer(text)]
        text = regex.sub(blank, text)
    return maths, text, with_maths


def latex_strings(code: str) -> list[str]:
    """The string literals of a code cell that contain maths ($...$)."""
    strings = []
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(code).readline))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return re.findall(r"\$[^$\n]+\$", code)
    for tok in tokens:
        if tok.type == tokenize.STRING and "$" in tok.string:
            strings += [m.group(0) for m in INLINE_RE.finditer(tok.string)]
    return strings


def texts(path: Path) -> list[tuple[str, list[str], str, str]]:
    """(where, maths segments, prose, prose with maths) for each Markdown cell, page or code cell
    of a source."""
    if path.suffix == ".md":
        return [("page", *split_markdown(path.read_text()))]
    out = []
    for i, cell in enumerate(json.loads(path.read_text())["cells"]):
        text = "".join(cell["source"])
        if cell["cell_type"] == "markdown":
            out.append((f"cell {i}", *split_markdown(text)))
        elif cell["cell_type"] == "code":
            out.append((f"cell {i} (code)", latex_strings(text), "", ""))
    return out


def violations(path: Path) -> list[str]:
    found = []
    stem = path.stem
    for where, maths, prose, with_maths in texts(path):
        for rule in RULES:
            if (rule.only and stem not in rule.only) or stem in rule.except_in:
                continue
            if rule.where == "prose":
                pairs = [(prose, prose)]
            elif rule.where == "text":
                pairs = [(with_maths, with_maths)]
            elif rule.words:
                pairs = [(s, s) for s in maths]
            else:  # words inside \mathrm{...} etc. are not symbols: blank them
                pairs = [(s, WORDS_RE.sub(blank, s)) for s in maths]
            for original, segment in pairs:
                for m in rule.pattern.finditer(segment):
                    a, b = max(0, m.start() - 30), m.end() + 30
                    context = " ".join(original[a:b].split())
                    found.append(f"{where}: {context!r}: {rule.reason}")
    return found


@pytest.mark.parametrize("path", SOURCES, ids=[p.stem for p in SOURCES])
def test_one_notation(path: Path):
    found = violations(path)
    assert not found, (
        f"{path.relative_to(ROOT)}: {len(found)} notation variants the book rules out "
        "(book/notation.md; quote another paper's notation between <!-- other-notation --> and "
        "<!-- /other-notation -->):\n  " + "\n  ".join(found)
    )


# ----------------------------------------------------------------- the rules, on known cases
@pytest.mark.parametrize(
    "text",
    [
        r"$\epsilon_\theta(x_t, t)$",
        r"$x \in \mathbb{R}^D$",
        r"$x \in \mathbb R^{D}$",
        r"the bound over $T \cdot D$ terms",
        r"$\nabla_x \log p_t(x)$",
        r"$p_{t}(x)$",
        r"$\sigma(t) = \sqrt{1 - \bar\alpha(t)}$",
        r"$\sigma_t^2 = 1 - (1 - v)\bar\alpha_t$",
        r"$\sigma_{VE}$",
        r"$\mathrm{Var}[x_t]$",
        r"$x_i = x_{i-1} + \beta_i$",
        r"$\prod_{i=1}^{d} p(x^j)$",
        r"$i = 1, \dots, T$",
        r"at step $i$ the sampler",
        "the ϵ of the paper",
    ],
)
def test_each_rule_catches_its_variant(text: str, tmp_path: Path):
    page = tmp_path / "page.md"
    page.write_text(text + "\n")
    assert violations(page), f"no rule caught {text!r}"


@pytest.mark.parametrize(
    "text",
    [
        r"$\varepsilon_\theta(x_t, t)$ and $\varepsilon \sim \mathcal{N}(0, I)$",
        r"$x \in \mathbb{R}^d$, $\nabla_x \log q_t(x)$, $p_\theta(x_{t-1} \mid x_t)$, $p(x_T)$",
        r"$\sqrt{1-\bar\alpha(t)}$, $\sigma_{\mathrm{VE}}$, $\operatorname{Var}[x_t]$",
        r"code index $i = t - 1$ holds $\bar\alpha_{i+1}$; step $t$; `betas[i]`; `p_t(x)`",
        r"$\mathrm{KL}$, $\mathcal{D}$, $\mathrm{d}x$, $D_{\mathrm{KL}}$",
        "```python\nx = eps / p_t(x)  # \\epsilon\n```",
        "<!-- other-notation -->Song et al. write $p_t(\\mathbf{x})$<!-- /other-notation -->",
    ],
)
def test_the_book_notation_passes(text: str, tmp_path: Path):
    page = tmp_path / "page.md"
    page.write_text(text + "\n")
    assert not violations(page), violations(page)


def test_chapter_rules_apply_to_their_chapters(tmp_path: Path):
    # c_t is Chapter 5's constant; sigma_t is the reverse step's (not in Chapters 1, 2, 6).
    for stem, text, caught in [
        ("05_elbo", r"$c_t$", False),
        ("04_eps_reparameterization", r"$c_t$", True),
        ("03_bayes_posterior", r"$\sigma_t^2 = \tilde\beta_t$", False),
        ("01_forward_recurrence", r"$\sigma_t$", True),
    ]:
        page = tmp_path / f"{stem}.md"
        page.write_text(text + "\n")
        assert bool(violations(page)) == caught, (stem, text, violations(page))
