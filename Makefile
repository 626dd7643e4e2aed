# Two commands after cloning: `make run` (install + the analysis on the bundled toy world)
# and `make test` (install + the test suite). Both create and reuse a local .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test test-all lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,sklearn,timm,stylegan-xl,dask,ray,s3]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/linkstyle run

test: $(STAMP)
	$(BIN)/python -m pytest

test-all: $(STAMP)
	$(BIN)/python -m pytest -m ''

lint: $(STAMP)
	$(BIN)/ruff check linkstyle_core storage tasks flows tests benchmarks
	$(BIN)/mypy linkstyle_core storage tasks flows

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
