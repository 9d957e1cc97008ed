# `make run` sets up .venv and runs the whole DVC pipeline; `make test` runs the test suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install run test test-fast lint ui clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Runs simulate -> noise_floor -> train -> evaluate -> report for conf/pipeline/default.yaml.
run: install
	dvc repro
	dvc metrics show
	@cat metrics/summary/*.md

# The whole suite, including the end-to-end tests marked slow.
test: install
	$(BIN)/pytest -m "slow or not slow"

# Only the fast tests (seconds), for the edit-test loop.
test-fast: install
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

ui: install
	$(BIN)/neqgen ui

clean:
	rm -rf $(VENV)
