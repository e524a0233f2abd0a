# Entry points: `make demo` and `make test` (see README). Everything runs in the locked uv environment.
SHELL := /bin/bash
UV := $(shell command -v uv 2>/dev/null || echo python3 -m uv)
PY := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: env test test-slow test-cluster test-all lint format bench demo clean

# Install uv if missing (pip is all a fresh machine has), then create the locked environment.
.venv/.synced: pyproject.toml uv.lock
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || \
		python3 -m pip install --quiet --user uv 2>/dev/null || \
		python3 -m pip install --quiet --user --break-system-packages uv
	$(UV) sync --frozen
	@touch $@

env: .venv/.synced

# `make test`: everything but the long end-to-end scenarios (about 10 minutes on 2 cores).
test: env
	$(PY) -m pytest -m "not slow and not cluster" $(PYTEST_ARGS)

# The long end-to-end scenarios (sweeps through the CLI, job submission, browser checks); CI runs them too.
test-slow: env
	$(PY) -m pytest -m "slow and not cluster" $(PYTEST_ARGS)

# Multi-host scenarios: hosts as network namespaces with their own disks, joined into one Ray cluster (root).
test-cluster: env
	$(PY) -m pytest -m cluster tests/cluster $(PYTEST_ARGS)

test-all: env
	$(PY) -m pytest $(PYTEST_ARGS)

lint: env
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: env
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

# The main job on embedded defaults: synthetic data served from a local S3 endpoint, a small sweep.
demo: env
	$(PY) experiments/demo.py

bench: env
	@set -e; for script in bench/bench_*.py; do echo "== $$script"; $(PY) $$script; done

clean:
	rm -rf .venv .pytest_cache .ruff_cache
