# flbook: build the environment, run the tests, open the workbook.
#
#   make lab                     create .venv if needed and start JupyterLab on notebooks/
#   make lab ARGS=--no-browser   the same on a headless machine (open the printed URL yourself)
#   make test                    unit tests, then every notebook under nbval
#   make test-unit | test-notebooks | clean | distclean
#   make test-ui                 run every notebook in JupyterLab in headless Chromium; screenshots in ui-screenshots/
#   make test-flower             the Flower bridge's tests (Ray simulation, loopback SuperLink) in .venv-flower
#   make gpu-check               on a CUDA machine: every notebook on the GPU and the benchmark's GPU rows, into OUT
#
# Variables: PYTHON (interpreter that creates .venv), PORT (JupyterLab's port), ARGS or LAB_ARGS
# (extra JupyterLab options). The environment is rebuilt only when pyproject.toml changes.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PORT ?= 8888
ARGS ?=
LAB_ARGS ?= $(ARGS)
# Installed only when .venv has no torch yet: to use another build (e.g. CUDA), pip-install it into .venv first.
TORCH_VERSION := 2.13.0

BIN := $(VENV)/bin
STAMP := $(VENV)/.flbook-installed
ALLOW_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root)
NOTEBOOKS := $(shell find notebooks -name '*.ipynb' -not -path '*/.ipynb_checkpoints/*')
NBVAL := --nbval-lax --nbval-current-env --nbval-sanitize-with notebooks/nbval_sanitize.cfg
# Notebooks run in parallel, one per core (each notebook's cells stay in order on one worker), timed per notebook.
NB_WORKERS ?= 2
NB_PARALLEL := -n $(NB_WORKERS) --dist loadfile -p notebook_times

.PHONY: help install lab test test-unit test-notebooks test-ui gpu-check clean distclean

help:
	@sed -n '3,11s/^# \{0,1\}//p' Makefile

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -c 'import torch' 2>/dev/null || $(BIN)/python -m pip install torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install -e '.[notebooks,test]'
	$(BIN)/python -m ipykernel install --sys-prefix --name python3
	touch $@

lab: install
	$(BIN)/jupyter lab --notebook-dir=notebooks --ip=127.0.0.1 --port=$(PORT) $(ALLOW_ROOT) $(LAB_ARGS)

test: test-unit test-notebooks

test-unit: install
	$(BIN)/python -m pytest tests --ignore=tests/ui --durations=10

# Without notebooks pytest would collect nothing and exit 5, so the step is skipped instead.
# MPLBACKEND is cleared so the kernel keeps its inline backend and figures reach the outputs. The notebooks run on
# the CPU (FLBOOK_DEVICE=cpu), so the outputs they check hold on a machine with a GPU too.
test-notebooks: install
ifeq ($(NOTEBOOKS),)
	@echo "no notebooks to test"
else
	env -u MPLBACKEND PYTHONHASHSEED=0 FLBOOK_DEVICE=cpu PYTHONPATH=tests \
		$(BIN)/python -m pytest $(NBVAL) $(NB_PARALLEL) notebooks
endif

# What a reader sees: Playwright drives JupyterLab in Debian's Chromium (installed here when missing; no
# browser download), runs every notebook and works its control panels. UI_ARGS go to pytest (e.g. -k 01_).
UI_STAMP := $(VENV)/.flbook-ui-installed
CHROMIUM := /usr/bin/chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
UI_ARGS ?=

$(UI_STAMP): $(STAMP)
	$(BIN)/python -m pip install -e '.[ui]'
	touch $@

$(CHROMIUM):
	$(SUDO) apt-get update
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium

test-ui: $(UI_STAMP) | $(CHROMIUM)
	$(BIN)/python -m pytest tests/ui -v --durations=0 $(UI_ARGS)

# The Flower bridge in its own environment: the `flower` extra pulls Ray (about 220 MB), which the workbook never
# needs. All of tests/test_flower.py: the in-process equality tests, the Ray Simulation Engine in its own process and a
# SuperLink with two SuperNodes on loopback. Rebuilt only when pyproject.toml changes; flwr 1.42 needs Python >= 3.11.
FLOWER_VENV := .venv-flower
FLOWER_STAMP := $(FLOWER_VENV)/.flbook-installed

.PHONY: test-flower

$(FLOWER_VENV)/bin/python:
	$(PYTHON) -m venv $(FLOWER_VENV)

$(FLOWER_STAMP): pyproject.toml | $(FLOWER_VENV)/bin/python
	$(FLOWER_VENV)/bin/python -m pip install torch==$(TORCH_VERSION)
	$(FLOWER_VENV)/bin/python -m pip install -e '.[flower,test]'
	touch $@

test-flower: $(FLOWER_STAMP)
	time env FLBOOK_DEVICE=cpu $(FLOWER_VENV)/bin/python -m pytest tests/test_flower.py -v --durations=0

# GPU_PYTHON: an interpreter with a CUDA build of torch and the notebooks extra (pip install -e '.[notebooks]').
GPU_PYTHON ?= python3
# GPU_ARGS go to python -m flbook.bench_gpu (e.g. --skip-notebooks, --workers 8).
OUT ?= gpu-check
gpu-check:
	time env PYTHONPATH=$(CURDIR) $(GPU_PYTHON) -m flbook.bench_gpu $(OUT) $(GPU_ARGS)

clean:
	find . -path ./$(VENV) -prune -o -path ./$(FLOWER_VENV) -prune -o -path ./.git -prune -o \
		\( -name __pycache__ -o -name .ipynb_checkpoints -o -name .pytest_cache \
		-o -name .hypothesis -o -name '*.egg-info' \) -type d -print -exec rm -rf {} +
	rm -rf build dist

distclean: clean
	rm -rf $(VENV) $(FLOWER_VENV)
