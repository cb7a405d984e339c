# Everything runs from .venv, which `make venv` builds from pyproject.toml.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv lint types test gen demo bench

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

# The peers (FastStream, Taskiq) and the plotting and profiling tools live in a venv of
# their own (inside .venv, so tools that skip it skip this too), so nothing the benchmark
# needs ever reaches the project's dependencies. The peers get hiredis, the Redis reply
# parser Chirp depends on, so the comparison is of the frameworks, not of parsers. The
# peers are pinned so their figures can be measured again; each run records the versions.
PEERS := $(VENV)/peers
PEERS_STAMP := $(PEERS)/.installed

$(PEERS_STAMP):
	$(PY) -m venv $(PEERS)
	$(PEERS)/bin/python -m pip install --upgrade pip
	$(PEERS)/bin/python -m pip install 'faststream[redis,nats]==0.7.8' taskiq==0.13.0 \
		taskiq-redis==1.2.4 hiredis==3.5.0 matplotlib py-spy
	touch $@

# `make bench ARGS=--quick` for the short run, `ARGS='--only worker'` for one suite.
bench: venv $(PEERS_STAMP)
	$(BIN)/python -m bench $(ARGS)
