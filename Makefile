# mlinfra-operator. `make demo` and `make test` are the two entry points (see README.md).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STATE  ?= $(HOME)/.cache/mlinfra/cluster
PYTEST_ARGS ?=

.PHONY: test lint unit integration e2e real venv system-deps tools cluster-up cluster-down demo lock clean

## venv: the virtualenv with the locked dependencies (uv installs them in seconds).
venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml requirements.lock
	@echo "== python: creating $(VENV) and installing requirements.lock"
	@test -x $(VENV)/bin/pip || $(PYTHON) -m venv $(VENV)
	@$(VENV)/bin/pip install -q --disable-pip-version-check uv==0.13.9
	@$(VENV)/bin/uv pip install -q --python $(PY) -r requirements.lock
	@$(VENV)/bin/uv pip install -q --python $(PY) --no-deps -e .
	@touch $@

## system-deps: the Debian packages of e2e/tools/debian-packages.txt; installs the missing ones as root,
## otherwise stops with the apt-get command to run (a warm check takes milliseconds).
system-deps:
	@bash e2e/tools/system-deps.sh

## tools: kube-apiserver & co., etcd, kwok, helm (Go) and Neo4j (Maven), cached in ~/.cache/mlinfra.
tools: system-deps
	@command -v go >/dev/null || { echo "go is not installed: the Kubernetes tools are built from Go modules (Go >= 1.26; Debian's golang is too old)" >&2; exit 1; }
	@bash e2e/tools/build.sh

## test: lint, then every tier (unit, integration, e2e, real) against the real platform.
test: system-deps venv tools lint
	@echo "== pytest: unit, integration, e2e and real (Pods on a real node) tiers"
	@$(PY) -m pytest -m "unit or integration or e2e or real" --durations=40 $(PYTEST_ARGS)

lint: venv
	@echo "== ruff (lint and format) and mypy"
	@$(VENV)/bin/ruff check $(wildcard operator tests e2e bench) conftest.py
	@$(VENV)/bin/ruff format --check $(wildcard operator tests e2e bench) conftest.py
	@$(VENV)/bin/mypy

unit: venv
	@$(PY) -m pytest -m unit $(PYTEST_ARGS)
integration: system-deps venv tools
	@$(PY) -m pytest -m integration $(PYTEST_ARGS)
e2e: system-deps venv tools
	@$(PY) -m pytest -m e2e $(PYTEST_ARGS)
real: system-deps venv tools
	@$(PY) -m pytest -m real $(PYTEST_ARGS)

## cluster-up / cluster-down: keep the platform running in the background for manual use.
cluster-up: system-deps venv tools
	@mkdir -p $(STATE) && rm -f $(STATE)/env
	@echo "== starting the platform in the background (log: $(STATE)/up.log)"
	@nohup $(VENV)/bin/mlinfra dev up --state-dir $(STATE) > $(STATE)/up.log 2>&1 &
	@$(VENV)/bin/mlinfra dev wait --state-dir $(STATE)
cluster-down:
	@$(VENV)/bin/mlinfra dev down --state-dir $(STATE)

## demo: control plane + real node + chart (the operator as a Pod) + manifests/samples/ Ready as real Pods
## (Ctrl-C stops everything). `mlinfra demo --kwok`: the same on fake nodes, with Qdrant and the VectorIndex loop.
demo: system-deps venv tools
	@$(VENV)/bin/mlinfra demo

## lock: re-resolve requirements.lock from pyproject.toml.
lock:
	@$(VENV)/bin/uv pip compile -q pyproject.toml --extra test -o requirements.lock

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
