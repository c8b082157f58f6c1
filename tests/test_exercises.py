"""The chapters' coding exercises (ddpm_lib.exercises): each check passes the chapter's solution,
fails a plausible wrong answer, and waits politely for an unfinished stub.

The convention in a chapter notebook:
- a code cell tagged ``exercise`` defines the reader's function, whose body raises
  NotImplementedError;
- a later code cell calls ``check("chNN.name", function)`` (ddpm_lib.exercises.check);
- a later Markdown cell holds the solution in a dropdown (``:::{admonition} Solution`` with
  ``:class: dropdown``): a self-contained ```python block that defines the function.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from ddpm_lib.exercises import all_exercises, check, get, verdict

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted(p for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
CHECK_RE = re.compile(r"""check\(\s*["'](ch\d\d\.\w+)["']\s*,\s*(\w+)\s*\)""")
FENCE_RE = re.compile(r"```python\n(.*?)```", re.DOTALL)


def cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def source(cell: dict) -> str:
    return "".join(cell["source"])


def exercise_uses(path: Path) -> list[tuple[str, str, int]]:
    """(exercise name, function name, index of the check cell) for every check in a notebook."""
    found = []
    for i, cell in enumerate(cells(path)):
        if cell["cell_type"] == "code":
            found += [(m.group(1), m.group(2), i) for m in CHECK_RE.finditer(source(cell))]
    return found


def solution_source(path: Path, function: str, after: int) -> str:
    """The ```python block of a Solution dropdown after cell ``after`` that defines ``function``."""
    for cell in cells(path)[after + 1 :]:
        text = source(cell)
        if cell["cell_type"] != "markdown" or ":class: dropdown" not in text:
            continue
        for block in FENCE_RE.findall(text):
            if re.search(rf"^def {function}\(", block, re.MULTILINE):
                return block
    raise AssertionError(f"{path.name}: no Solution dropdown defines {function}()")


def solutions() -> list[tuple[str, str, str]]:
    """(exercise name, function name, solution code) for every check cell of every chapter."""
    out = []
    for path in CHAPTERS:
        for name, function, index in exercise_uses(path):
            out.append((name, function, solution_source(path, function, index)))
    return out


SOLUTIONS = solutions()


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_every_chapter_has_a_coding_exercise_with_a_check_and_a_folded_solution(path):
    uses = exercise_uses(path)
    assert uses, f"{path.name}: no check(...) cell of a coding exercise"
    stubs = [c for c in cells(path) if "exercise" in c["metadata"].get("tags", [])]
    for name, function, index in uses:
        assert name.startswith(f"ch{path.name[:2]}."), f"{path.name} checks {name}"
        get(name)  # registered in ddpm_lib/exercises/chNN.py
        stub = [c for c in stubs if re.search(rf"^def {function}\(", source(c), re.MULTILINE)]
        assert stub, f"{path.name}: no cell tagged 'exercise' defines {function}()"
        assert "NotImplementedError" in source(stub[0]), f"{function}: the stub gives the answer"
        solution_source(path, function, index)


@pytest.mark.parametrize(("name", "function", "code"), SOLUTIONS, ids=[s[0] for s in SOLUTIONS])
def test_the_chapters_solution_passes_its_check(name, function, code):
    namespace: dict = {}
    exec(compile(code, f"<solution of {name}>", "exec"), namespace)  # noqa: S102
    passed, sentence = verdict(name, namespace[function])
    assert passed, sentence
    assert sentence.startswith("Correct")


@pytest.mark.parametrize("exercise", all_exercises(), ids=lambda e: e.name)
def test_the_check_fails_a_plausible_wrong_answer(exercise):
    passed, sentence = verdict(exercise.name, exercise.mistake)
    assert not passed
    assert sentence.startswith("Not yet: ")


@pytest.mark.parametrize("exercise", all_exercises(), ids=lambda e: e.name)
def test_the_check_waits_for_an_unfinished_stub(exercise, capsys):
    def stub(*args, **kwargs):
        raise NotImplementedError

    assert check(exercise.name, stub) is None  # a check cell shows the sentence only
    assert capsys.readouterr().out.startswith("Not done yet")


@pytest.mark.parametrize("exercise", all_exercises(), ids=lambda e: e.name)
def test_every_registered_exercise_is_used_by_its_chapter(exercise):
    used = {name for path in CHAPTERS for name, _, _ in exercise_uses(path)}
    assert exercise.name in used, f"{exercise.name} is registered but no chapter checks it"


def test_check_reports_an_unknown_exercise_with_the_known_names():
    with pytest.raises(KeyError, match="no exercises for chapter"):
        get("ch99.nothing")
