# DDPM, derived and run: the two commands that matter are `make book` and `make test`.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SRC := ddpm_lib tests tools
# The notebooks the book shows are linted and formatted like the library, at line length 79 (the
# code column at 1280 px; notebooks/ruff.toml and book/ruff.toml).
NOTEBOOK_SRC := notebooks book/errata.ipynb

# Chapter notebooks, and the executed book pages (book/errata.ipynb), run by nbval in quick mode
# (DDPM_QUICK=1).
NOTEBOOKS := $(wildcard notebooks/*.ipynb) $(wildcard book/*.ipynb)

# The browser check (tests/test_book_site.py) drives Debian's Chromium through Playwright.
# Playwright's own browser download is never used: it needs internet access.
CHROMIUM ?= /usr/bin/chromium

.PHONY: venv test lint format book book-check measure chromium clean distclean equation-index

venv: $(STAMP)

# Re-install whenever the dependencies or the pins change.
$(STAMP): pyproject.toml constraints/ci.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/pip install -c constraints/ci.txt -e ".[test,book]"
	touch $@

# The order: lint (library and notebooks) -> unit tests -> notebooks (nbval) -> book (-W) ->
# browser check of the site.
test: venv
	$(MAKE) lint
	DDPM_QUICK=1 $(BIN)/pytest -q --ignore=tests/test_book_site.py
ifneq ($(strip $(NOTEBOOKS)),)
	DDPM_QUICK=1 $(BIN)/pytest -q --nbval-lax --nbval-current-env $(NOTEBOOKS)
endif
	$(MAKE) book
	$(MAKE) book-check

# The equation index page (book/equation_index.md) from the chapters, ddpm_lib and tests/;
# tests/test_equation_index.py fails when it is stale.
equation-index: venv
	$(BIN)/python tools/equation_index.py

lint: venv
	$(BIN)/ruff check $(SRC) $(NOTEBOOK_SRC)
	$(BIN)/ruff format --check $(SRC) $(NOTEBOOK_SRC)

format: venv
	$(BIN)/ruff check --fix $(SRC) $(NOTEBOOK_SRC)
	$(BIN)/ruff format $(SRC) $(NOTEBOOK_SRC)

# -W: warnings are errors; -n: nitpicky (every reference must resolve); --keep-going: report all
# warnings before failing; --all: re-read every page, so a rebuild cannot skip an old warning.
# MathJax and the widget scripts are served from the site itself (no CDN): tools/fetch_vendor.py
# first unpacks the pinned npm packages into _build/vendor (a no-op when they are already there).
book: venv
	$(BIN)/python tools/fetch_vendor.py
	$(BIN)/jupyter-book build . -W -n --keep-going --all

# Open every page of the built site in headless Chromium: maths rendered, images loaded, internal
# links and anchors resolve, Colab buttons, sidebar; the page fits (at 1280 px no display
# equation, code or output block wider than its box; at 375 px nothing cut off without a scroll
# bar), output figures legible, no progress bars, static sliders that move; screenshots at both
# widths go to _build/screenshots/. BOOK_SITE_REQUIRED turns the test's skips (no site, no
# browser) into failures; BOOK_SITE=DIR checks another build. `make measure` prints the figures.
book-check: venv chromium
	BOOK_SITE_REQUIRED=1 CHROMIUM=$(CHROMIUM) $(BIN)/pytest -q tests/test_book_site.py

# How well the built site fits, per chapter (clipped blocks at 1280 px, cut off at 375 px, visible
# code lines, page height): tools/measure_pages.py, the browser check's measuring code.
measure: venv chromium
	CHROMIUM=$(CHROMIUM) $(BIN)/python tools/measure_pages.py _build/html --out _build/measure.json

# Install Debian's Chromium when it is missing (CI runs as root on a fresh Debian machine).
chromium:
	@if [ ! -x "$(CHROMIUM)" ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; \
		else \
			echo "$(CHROMIUM) not found: install it with 'sudo apt-get install chromium'" >&2; \
			exit 1; \
		fi; \
	fi

clean:
	rm -rf _build .pytest_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +
	find . -path ./$(VENV) -prune -o -name .ipynb_checkpoints -type d -exec rm -rf {} +
	rm -rf *.egg-info

distclean: clean
	rm -rf $(VENV)
