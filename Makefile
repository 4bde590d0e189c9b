# The targets CI calls too. Every target installs what it needs into .venv first.
#
# Two installs, each with its own stamp: `make dev` needs only what serving needs (the project and
# its embedded PostgreSQL); lint, type checks and tests add the dev extras on top. Installing the
# dev extras also satisfies the runtime, so `make dev` after `make test` installs nothing, and a
# changed pyproject.toml makes both stale.
#
# uv installs the packages: it downloads in parallel and keeps a cache that works even where the
# index sends no cache headers, so a fresh clone's `make dev` takes seconds, not the minutes pip
# takes for the same set (docs/operations.md has the figures). pip only installs uv itself, into
# the venv; the venv gets no pip of its own (ensurepip alone costs ~10 s of CPU).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
UV := $(BIN)/uv
RUNTIME_STAMP := $(VENV)/.installed-runtime
DEV_STAMP := $(VENV)/.installed-dev
PIP_FLAGS := --quiet --disable-pip-version-check
UV_INSTALL := $(UV) pip install --quiet --python $(BIN)/python
# The TypeScript client's build and test tools, exactly as its package-lock.json pins them; npm ci
# writes node_modules/.package-lock.json, so a changed lock file makes the install stale.
TS_CLIENT := clients/typescript
TS_STAMP := $(TS_CLIENT)/node_modules/.package-lock.json

.PHONY: install install-runtime install-clients dev test test-faults test-clients console-screenshots lint typecheck format clean

$(BIN)/python:
	$(PYTHON) -m venv --without-pip $(VENV)

# With pip 22.3+ next to $(PYTHON), it installs into the venv from outside (`--python`); without
# it, the venv gets its own pip first.
$(UV): | $(BIN)/python
	if $(PYTHON) -m pip --version >/dev/null 2>&1; then \
		$(PYTHON) -m pip --python $(BIN)/python install $(PIP_FLAGS) 'uv>=0.5'; \
	else \
		$(BIN)/python -m ensurepip && $(BIN)/python -m pip install $(PIP_FLAGS) 'uv>=0.5'; \
	fi

$(RUNTIME_STAMP): pyproject.toml | $(UV)
	$(UV_INSTALL) -e '.[embedded]'
	touch $(RUNTIME_STAMP)

# The dev install adds the Python client (clients/python, its own distribution), whose tests are
# part of the suite.
CLIENT_PYPROJECT := $(wildcard clients/python/pyproject.toml)

$(DEV_STAMP): pyproject.toml $(CLIENT_PYPROJECT) | $(UV)
	$(UV_INSTALL) -e '.[dev]' $(if $(CLIENT_PYPROJECT),-e ./clients/python)
	touch $(DEV_STAMP) $(RUNTIME_STAMP)

## Everything: the project, the embedded PostgreSQL and the dev tools.
install: $(DEV_STAMP)

$(TS_STAMP): $(TS_CLIENT)/package-lock.json
	cd $(TS_CLIENT) && npm ci --no-audit --no-fund
	touch $(TS_STAMP)

## The clients' dependencies (npm ci in clients/typescript; Node.js 20+ and npm needed).
install-clients: $(TS_STAMP)

## Only what `billing-service dev` and `serve` need.
install-runtime: $(RUNTIME_STAMP)

## Run the service on 127.0.0.1:8000 (embedded PostgreSQL under .data/ unless BILLING_DATABASE_URL is set).
dev: $(RUNTIME_STAMP)
	$(BIN)/billing-service dev

## Lint, type-check and run the tests against PostgreSQL, the clients' suites and the browser
## test (Chromium at /usr/bin/chromium) included.
test: lint typecheck $(TS_STAMP)
	$(BIN)/pytest

## The clients' suites alone (also part of `make test`): the TypeScript client's Node tests
## against a live service, its types against openapi.yaml, and the browser test.
test-clients: $(DEV_STAMP) $(TS_STAMP)
	$(BIN)/pytest tests/clients

## The fault suites alone (also part of `make test`): killed connections, a stopped database,
## SIGKILL under load, and a slow, failing or resetting Stripe.
test-faults: $(DEV_STAMP)
	$(BIN)/pytest tests/test_faults.py tests/test_stripe_faults.py

## The console's browser test (Chromium at /usr/bin/chromium), writing the screenshots
## docs/console.md shows to docs/images/.
console-screenshots: $(DEV_STAMP)
	BILLING_CONSOLE_SCREENSHOTS=1 $(BIN)/pytest tests/console/test_browser.py

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
