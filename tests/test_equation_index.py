"""The equation index: every labelled equation has a function and a test, and the page is fresh.

tools/equation_index.py reads the labels the chapters define, the ddpm_lib docstrings and the
tests that name them, and writes book/equation_index.md.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import load_tool

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def index():
    return load_tool("equation_index")


def test_every_labelled_equation_has_a_function_and_a_test(index):
    entries, problems = index.collect()
    assert len(entries) > 70  # the chapters' labels were found (a broken reader finds none)
    assert problems == [], "\n".join(problems)


def test_the_page_is_what_the_generator_writes(index):
    entries, _ = index.collect()
    assert index.PAGE.read_text() == index.render(entries), (
        "book/equation_index.md is stale: run python tools/equation_index.py"
    )


def test_the_page_is_in_the_book(index):
    assert "book/equation_index" in (ROOT / "_toc.yml").read_text()


def test_a_label_no_chapter_defines_is_reported(index, monkeypatch):
    # The check can fail: a docstring naming an unknown label is a problem.
    real = index.labels_in_library
    typo = "eq-ch2-" + "closed-from"  # spelled apart: this file is scanned for labels too

    def with_typo():
        found = real()
        found[typo] = ["ddpm_lib.diffusion.GaussianDiffusion.q_sample"]
        return found

    monkeypatch.setattr(index, "labels_in_library", with_typo)
    _, problems = index.collect()
    assert any(typo in p for p in problems)
