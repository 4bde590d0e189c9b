"""What every command shares: a database (configured or embedded), a pool, Stripe, serving."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import asyncpg
import structlog
import uvicorn
from pydantic import SecretStr

from billing_service.config import ConfigurationError, Settings, startup_warnings
from billing_service.db.migrations import apply_migrations, discover_migrations
from billing_service.db.pool import create_pool
from billing_service.embedded_db import embedded_postgres
from billing_service.resources import migrations_dir
from billing_service.stripe_gateway import StripeGateway, require_stripe

logger = structlog.get_logger("billing_service.cli")

DATABASE_CHECK_TIMEOUT_SECONDS = 10.0


@contextmanager
def with_database(settings: Settings) -> Iterator[Settings]:
    """Settings with a database URL: the configured one (checked to answer), else (not in
    production) embedded."""
    if settings.database_url is not None:
        check_database(settings.database_url.get_secret_value())
        yield settings
        return
    if settings.is_production:
        raise ConfigurationError("BILLING_DATABASE_URL: required when BILLING_ENV=production")
    with embedded_postgres(settings.data_dir) as url:
        yield settings.model_copy(update={"database_url": SecretStr(url)})


def warn_about_unsafe_settings(settings: Settings) -> None:
    """One warning line per setting production would refuse (see `config.unsafe_settings`);
    logged by the commands that start the service, once the configuration has been checked."""
    for line in startup_warnings(settings):
        variable, _, problem = line.partition(": ")
        logger.warning("config.unsafe_setting", variable=variable, problem=problem)


def check_database(url: str) -> None:
    """Connect once, so an unreachable or refusing database stops a command with one line that
    names the setting. `serve` relies on this: its workers connect only inside uvicorn, where a
    failure is a traceback."""
    try:
        asyncio.run(_connect_once(url))
    except (asyncpg.ClientConfigurationError, ValueError):
        raise ConfigurationError(
            "BILLING_DATABASE_URL: is not a valid PostgreSQL URL "
            "(postgresql://user:password@host:5432/database)"
        ) from None
    except TimeoutError:
        raise ConfigurationError(
            f"BILLING_DATABASE_URL: {_server(url)} did not answer within "
            f"{DATABASE_CHECK_TIMEOUT_SECONDS:g} s"
        ) from None
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise ConfigurationError(
            f"BILLING_DATABASE_URL: cannot connect to {_server(url)} ({_one_line(reason)})"
        ) from None
    except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise ConfigurationError(
            f"BILLING_DATABASE_URL: {_server(url)} refused the connection ({_one_line(str(exc))})"
        ) from None


async def _connect_once(url: str) -> None:
    conn = await asyncpg.connect(url, timeout=DATABASE_CHECK_TIMEOUT_SECONDS)
    await conn.close()


def _server(url: str) -> str:
    """`host:port` of a database URL, for messages (never the user or password)."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return "the database"
    if not host:
        return "the database"
    return f"{host}:{port or 5432}"


def _one_line(text: str) -> str:
    return " ".join(text.split())


async def migrate(settings: Settings) -> list[str]:
    assert settings.database_url is not None
    migrations = discover_migrations(migrations_dir())
    conn = await asyncpg.connect(settings.database_url.get_secret_value())
    try:
        applied = await apply_migrations(conn, migrations)
    finally:
        await conn.close()
    return [f"{m.version:04d}_{m.name}" for m in applied]


async def with_pool(settings: Settings, work: Callable[[asyncpg.Pool], Awaitable[int]]) -> int:
    assert settings.database_url is not None
    pool = await create_pool(settings.database_url.get_secret_value(), min_size=1, max_size=2)
    try:
        return await work(pool)
    finally:
        await pool.close()


def run_with_pool(settings: Settings, work: Callable[[asyncpg.Pool], Awaitable[int]]) -> int:
    """Run a command's `work` against the configured (or embedded) database; its exit status."""
    with with_database(settings) as ready:
        return asyncio.run(with_pool(ready, work))


def with_gateway(
    settings: Settings, work: Callable[[asyncpg.Pool, StripeGateway], Awaitable[int]]
) -> int:
    """Run `work` with a pool and the Stripe gateway (which these commands cannot do without)."""

    async def run(pool: asyncpg.Pool) -> int:
        gateway = require_stripe(StripeGateway.from_settings(settings))
        try:
            return await work(pool, gateway)
        finally:
            await gateway.close()

    return run_with_pool(settings, run)


def exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def serve(settings: Settings) -> None:
    """Run uvicorn; each worker builds its app from the environment, so pass settings through it.

    Connections are bounded (billing_service/http_protocol.py): header and body deadlines, a
    header size cap and a connection cap per worker, on top of uvicorn's keep-alive timeout.
    """
    assert settings.database_url is not None
    os.environ["BILLING_DATABASE_URL"] = settings.database_url.get_secret_value()
    # uvicorn re-raises SIGTERM after its graceful shutdown; exiting through Python instead lets
    # atexit hooks run, which is how an embedded PostgreSQL gets stopped.
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    _raise_open_file_limit(settings)
    logger.info("server.starting", host=settings.host, port=settings.port, workers=settings.workers)
    uvicorn.run(
        "billing_service.app:app_from_environment",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_config=None,
        access_log=False,
        server_header=False,
        http="billing_service.http_protocol:GuardedHttpToolsProtocol",
        # None: uvicorn reads FORWARDED_ALLOW_IPS, else trusts 127.0.0.1 and ::1 only.
        forwarded_allow_ips=settings.forwarded_allow_ips,
        timeout_keep_alive=settings.http_keep_alive_seconds,
        # The protocol refuses connections past the cap on accept; uvicorn's own check (503 once
        # a request's headers are in, counting in-flight requests too) stays as a backstop.
        limit_concurrency=settings.http_max_connections + 1,
        backlog=settings.http_backlog,
        timeout_graceful_shutdown=settings.http_shutdown_timeout_seconds,
    )


def _raise_open_file_limit(settings: Settings) -> None:
    """Let each worker hold its connections, its database pool and some spare descriptors:
    raise the soft RLIMIT_NOFILE towards the hard one if needed, or warn that it is too low."""
    import resource

    needed = settings.http_max_connections + settings.database_pool_max + 64
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < needed:
        logger.warning(
            "server.open_file_limit_low",
            limit=target,
            needed=needed,
            hint="raise `ulimit -n` or lower BILLING_HTTP_MAX_CONNECTIONS",
        )
