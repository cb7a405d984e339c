# Everything runs from .venv, which `make venv` builds from pyproject.toml.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv lint types test gen demo

venv: $(STAMP)

# Reinstalls whenever pyproject.toml changes; the stamp marks a complete install.
$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[dev]'
	touch $@

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

types: venv
	$(BIN)/mypy
	MYPYPATH=examples $(BIN)/mypy --strict examples/arena

test: venv lint types
	$(BIN)/pytest

gen: venv
	$(BIN)/python -c 'from chirp._codegen import generate_chirp; generate_chirp()'
	$(BIN)/chirp gen examples

demo: venv
	PYTHONPATH=examples $(BIN)/python -m arena.demo $(if $(REQUESTS),--requests $(REQUESTS))
