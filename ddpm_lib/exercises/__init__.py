"""The chapters' coding exercises: the reader writes a function, a check cell says pass or fail.

Each chapter's exercises live in ``ddpm_lib/exercises/chNN.py`` as a list ``EXERCISES`` of
:class:`Exercise`. A chapter's check cell calls ``check("ch01.snr", snr)``: the exercise's test
compares the reader's function with the library (or with the maths) and :func:`check` prints one
sentence, a pass or what is wrong (:func:`verdict` returns it with the pass/fail flag). Every
exercise also carries a plausible wrong answer (``mistake``); ``tests/test_exercises.py`` runs
each test with the solution written in the chapter and with that mistake, and fails unless the
first passes and the second does not.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Exercise", "all_exercises", "check", "get", "verdict"]


@dataclass(frozen=True)
class Exercise:
    """One coding exercise.

    ``name`` is "chNN.short_name"; ``function`` the name of the function the reader writes;
    ``test(fn)`` returns None when ``fn`` is right and otherwise a sentence saying what is wrong
    (it may raise NotImplementedError, which the unfinished stub does); ``mistake`` is a wrong
    answer a reader could plausibly write, which ``test`` must reject.
    """

    name: str
    function: str
    test: Callable[[Callable], str | None]
    mistake: Callable


def _chapter_module(chapter: str):
    try:
        return importlib.import_module(f"{__name__}.{chapter}")
    except ModuleNotFoundError as e:
        raise KeyError(f"no exercises for chapter {chapter!r}") from e


def get(name: str) -> Exercise:
    """The exercise called ``name`` ("ch01.snr"); KeyError with the known names if there is none."""
    chapter = name.split(".", 1)[0]
    exercises = {e.name: e for e in _chapter_module(chapter).EXERCISES}
    if name not in exercises:
        raise KeyError(f"no exercise {name!r}; {chapter} has {sorted(exercises)}")
    return exercises[name]


def all_exercises() -> list[Exercise]:
    """Every exercise of every chapter, in chapter order."""
    found: list[Exercise] = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("ch"):
            found.extend(_chapter_module(info.name).EXERCISES)
    return found


def verdict(name: str, fn: Callable) -> tuple[bool, str]:
    """Run exercise ``name``'s test on the reader's ``fn``: (passed, the sentence to show)."""
    exercise = get(name)
    try:
        problem = exercise.test(fn)
    except NotImplementedError:
        return False, f"Not done yet: write `{exercise.function}` above and run this cell again."
    except Exception as e:  # the reader's code may fail in any way; say how, do not crash
        problem = f"`{exercise.function}` raised {type(e).__name__}: {e}"
    if problem is None:
        return True, f"Correct: `{exercise.function}` agrees with the library."
    return False, f"Not yet: {problem}"


def check(name: str, fn: Callable) -> None:
    """Print the verdict of exercise ``name`` on the reader's ``fn`` (the chapters' check cells).

    Returns None, so a check cell shows the sentence and nothing else.
    """
    print(verdict(name, fn)[1])
