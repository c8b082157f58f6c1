"""Every committed chapter notebook has the shape the book promises (DESIGN.md §5).

nbval (make test) re-runs the notebooks in quick mode; these tests check what is committed:
outputs from a full top-to-bottom run, the Colab badge, the checks and the exercises.
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
]
COLAB = "https://colab.research.google.com/github/" + REPO_URL.removeprefix("https://github.com/")


def load(name: str) -> dict:
    return json.loads((ROOT / "notebooks" / f"{name}.ipynb").read_text())


def source(cell: dict) -> str:
    return "".join(cell["source"])


def code_cells(nb: dict) -> list[dict]:
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


@pytest.fixture(params=CHAPTERS)
def chapter(request):
    return request.param, load(request.param)


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


def test_colab_badge_points_at_the_notebooks_own_path(chapter):
    name, nb = chapter
    header = source(nb["cells"][0])
    assert f"({COLAB}/blob/main/notebooks/{name}.ipynb)" in header


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


def test_numerical_checks_are_compared_by_nbval(chapter):
    name, nb = chapter
    checks = [c for c in code_cells(nb) if source(c).startswith("# NBVAL_CHECK_OUTPUT")]
    assert checks, f"{name} has no NBVAL_CHECK_OUTPUT cell"
    assert all(c["outputs"] for c in checks), f"{name}: a check cell printed nothing"


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
