"""Shared fixtures: a real PostgreSQL with the real migrations, the real app, a strict fake Stripe.

The database server is `BILLING_TEST_DATABASE_URL` if set, else the one on 127.0.0.1:5432 if it
answers, else an embedded PostgreSQL in a temporary folder. Each session gets a fresh database.
"""

from __future__ import annotations

import io
import os
import re
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path

import asyncpg
import httpx
import pytest
import respx
from asgi_lifespan import LifespanManager
from pydantic import SecretStr

from billing_service.app import create_app
from billing_service.config import Environment, Settings
from billing_service.db.migrations import apply_migrations, discover_migrations
from billing_service.db.pool import create_pool
from billing_service.embedded_db import embedded_postgres
from billing_service.logs import configure_logging
from billing_service.resources import migrations_dir
from billing_service.services import api_keys
from billing_service.services.api_keys import Scope
from billing_service.stripe_gateway import StripeGateway
from tests.stripe_fakes import FakeStripe
from tests.stripe_server import StripeServer, stripe_server
from tests.support import ADMIN_DATABASE, with_database

LOCAL_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
STRIPE_TEST_BASE = "http://stripe.test"
APP_HOST = "app.example.com"
WEBHOOK_SECRETS = ("whsec_test_current", "whsec_test_previous")


async def _answers(url: str) -> bool:
    try:
        conn = await asyncpg.connect(url, timeout=3)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    await conn.close()
    return True


@pytest.fixture(scope="session")
async def server_url() -> AsyncIterator[str]:
    """A URL of a PostgreSQL server the tests may create databases on."""
    configured = os.environ.get("BILLING_TEST_DATABASE_URL")
    if configured:
        yield configured
    elif await _answers(LOCAL_SERVER):
        yield LOCAL_SERVER
    else:
        with (
            tempfile.TemporaryDirectory(prefix="billing-test-pg-") as folder,
            embedded_postgres(Path(folder)) as url,
        ):
            yield url


@pytest.fixture(scope="session")
async def database_url(server_url: str) -> AsyncIterator[str]:
    """A fresh database for this session, migrated with the real migration files."""
    name = f"billing_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(with_database(server_url, ADMIN_DATABASE))
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = with_database(server_url, name)
    try:
        conn = await asyncpg.connect(url)
        try:
            await apply_migrations(conn, discover_migrations(migrations_dir()))
        finally:
            await conn.close()
        yield url
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
async def empty_database(server_url: str) -> AsyncIterator[str]:
    """A brand-new database with no schema at all."""
    name = f"billing_mig_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(with_database(server_url, ADMIN_DATABASE))
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(server_url, name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture(scope="session")
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_url, min_size=1, max_size=10)
    yield pool
    await pool.close()


@pytest.fixture(autouse=True)
async def clean_tables(request: pytest.FixtureRequest, pool: asyncpg.Pool) -> None:
    """Every test that touches the database starts with empty tables (the migration ledger kept).
    The pool is a parameter, not looked up: an async fixture cannot start another one."""
    if "database_url" not in request.fixturenames:
        return
    tables = await pool.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
        "AND tablename <> 'schema_migrations'"
    )
    if tables:
        names = ", ".join(f'"{row["tablename"]}"' for row in tables)
        await pool.execute(f"TRUNCATE {names} RESTART IDENTITY CASCADE")


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(
        env=Environment.TEST,
        database_url=SecretStr(database_url),
        database_pool_min=1,
        database_pool_max=5,
        stripe_api_base=STRIPE_TEST_BASE,  # type: ignore[arg-type]
        max_body_bytes=16_384,
        log_format="json",
    )


@asynccontextmanager
async def app_client(
    settings: Settings,
    *,
    raise_app_exceptions: bool = True,
    clock: Callable[[], datetime] | None = None,
) -> AsyncIterator[httpx.AsyncClient]:
    """The real app, lifespan run, spoken to in-process over ASGI."""
    app = create_app(settings) if clock is None else create_app(settings, clock=clock)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app, raise_app_exceptions=raise_app_exceptions)
        async with httpx.AsyncClient(transport=transport, base_url="http://billing.test") as client:
            yield client


@pytest.fixture
async def client(settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(settings) as client:
        yield client


# A customer whose personal data the tests send through every path (the API, Stripe calls,
# webhooks, emails): none of it may ever reach a log line, at any level.
PII_METADATA = {"favourite_colour": "ultramarine-canary-value"}
PII_CUSTOMER: dict[str, object] = {
    "email": "zoe.quillfeather@pii-canary.example",
    "name": "Zoë Quillfeather-Ødegård",
    "metadata": PII_METADATA,
}
PII_RENAMED = {"email": "zoe.q@pii-canary.example", "name": "Zoe Q. Quillfeather"}

# Secrets the tests use, a marker of raw webhook bodies, and that customer's data (matched on
# ASCII parts, so escaped or URL-encoded copies are caught too): none may reach a log line.
_NEVER_LOGGED = re.compile(
    r"bsk_[A-Za-z0-9_-]{20,}|bct_[A-Za-z0-9_-]{20,}|sk_test_fake|whsec_test_|pending_webhooks"
    r"|(?i:quillfeather|pii-canary|ultramarine-canary)"
)


def log_leaks(text: str) -> list[str]:
    """What of the above occurs in `text` (log output), each once."""
    return sorted(set(_NEVER_LOGGED.findall(text)))


class _Tee(io.StringIO):
    """Keeps what is written and passes it on to the real stdout (pytest shows it on failure)."""

    def write(self, text: str) -> int:
        sys.stdout.write(text)
        return super().write(text)


@pytest.fixture(scope="session")
def suite_logs() -> Iterator[io.StringIO]:
    """Everything the service logs in-process during the whole suite, checked at the end."""
    stream = _Tee()
    yield stream
    leaks = log_leaks(stream.getvalue())
    assert not leaks, f"secrets, webhook bodies or personal data reached the logs: {leaks[:5]}"


@pytest.fixture(autouse=True)
def fresh_logging(suite_logs: io.StringIO) -> Iterator[None]:
    """Every test logs, as production would (JSON), into the suite-wide capture; afterwards the
    logging is bound there again (some tests capture it themselves, or run the CLI in-process
    with a stream that closes when the test ends)."""
    configure_logging("info", "json", stream=suite_logs)
    yield
    configure_logging("info", "json", stream=suite_logs)


@pytest.fixture
def captured_logs() -> io.StringIO:
    """Everything the process logs during the test, rendered as in production (JSON lines)."""
    stream = io.StringIO()
    configure_logging("debug", "json", stream=stream)
    return stream


@pytest.fixture
def stripe_mock() -> Iterator[respx.MockRouter]:
    """Fake Stripe at the configured API base; any call without a matching route fails the test."""
    with respx.mock(
        base_url=STRIPE_TEST_BASE, assert_all_mocked=True, assert_all_called=False
    ) as mock:
        yield mock


@pytest.fixture
def cli_env(database_url: str) -> dict[str, str]:
    """The process environment with only our database settings, none leaking from the shell."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("BILLING_")}
    return env | {"BILLING_DATABASE_URL": database_url, "BILLING_ENV": "test"}


@pytest.fixture
def stripe_settings(settings: Settings) -> Settings:
    """Settings with a (test-mode) Stripe key, pointed at the fake Stripe."""
    return settings.model_copy(
        update={
            "stripe_secret_key": SecretStr("sk_test_fake"),
            "allowed_redirect_hosts": [APP_HOST],
            "stripe_webhook_secrets": [SecretStr(s) for s in WEBHOOK_SECRETS],
            # Tests drive event processing themselves, step by step.
            "worker_enabled": False,
        }
    )


@pytest.fixture
async def gateway(
    stripe_settings: Settings, fake_stripe: FakeStripe
) -> AsyncIterator[StripeGateway]:
    """A real gateway; the fake Stripe answers it, and nothing ever reaches the network."""
    gateway = StripeGateway.from_settings(stripe_settings)
    assert gateway is not None
    yield gateway
    await gateway.close()


@pytest.fixture
async def stripe_http() -> AsyncIterator[StripeServer]:
    """The fake Stripe on a real socket, with faults to switch on (tests/stripe_server.py)."""
    async with stripe_server() as server:
        yield server


@pytest.fixture
def fake_stripe(stripe_mock: respx.MockRouter) -> FakeStripe:
    return FakeStripe(stripe_mock)


@pytest.fixture
async def stripe_client(
    stripe_settings: Settings, pool: asyncpg.Pool, fake_stripe: FakeStripe
) -> AsyncIterator[httpx.AsyncClient]:
    """The app with Stripe configured (answered by the respx fake)."""
    async with app_client(stripe_settings) as client:
        yield client


async def issue_key(pool: asyncpg.Pool, *scopes: Scope) -> str:
    issued = await api_keys.create_key(pool, name="test", scopes=list(scopes))
    return issued.plaintext


@pytest.fixture
async def admin_key(pool: asyncpg.Pool) -> str:
    return await issue_key(pool, Scope.ADMIN)


@pytest.fixture
async def billing_key(pool: asyncpg.Pool) -> str:
    return await issue_key(pool, Scope.BILLING)
