"""Starting the service as an operator would: refusals are one line naming the variable (exit 2),
unsafe settings outside production are warnings, and catalog changes made before Stripe was
configured reach Stripe (`dev`) or are pointed out (`serve`)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import asyncpg
import httpx
import pytest

from tests.conftest import APP_HOST, WEBHOOK_SECRETS
from tests.services.test_catalog import apply, example
from tests.stripe_server import Fault, StripeServer
from tests.support import CommandRun, billing_service, free_port

CONFIG_ERROR = "billing-service: configuration error: "
SAFE_PRODUCTION = {
    "BILLING_ENV": "production",
    "BILLING_STRIPE_SECRET_KEY": "sk_live_abc",
    "BILLING_STRIPE_WEBHOOK_SECRETS": "whsec_current",
    "BILLING_ALLOWED_REDIRECT_HOSTS": APP_HOST,
}
CHECKOUT = {
    "customer_id": "user_1",
    "price": "pro_monthly",
    "success_url": f"https://{APP_HOST}/billing/success",
    "cancel_url": f"https://{APP_HOST}/billing",
}


async def refusal(env: dict[str, str], *args: str, seconds: float = 30) -> CommandRun:
    """Run a command that must refuse to start; one that starts anyway is killed and fails."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "billing_service", *args,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(process.communicate(), seconds)
    except TimeoutError:
        process.kill()
        await process.wait()
        command = " ".join(args)
        raise AssertionError(f"`billing-service {command}` started instead of refusing") from None
    assert process.returncode is not None
    return CommandRun(process.returncode, out.decode(), err.decode())


def one_error_line(err: str) -> str:
    """The only line on stderr, checked to be a one-line message and not a traceback."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def stripe_env(stripe_http: StripeServer) -> dict[str, str]:
    """Test-mode Stripe at the fake server (an http base: a warning outside production)."""
    return {
        "BILLING_STRIPE_SECRET_KEY": "sk_test_fake",
        "BILLING_STRIPE_API_BASE": stripe_http.url,
        "BILLING_STRIPE_WEBHOOK_SECRETS": WEBHOOK_SECRETS[0],
        "BILLING_ALLOWED_REDIRECT_HOSTS": APP_HOST,
        "BILLING_WORKER_ENABLED": "false",
    }


@dataclass
class Running:
    http: httpx.AsyncClient
    stdout: asyncio.StreamReader
    stderr: list[str] = field(default_factory=list)

    def log_events(self) -> list[dict[str, object]]:
        """The JSON log lines the process wrote to stderr."""
        return [json.loads(line) for line in self.stderr if line.startswith("{")]


@asynccontextmanager
async def running(env: dict[str, str], command: str) -> AsyncIterator[Running]:
    """`billing-service COMMAND` as its own process with JSON logs, once `/readyz` answers 200;
    stopped with SIGTERM afterwards, when its stderr lines are in `Running.stderr`."""
    port = free_port()
    env = env | {"BILLING_PORT": str(port), "BILLING_LOG_FORMAT": "json"}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "billing_service", command,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    assert process.stderr is not None
    stderr_lines: list[str] = []

    async def drain_stderr() -> None:
        assert process.stderr is not None
        async for line in process.stderr:
            stderr_lines.append(line.decode().rstrip("\n"))

    draining = asyncio.create_task(drain_stderr())
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            for _ in range(400):
                try:
                    if (await http.get("/readyz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert process.returncode is None, "\n".join(stderr_lines)
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the service did not become ready")
            yield Running(http, process.stdout, stderr_lines)
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 15)
        await asyncio.wait_for(draining, 5)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def admin_key_from_cli(env: dict[str, str]) -> str:
    created = await billing_service(env, "keys", "create", "--name", "ops", "--scope", "admin")
    assert created.code == 0, created.err
    found = re.search(r"key \(shown once\): (bsk_\S+)", created.out)
    assert found is not None
    return found[1]


# --- production refuses unsafe settings --------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BILLING_STRIPE_SECRET_KEY", None),
        ("BILLING_STRIPE_WEBHOOK_SECRETS", None),
        ("BILLING_STRIPE_WEBHOOK_SECRETS", "whsec_current,not_a_signing_secret"),
        ("BILLING_STRIPE_API_BASE", "http://127.0.0.1:12111"),
        ("BILLING_ALLOWED_REDIRECT_HOSTS", "app.example.com/billing"),
        ("BILLING_ALLOWED_REDIRECT_HOSTS", "*.example.com"),
        ("BILLING_ALLOWED_REDIRECT_HOSTS", "*"),
    ],
)
async def test_production_serve_refuses_an_unsafe_setting_in_one_line(
    cli_env: dict[str, str], name: str, value: str | None
) -> None:
    """`serve` in production exits 2 with one line naming the unsafe variable, before serving."""
    env = cli_env | SAFE_PRODUCTION
    if value is None:
        del env[name]
    else:
        env[name] = value
    run = await refusal(env, "serve")
    assert run.code == 2
    assert one_error_line(run.err).startswith(f"{CONFIG_ERROR}{name}: ")
    assert "not_a_signing_secret" not in run.err


async def test_outside_production_unsafe_settings_are_one_warning_each_at_start(
    cli_env: dict[str, str], stripe_http: StripeServer
) -> None:
    """In the test environment an http Stripe and a wildcard host start, each logged once."""
    env = cli_env | stripe_env(stripe_http) | {"BILLING_ALLOWED_REDIRECT_HOSTS": "*.example.com"}
    async with running(env, "serve") as service:
        assert (await service.http.get("/healthz")).status_code == 200
    warnings = [e for e in service.log_events() if e["event"] == "config.unsafe_setting"]
    assert sorted(str(e["variable"]) for e in warnings) == [
        "BILLING_ALLOWED_REDIRECT_HOSTS",
        "BILLING_STRIPE_API_BASE",
    ]
    assert all(e["level"] == "warning" for e in warnings)


# --- configuration errors are one line, exit 2 -------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("BILLING_JOB_SCHEDULES", "not json", "not valid JSON"),
        ("BILLING_DATABASE_URL", "mysql://x", "must be a PostgreSQL URL"),
        ("BILLING_ALLOWED_REDIRECT_HOSTS", "https://app.example.com", "e.g. app.example.com"),
    ],
)
async def test_a_bad_setting_stops_serve_with_one_line_naming_it(
    cli_env: dict[str, str], name: str, value: str, says: str
) -> None:
    """Not a traceback: `billing-service: configuration error: BILLING_X: …`, exit 2."""
    run = await refusal(cli_env | {name: value}, "serve")
    assert run.code == 2
    line = one_error_line(run.err)
    assert line.startswith(f"{CONFIG_ERROR}{name}: ")
    assert says in line


@pytest.mark.parametrize("command", ["serve", "migrate", "worker"])
async def test_an_unreachable_database_is_one_line_naming_the_variable(
    cli_env: dict[str, str], command: str
) -> None:
    """Nothing listens at the URL: one line with the server (never the password), exit 2."""
    port = free_port()
    url = f"postgresql://billing:hunter2@127.0.0.1:{port}/billing"
    env = cli_env | {"BILLING_DATABASE_URL": url, "BILLING_STRIPE_SECRET_KEY": "sk_test_x"}
    run = await refusal(env, command)
    assert run.code == 2
    line = one_error_line(run.err)
    assert line.startswith(f"{CONFIG_ERROR}BILLING_DATABASE_URL: cannot connect to 127.0.0.1:")
    assert "hunter2" not in run.err


async def test_a_database_that_refuses_the_connection_is_one_line(
    cli_env: dict[str, str], database_url: str
) -> None:
    """The server answers but has no such database: PostgreSQL's reason, on one line, exit 2."""
    missing = database_url.rsplit("/", 1)[0] + "/no_such_database"
    run = await refusal(cli_env | {"BILLING_DATABASE_URL": missing}, "serve")
    assert run.code == 2
    line = one_error_line(run.err)
    assert line.startswith(f"{CONFIG_ERROR}BILLING_DATABASE_URL: ")
    assert 'database "no_such_database" does not exist' in line


async def test_a_past_key_expiry_names_the_option(cli_env: dict[str, str]) -> None:
    """`keys create --expires-at 2020-…` says which option is wrong and why, on one line."""
    run = await billing_service(
        cli_env, "keys", "create", "--name", "old", "--scope", "usage",
        "--expires-at", "2020-01-01T00:00:00Z",
    )  # fmt: skip
    assert run.code == 1
    assert one_error_line(run.err) == "billing-service: --expires-at: must be in the future"


async def test_an_unparsable_key_expiry_names_the_option(cli_env: dict[str, str]) -> None:
    """A date that is not ISO 8601 is an argument error naming `--expires-at` and an example."""
    run = await billing_service(
        cli_env, "keys", "create", "--name", "x", "--scope", "usage", "--expires-at", "2020-13-01"
    )
    assert run.code == 2
    assert run.err.strip().splitlines()[-1] == (
        "billing-service keys create: error: argument --expires-at: "
        "'2020-13-01' is not an ISO 8601 time, e.g. 2027-01-01T00:00:00Z"
    )


async def test_running_reconcile_without_stripe_says_what_to_set(cli_env: dict[str, str]) -> None:
    """The sentence names the job, what it needs and the variable to set."""
    run = await billing_service(cli_env, "jobs", "run", "reconcile")
    assert run.code == 1
    assert one_error_line(run.err) == (
        "billing-service: the reconcile job needs Stripe: set BILLING_STRIPE_SECRET_KEY"
    )
    unknown = await billing_service(cli_env, "jobs", "run", "backup")
    assert one_error_line(unknown.err) == (
        "billing-service: no job is named 'backup' (jobs: prune, reconcile)"
    )


# --- a catalog loaded before Stripe was configured ---------------------------------------------


async def test_dev_pushes_a_catalog_loaded_without_stripe_so_the_first_checkout_works(
    empty_database: str, stripe_http: StripeServer
) -> None:
    """`dev` run once without a key loads the catalog; with a key, the next start syncs it."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("BILLING_")}
    env |= {"BILLING_DATABASE_URL": empty_database, "BILLING_WORKER_ENABLED": "false"}
    async with running(env, "dev") as first:
        plans = await first.http.get("/readyz")
        assert plans.status_code == 200
    assert not stripe_http.attempts
    key = await admin_key_from_cli(env)

    async with running(env | stripe_env(stripe_http), "dev") as second:
        made = await second.http.put(
            "/v1/customers/user_1", headers=bearer(key), json={"email": "user_1@example.com"}
        )
        assert made.status_code == 201, made.text
        checkout = await second.http.post(
            "/v1/checkout/sessions", headers=bearer(key), json=CHECKOUT
        )
        assert checkout.status_code == 201, checkout.text
    assert any(e["event"] == "catalog.synced_at_start" for e in second.log_events())
    conn = await asyncpg.connect(empty_database)
    try:
        unsynced = await conn.fetchval(
            "SELECT count(*) FROM prices WHERE active AND stripe_price_id IS NULL"
        )
    finally:
        await conn.close()
    assert unsynced == 0


async def test_dev_serves_when_stripe_fails_the_start_up_sync_and_says_what_to_run(
    empty_database: str, stripe_http: StripeServer
) -> None:
    """A Stripe that answers 500 at start is one warning naming the command; dev still serves."""
    stripe_http.fault = Fault.SERVER_ERROR
    env = {name: value for name, value in os.environ.items() if not name.startswith("BILLING_")}
    env |= stripe_env(stripe_http) | {
        "BILLING_DATABASE_URL": empty_database,
        "BILLING_STRIPE_MAX_NETWORK_RETRIES": "0",
    }
    async with running(env, "dev") as service:
        assert (await service.http.get("/healthz")).status_code == 200
    [failed] = [e for e in service.log_events() if e["event"] == "catalog.sync_failed"]
    assert failed["level"] == "warning"
    assert "billing-service catalog sync" in str(failed["hint"])


async def test_serve_leaves_pending_catalog_changes_to_catalog_sync_and_says_so(
    cli_env: dict[str, str], pool: asyncpg.Pool, admin_key: str, stripe_http: StripeServer
) -> None:
    """`serve` never calls Stripe at start: it logs what is pending and what to run, the 409 says
    the same, and `billing-service catalog sync` makes the checkout work."""
    await apply(pool, None, example())
    env = cli_env | stripe_env(stripe_http)
    async with running(env, "serve") as service:
        made = await service.http.put(
            "/v1/customers/user_1", headers=bearer(admin_key), json={"email": "u1@example.com"}
        )
        assert made.status_code == 201, made.text
        refused = await service.http.post(
            "/v1/checkout/sessions", headers=bearer(admin_key), json=CHECKOUT
        )
        assert refused.status_code == 409
        assert refused.json()["type"] == "urn:billing-service:problem:price-not-synced"
        detail = refused.json()["detail"]
        assert "`billing-service catalog sync`" in detail
        assert "`POST /v1/catalog/sync`" in detail
        assert not [
            a for a in stripe_http.attempts if a.path.startswith(("/v1/products", "/v1/prices"))
        ]

        synced = await billing_service(env, "catalog", "sync")
        assert synced.code == 0, synced.err
        assert "create price pro_monthly" in synced.out
        accepted = await service.http.post(
            "/v1/checkout/sessions", headers=bearer(admin_key), json=CHECKOUT
        )
        assert accepted.status_code == 201, accepted.text
    [pending] = [e for e in service.log_events() if e["event"] == "catalog.sync_pending"]
    assert pending["level"] == "warning"
    assert "billing-service catalog sync" in str(pending["hint"])
