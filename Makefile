# The targets CI calls too. Every target installs what it needs into .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install dev test test-faults lint typecheck format clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## Run the service on 127.0.0.1:8000 (embedded PostgreSQL under .data/ unless BILLING_DATABASE_URL is set).
dev: $(STAMP)
	$(BIN)/billing-service dev

## Lint, type-check and run the tests against PostgreSQL.
test: lint typecheck
	$(BIN)/pytest

## The fault suites alone (also part of `make test`): killed connections, a stopped database,
## SIGKILL under load, and a slow, failing or resetting Stripe.
test-faults: $(STAMP)
	$(BIN)/pytest tests/test_faults.py tests/test_stripe_faults.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/hadolint Dockerfile

typecheck: $(STAMP)
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
