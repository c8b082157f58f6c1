# DDPM, derived and run: the two commands that matter are `make book` and `make test`.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SRC := ddpm_lib tests

# Chapter notebooks, run by nbval in quick mode (DDPM_QUICK=1) once they exist; empty for now.
NOTEBOOKS := $(wildcard notebooks/*.ipynb)

.PHONY: venv test lint format book clean distclean

venv: $(STAMP)

# Re-install whenever the dependencies or the pins change.
$(STAMP): pyproject.toml constraints/ci.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/pip install -c constraints/ci.txt -e ".[test,book]"
	touch $@

test: venv
	$(BIN)/ruff check $(SRC)
	$(BIN)/ruff format --check $(SRC)
	DDPM_QUICK=1 $(BIN)/pytest -q
ifneq ($(strip $(NOTEBOOKS)),)
	DDPM_QUICK=1 $(BIN)/pytest -q --nbval-lax --nbval-current-env $(NOTEBOOKS)
endif

lint: venv
	$(BIN)/ruff check $(SRC)
	$(BIN)/ruff format --check $(SRC)

format: venv
	$(BIN)/ruff check --fix $(SRC)
	$(BIN)/ruff format $(SRC)

# -W: warnings are errors; -n: nitpicky (every reference must resolve); --keep-going: report all
# warnings before failing; --all: re-read every page, so a rebuild cannot skip an old warning.
book: venv
	$(BIN)/jupyter-book build . -W -n --keep-going --all

clean:
	rm -rf _build .pytest_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +
	find . -path ./$(VENV) -prune -o -name .ipynb_checkpoints -type d -exec rm -rf {} +
	rm -rf *.egg-info

distclean: clean
	rm -rf $(VENV)
