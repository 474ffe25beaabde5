# webhook-operator developer commands. `make dev` and `make test` are the two that matter.
PYTHON ?= python3
PYTEST_ARGS ?=
export PYTHONPATH := $(CURDIR)/operator:$(PYTHONPATH)

.PHONY: help install binaries cluster cluster-down dev test lint unit integration e2e bench sync-chart-crds

help:
	@echo "make dev           local control plane + CRDs + operator (--dev) + demo receiver + examples"
	@echo "make test          lint, unit, integration (local control plane), e2e (kind; skipped without Docker)"
	@echo "make cluster       start the local control plane in the background (.cluster/kubeconfig)"
	@echo "make cluster-down  stop it and remove its state"
	@echo "make bench         benchmarks (not part of make test)"

# Reinstalled only when pyproject.toml changes.
install: .make/installed
.make/installed: pyproject.toml
	$(PYTHON) -m pip install -q --disable-pip-version-check -e ".[test,dev]"
	@if command -v pyenv >/dev/null; then pyenv rehash; fi
	@mkdir -p .make && touch $@

binaries:
	$(PYTHON) -m devcluster binaries

cluster:
	$(PYTHON) -m devcluster cluster up

cluster-down:
	$(PYTHON) -m devcluster cluster down

dev: install
	$(PYTHON) -m devcluster dev

lint:
	$(PYTHON) -m ruff check operator tests
	$(PYTHON) -m mypy

unit:
	$(PYTHON) -m pytest tests/unit -q -ra $(PYTEST_ARGS)

integration:
	$(PYTHON) -m pytest tests/integration -q -ra $(PYTEST_ARGS)

e2e:
	$(PYTHON) -m pytest tests/e2e -q -ra --cluster=kind $(PYTEST_ARGS)

test: install lint
	$(PYTHON) -m pytest tests -q -ra $(PYTEST_ARGS)

bench: install
	$(PYTHON) -m tests.bench.run

sync-chart-crds:
	bash scripts/sync-chart-crds.sh
