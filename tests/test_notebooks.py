"""Every committed chapter notebook has the shape the book promises (DESIGN.md §5).

nbval (make test) re-runs the notebooks in quick mode; these tests check what is committed:
outputs from a full top-to-bottom run, the Colab badge, the checks and the exercises; and that
what the reader sees teaches diffusion, not the build: no test plumbing (quick mode, nbval
markers, machine paths) in the prose, in the code shown or in any output, no widget outputs on
the static page, and image grids of at most 8 per row.
"""

import json
import re
from pathlib import Path

import pytest

from ddpm_lib.training.pretrained import REPO_URL

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = [
    "01_forward_recurrence",
    "02_closed_form",
    "03_bayes_posterior",
    "04_eps_reparameterization",
    "05_elbo",
    "06_sde_view",
    "07_sampling_faster",
    "08_guidance",
    "09_flow_matching",
]
COLAB = "https://colab.research.google.com/github/" + REPO_URL.removeprefix("https://github.com/")


def load(name: str) -> dict:
    return json.loads((ROOT / "notebooks" / f"{name}.ipynb").read_text())


def source(cell: dict) -> str:
    return "".join(cell["source"])


def code_cells(nb: dict) -> list[dict]:
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


# The executed pages of the book: the chapters and the errata (book/errata.ipynb), for the rules
# about what the reader sees.
BOOK_NOTEBOOKS = [f"notebooks/{c}.ipynb" for c in CHAPTERS] + ["book/errata.ipynb"]
# Tags under which the book hides a cell's source (folded ones are shown on a click).
HIDDEN = {"remove-input", "remove-cell", "hide-cell"}
FOLDED = {"hide-input"}


@pytest.fixture(params=CHAPTERS)
def chapter(request):
    return request.param, load(request.param)


@pytest.fixture(params=BOOK_NOTEBOOKS, ids=[Path(p).stem for p in BOOK_NOTEBOOKS])
def notebook(request):
    return request.param, json.loads((ROOT / request.param).read_text())


def tags(cell: dict) -> set[str]:
    return set(cell.get("metadata", {}).get("tags", []))


def excerpt(text: str, start: int, end: int, width: int = 40) -> str:
    return repr(text[max(0, start - width) : end + width].replace("\n", " "))


def output_text(output: dict) -> str:
    """The text of an output as the book shows it (stream, text/plain, HTML, Markdown)."""
    if output["output_type"] == "stream":
        return "".join(output.get("text", ""))
    data = output.get("data", {})
    parts = [data.get(k, "") for k in ("text/plain", "text/html", "text/markdown", "text/latex")]
    if output["output_type"] == "error":
        parts.append("\n".join(output.get("traceback", [])))
    return "\n".join("".join(p) if isinstance(p, list) else p for p in parts)


def test_every_chapter_notebook_exists():
    missing = [c for c in CHAPTERS if not (ROOT / "notebooks" / f"{c}.ipynb").exists()]
    assert not missing, f"missing chapter notebooks: {missing}"


def test_code_cells_were_executed_top_to_bottom_once(chapter):
    name, nb = chapter
    counts = [c["execution_count"] for c in code_cells(nb)]
    assert counts == list(range(1, len(counts) + 1)), f"{name}: execution counts {counts}"


def test_committed_outputs_are_present_and_error_free(chapter):
    name, nb = chapter
    outputs = [o for c in code_cells(nb) for o in c["outputs"]]
    assert outputs, f"{name} has no stored outputs"
    assert not [o for o in outputs if o["output_type"] == "error"], f"{name} stored an error"
    assert any("image/png" in o.get("data", {}) for o in outputs), f"{name} shows no figure"


def test_colab_badge_opens_the_chapters_colab_edition(chapter):
    name, nb = chapter
    header = source(nb["cells"][0])
    assert f"({COLAB}/blob/main/colab/{name}.ipynb)" in header


def test_colab_setup_cell_is_skipped_by_tests_and_book_and_keeps_torch(chapter):
    name, nb = chapter
    setup = [c for c in code_cells(nb) if "pip" in source(c) and "install" in source(c)]
    assert len(setup) == 1, f"{name}: expected one setup cell"
    tags = setup[0]["metadata"].get("tags", [])
    assert "nbval-skip" in tags and "remove-cell" in tags
    assert 'find_spec("ddpm_lib")' in source(setup[0])
    pip_lines = [line for line in source(setup[0]).splitlines() if '"pip"' in line]
    assert pip_lines and not any(re.search(r"\btorch", line) for line in pip_lines)


def test_quick_mode_is_read_in_a_parameters_cell(chapter):
    name, nb = chapter
    params = [c for c in code_cells(nb) if "parameters" in c["metadata"].get("tags", [])]
    assert len(params) == 1 and "quick_mode()" in source(params[0]), name
    # The sizes that differ in quick mode are set there once; the book does not show the cell.
    assert "remove-cell" in tags(params[0]), f"{name}: the parameters cell needs remove-cell"


def test_numerical_checks_are_compared_by_nbval(notebook):
    # nbval (--nbval-lax) compares the outputs of the cells tagged nbval-check-output with the
    # committed ones; the tag, not a "# NBVAL_CHECK_OUTPUT" comment the reader would see.
    name, nb = notebook
    checks = [
        (i, c)
        for i, c in enumerate(nb["cells"])
        if c["cell_type"] == "code" and "nbval-check-output" in tags(c)
    ]
    assert checks, f"{name} has no cell tagged nbval-check-output"
    silent = [i for i, c in checks if not c["outputs"]]
    assert not silent, f"{name}: checked cells {silent} have no committed output to compare"


def test_no_nbval_comment_markers(notebook):
    name, nb = notebook
    marked = [
        f"cell {i}: {m.group(0)!r}"
        for i, c in enumerate(nb["cells"])
        for m in re.finditer(r"#\s*NBVAL_\w+", source(c))
    ]
    assert not marked, (
        f"{name}: use the cell tags (nbval-check-output, nbval-skip) instead of the comments: "
        f"{marked}"
    )


# Build plumbing a reader must not meet: the test harness's words and the machine's paths.
PLUMBING = [
    (
        re.compile(r"quick[ _-]?mode", re.IGNORECASE),
        "the test harness's quick mode (import quick_mode in the parameters cell)",
    ),
    (re.compile(r"\bQUICK\b"), "the quick-mode flag"),
    (re.compile(r"DDPM_QUICK"), "the quick-mode variable"),
    (re.compile(r"full[ -]run", re.IGNORECASE), "the full run (quote the numbers plainly)"),
    (re.compile(r"in both modes", re.IGNORECASE), "the two run modes"),
    (re.compile(r"nbval", re.IGNORECASE), "the notebook test runner"),
    (re.compile(r"/work/|/home/|/tmp/|/Users/|[A-Z]:\\\\Users"), "a machine path"),
    (re.compile(r"\.devdata"), "the developer data folder"),
    (re.compile(r"site-packages"), "an installation path"),
    (re.compile(r"checkpoints/[\w./-]*\.pt\b"), "a checkpoint file path"),
]


def reader_visible_texts(nb: dict) -> list[tuple[int, str, str]]:
    """(cell index, where, text) for what a reader of the book can see: Markdown, the source of
    shown and folded code cells, every output. The parameters cell and the Colab setup cell
    (both removed from the book) are exempt."""
    texts = []
    for i, cell in enumerate(nb["cells"]):
        cell_tags = tags(cell)
        if cell["cell_type"] == "markdown":
            texts.append((i, "markdown", source(cell)))
            continue
        if cell["cell_type"] != "code":
            continue
        colab_setup = "remove-cell" in cell_tags and "pip" in source(cell)
        if "parameters" in cell_tags or colab_setup:
            continue
        if not cell_tags & HIDDEN:
            texts.append((i, "folded source" if cell_tags & FOLDED else "source", source(cell)))
        for output in cell.get("outputs", []):
            texts.append((i, "output", output_text(output)))
    return texts


def test_no_build_plumbing_where_the_reader_sees_it(notebook):
    name, nb = notebook
    found = []
    for i, where, text in reader_visible_texts(nb):
        for pattern, what in PLUMBING:
            for m in pattern.finditer(text):
                found.append(f"cell {i} ({where}), {what}: {excerpt(text, m.start(), m.end())}")
    assert not found, f"{name}: {len(found)} traces of the build:\n  " + "\n  ".join(found)


def test_parameters_cell_is_removed_from_the_book(notebook):
    name, nb = notebook
    for i, cell in enumerate(nb["cells"]):
        if "parameters" in tags(cell):
            assert "remove-cell" in tags(cell), f"{name}: parameters cell {i} needs remove-cell"


def test_no_widget_outputs_on_the_static_page(notebook):
    # An ipywidgets control is dead on the static site: keep it in a remove-cell cell (Colab and
    # Jupyter users run it) and show ddpm_lib.viz.frame_slider's static version instead.
    name, nb = notebook
    widgets = [
        i
        for i, c in enumerate(nb["cells"])
        if c["cell_type"] == "code"
        and not tags(c) & {"remove-cell", "remove-output"}
        and any(
            "application/vnd.jupyter.widget-view+json" in o.get("data", {})
            for o in c.get("outputs", [])
        )
    ]
    assert not widgets, (
        f"{name}: cells {widgets} show widget outputs (progress bars or controls) on the page; "
        "pass progress=False, or tag an ipywidgets cell remove-cell"
    )


# tqdm's text bar: "100%|#####| 1000/1000 [00:09<00:00, 10.7it/s]".
TQDM_RE = re.compile(r"\d+%\|[^|\n]*\||\[\d+:\d\d<\d+:\d\d|\d(?:it/s|s/it)\]")


def test_no_progress_bars_in_outputs(notebook):
    # A stack of progress bars teaches nothing: pass progress=False to the library's loops (and
    # print one line with the time if it helps).
    name, nb = notebook
    bars = [
        f"cell {i}: {excerpt(text, m.start(), m.end())}"
        for i, where, text in reader_visible_texts(nb)
        if where == "output"
        for m in [TQDM_RE.search(text)]
        if m
    ]
    assert not bars, f"{name}: progress bars in the outputs: {bars}"


GRID_CALL_RE = re.compile(r"\b(show_images|make_grid|save_grid)\(")
NROW_RE = re.compile(r"\bnrow\s*=\s*([A-Za-z_]\w*|\d+)")


def _values_of(name: str, code: str) -> list[int]:
    """The integers a simple assignment gives a name: `N = 16` or `N = 4 if QUICK else 16`."""
    values = []
    for m in re.finditer(rf"^\s*{name}\s*=\s*(.+?)\s*(?:#.*)?$", code, re.MULTILINE):
        rhs = m.group(1)
        if re.fullmatch(r"\d+|\d+ if .+ else \d+", rhs):
            values += [int(v) for v in re.findall(r"\b\d+\b", rhs)]
    return values


def test_image_grids_have_at_most_8_per_row(notebook):
    # 16 images in a row shrink to ~40 px each on the page: two rows of 8 instead.
    name, nb = notebook
    code = "\n".join(source(c) for c in nb["cells"] if c["cell_type"] == "code")
    wide = []
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        text = source(cell)
        for call in GRID_CALL_RE.finditer(text):
            # The call's arguments: up to the closing parenthesis at depth 0.
            depth, end = 0, len(text)
            for k in range(call.end() - 1, len(text)):
                depth += {"(": 1, ")": -1}.get(text[k], 0)
                if depth == 0:
                    end = k
                    break
            for arg in NROW_RE.finditer(text[call.end() : end]):
                value = arg.group(1)
                values = [int(value)] if value.isdigit() else _values_of(value, code)
                if any(v > 8 for v in values):
                    wide.append(f"cell {i}: {call.group(1)}(..., nrow={value}) = {max(values)}")
    assert not wide, f"{name}: image grids wider than 8 per row: {wide}"


def test_at_least_three_exercises_with_solutions(chapter):
    name, nb = chapter
    text = "\n".join(source(c) for c in nb["cells"] if c["cell_type"] == "markdown")
    assert "## Exercises" in text, name
    exercises = text.split("## Exercises", 1)[1]
    assert exercises.count(":::{admonition} Solution") >= 3, name
    assert ":class: dropdown" in exercises, name


def test_summary_and_references_close_the_chapter(chapter):
    name, nb = chapter
    text = "\n".join(source(c) for c in nb["cells"] if c["cell_type"] == "markdown")
    assert "## Summary" in text and "## References" in text and "{cite}" in text, name


def test_chapters_fall_back_to_the_recipes_that_made_the_shipped_checkpoints(chapter):
    # One registry: a chapter names the checkpoint, and load_or_train trains its recipe
    # (ddpm_lib.training.RECIPES) when the file cannot be had; no chapter writes its own.
    from ddpm_lib.training import RECIPES

    name, nb = chapter
    code = "\n".join(source(c) for c in code_cells(nb))
    for call in re.finditer(r"load_or_train\(\s*([^,)]*)", code):
        assert call.group(1).strip().strip("\"'") in RECIPES, f"{name}: {call.group(0)}"
    assert "TrainConfig(" not in code or "Trainer(" in code, (
        f"{name} builds a TrainConfig only to pass it to load_or_train"
    )
