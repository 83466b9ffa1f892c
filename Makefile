# The two commands of the README: `make demo` and `make test` (both as root).
# Everything else they need (a venv, Debian packages, Kubernetes built from the
# Go module proxy, images) is installed or built on first use and cached.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test test-tools lint unit e2e cluster-up cluster-down

# Builders (buildah, podman, skopeo) on this machine pull public bases (python:3.11-slim, ...) from the
# bundled cluster's registry and keep their layers in innerloop's cache; `innerloop cluster up` writes both.
CLUSTER_STATE := $(or $(INNERLOOP_CLUSTER_STATE),/var/lib/innerloop-cluster)
export CONTAINERS_REGISTRIES_CONF ?= $(CLUSTER_STATE)/config/containers/registries.conf
export CONTAINERS_STORAGE_CONF ?= $(CLUSTER_STATE)/config/containers/storage.conf

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	touch $@

## demo: `innerloop up` on examples/bookshop (starts the bundled cluster when no other is configured);
## edit examples/bookshop/*/app.py and reload http://127.0.0.1:8080
demo: $(BIN)/.installed
	cd examples/bookshop && ../../$(BIN)/innerloop up

## test: lint, type-check, the test tools, start the bundled cluster if needed, run unit and end-to-end tests
test: lint test-tools cluster-up
	$(BIN)/pytest -q --durations=40 tests

## test-tools: Debian's Chromium (the dashboard's browser tests) and Delve for this machine's architecture
## (the Go debugger tests); both cached, so a warm machine does nothing here
test-tools: $(BIN)/.installed
	hack/chromium >/dev/null
	hack/delve "$$(uname -m | sed 's/x86_64/amd64/;s/aarch64/arm64/')" >/dev/null

lint: $(BIN)/.installed
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy

unit: $(BIN)/.installed
	$(BIN)/pytest -q tests/unit

e2e: test-tools cluster-up
	$(BIN)/pytest -q tests/e2e

cluster-up: $(BIN)/.installed
	$(BIN)/innerloop cluster up

cluster-down: $(BIN)/.installed
	$(BIN)/innerloop cluster down
