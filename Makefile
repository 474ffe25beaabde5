# webhook-operator developer commands. `make dev` and `make test` are the two that matter.
PYTHON ?= python3
PYTEST_ARGS ?=
export PYTHONPATH := $(CURDIR)/operator:$(PYTHONPATH)

.PHONY: help install system binaries cluster cluster-node cluster-down image dev test lint unit integration e2e chaos bench sync-chart-crds

help:
	@echo "make dev           local control plane + CRDs + operator (--dev) + demo receiver + examples"
	@echo "make test          lint, unit, integration (local control plane), e2e (real node; or kind)"
	@echo "make cluster       start the local control plane in the background (.cluster/kubeconfig)"
	@echo "make cluster-node  the local control plane plus one real kubelet node (containerd, CNI, kube-proxy; root)"
	@echo "make image         build the Dockerfile as webhook-operator:dev (and import it into the node, if one runs)"
	@echo "make cluster-down  stop the control plane and its node and remove their state"
	@echo "make chaos         the fault suite on a control plane of its own (kills, outages, slow tenants; ~30 min)"
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

cluster-node:
	$(PYTHON) -m devcluster node up

cluster-down:
	$(PYTHON) -m devcluster cluster down

image:
	$(PYTHON) -m devcluster image

dev: install
	$(PYTHON) -m devcluster dev

lint:
	$(PYTHON) -m ruff check operator tests
	$(PYTHON) -m ruff format --check operator tests
	$(PYTHON) -m mypy

unit:
	$(PYTHON) -m pytest tests/unit -q -ra $(PYTEST_ARGS)

integration:
	$(PYTHON) -m pytest tests/integration -q -ra $(PYTEST_ARGS)

e2e:
	$(PYTHON) -m pytest tests/e2e -q -ra --cluster=kind $(PYTEST_ARGS)

# Every fault scenario, one at a time, each printing lost/stuck/duplicated (also in .chaos-results.log);
# make test runs only the short ones. CHAOS_SIDE_BY_SIDE_S=600 for the 10-minute figure.
chaos: install
	WEBHOOK_OPERATOR_CHAOS=1 $(PYTHON) -m pytest tests/chaos -q -s -ra --timeout 3600 $(PYTEST_ARGS)

# Debian packages the tests and the node need (installed as root; otherwise one line says what).
system:
	@$(PYTHON) -m devcluster system

test: install system lint
	$(PYTHON) -m pytest tests -q -ra $(PYTEST_ARGS)

bench: install
	$(PYTHON) -m tests.bench.run

sync-chart-crds:
	bash scripts/sync-chart-crds.sh
