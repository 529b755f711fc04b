# Quick start: `make demo` (install + whole run on easy-VQA), `make test` (install + test suite).
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= configs/easyvqa.yaml
export HF_HUB_OFFLINE := 1
export WANDB_MODE := offline
# The install skips byte-compiling (--no-compile: ~95 s, mostly modules never imported); Python then
# compiles what it imports on first use and caches it, unless PYTHONDONTWRITEBYTECODE is set (it is on
# some CI and sandbox machines), which would recompile on every start: 18 s more per process that imports
# the training stack. So the recipes below always let Python write its .pyc files (into .venv/ and
# __pycache__/, both git-ignored).
unexport PYTHONDONTWRITEBYTECODE

.PHONY: install demo test

install: $(VENV)/.installed

# torch first: the torch 2.14.1 / torchvision 0.29.1 pair is the one that installs and imports together here.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --no-compile torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q --no-compile -e ".[dev]"
	touch $@

demo: install
	$(VENV)/bin/router-train run $(CONFIG)

test: install
	$(PY) -m pytest -q
