"""The `billing-service` command: serve, dev, migrate, keys, catalog, worker, events, reconcile."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import asyncpg
import structlog
import uvicorn
from pydantic import SecretStr

from billing_service import __version__
from billing_service.catalog_spec import CatalogSpec, dump_catalog_yaml, load_catalog_yaml
from billing_service.config import ConfigurationError, Settings, load_settings
from billing_service.db import stripe_events
from billing_service.db.migrations import MigrationError, apply_migrations, discover_migrations
from billing_service.db.pool import create_pool
from billing_service.embedded_db import embedded_postgres
from billing_service.errors import BillingError, ValidationFailed
from billing_service.logs import configure_logging
from billing_service.resources import example_catalog_path, migrations_dir
from billing_service.services import api_keys, catalog, catalog_sync, reconcile
from billing_service.services.api_keys import Scope
from billing_service.services.stripe_events import EventProcessor
from billing_service.stripe_gateway import StripeGateway, require_stripe
from billing_service.worker import EventWorker

logger = structlog.get_logger("billing_service.cli")


@contextmanager
def with_database(settings: Settings) -> Iterator[Settings]:
    """Settings with a database URL: the configured one, else (not in production) embedded."""
    if settings.database_url is not None:
        yield settings
        return
    if settings.is_production:
        raise ConfigurationError("BILLING_DATABASE_URL: required when BILLING_ENV=production")
    with embedded_postgres(settings.data_dir) as url:
        yield settings.model_copy(update={"database_url": SecretStr(url)})


async def migrate(settings: Settings) -> list[str]:
    assert settings.database_url is not None
    migrations = discover_migrations(migrations_dir())
    conn = await asyncpg.connect(settings.database_url.get_secret_value())
    try:
        applied = await apply_migrations(conn, migrations)
    finally:
        await conn.close()
    return [f"{m.version:04d}_{m.name}" for m in applied]


async def _with_pool(settings: Settings, work: Callable[[asyncpg.Pool], Awaitable[int]]) -> int:
    assert settings.database_url is not None
    pool = await create_pool(settings.database_url.get_secret_value(), min_size=1, max_size=2)
    try:
        return await work(pool)
    finally:
        await pool.close()


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def serve(settings: Settings) -> None:
    """Run uvicorn; each worker builds its app from the environment, so pass settings through it."""
    assert settings.database_url is not None
    os.environ["BILLING_DATABASE_URL"] = settings.database_url.get_secret_value()
    # uvicorn re-raises SIGTERM after its graceful shutdown; exiting through Python instead lets
    # atexit hooks run, which is how an embedded PostgreSQL gets stopped.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
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
    )


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    with with_database(settings) as ready:
        serve(ready)
    return 0


def cmd_dev(args: argparse.Namespace, settings: Settings) -> int:
    """Embedded database, migrations, a first admin key, the example catalog, then serve."""
    with with_database(settings) as ready:
        applied = asyncio.run(migrate(ready))
        logger.info("migrations.applied", versions=applied)
        asyncio.run(_with_pool(ready, _print_bootstrap_admin_key))
        asyncio.run(_with_pool(ready, lambda pool: _load_example_catalog(pool, ready)))
        serve(ready)
    return 0


async def _load_example_catalog(pool: asyncpg.Pool, settings: Settings) -> int:
    """On an empty catalog, load `catalog.example.yaml` so there is something to try."""
    if not await catalog.catalog_is_empty(pool):
        return 0
    spec = load_catalog_yaml(example_catalog_path().read_text(encoding="utf-8"))
    result = await _apply(pool, settings, spec, dry_run=False)
    logger.info("catalog.example_loaded", changes=len(result.changes))
    return 0


async def _apply(
    pool: asyncpg.Pool, settings: Settings, spec: CatalogSpec, *, dry_run: bool
) -> catalog.ApplyResult:
    gateway = StripeGateway.from_settings(settings)
    try:
        return await catalog.apply_and_sync(pool, gateway, lambda _current: spec, dry_run=dry_run)
    finally:
        if gateway is not None:
            await gateway.close()


async def _print_bootstrap_admin_key(pool: asyncpg.Pool) -> int:
    issued = await api_keys.ensure_bootstrap_admin_key(pool)
    if issued is not None:
        print(
            f"\nAdmin API key (shown once, store it now):\n\n    {issued.plaintext}\n", flush=True
        )
    return 0


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    with with_database(settings) as ready:
        applied = asyncio.run(migrate(ready))
    print("applied: " + ", ".join(applied) if applied else "schema is up to date")
    return 0


def _parse_expiry(value: str) -> datetime:
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError("give a UTC offset, e.g. 2027-01-01T00:00:00Z")
    return moment


def cmd_keys_create(args: argparse.Namespace, settings: Settings) -> int:
    async def create(pool: asyncpg.Pool) -> int:
        issued = await api_keys.create_key(
            pool, name=args.name, scopes=[Scope(s) for s in args.scope], expires_at=args.expires_at
        )
        print(f"id: {issued.key.id}\nscopes: {','.join(sorted(issued.key.scopes))}")
        print(f"key (shown once): {issued.plaintext}")
        return 0

    with with_database(settings) as ready:
        return asyncio.run(_with_pool(ready, create))


def cmd_keys_list(args: argparse.Namespace, settings: Settings) -> int:
    async def show(pool: asyncpg.Pool) -> int:
        print(f"{'id':36}  {'prefix':12}  {'status':8}  {'scopes':20}  {'last used':25}  name")
        now = datetime.now().astimezone()
        for key in await api_keys.list_keys(pool):
            status = "active"
            if key.revoked_at is not None:
                status = "revoked"
            elif key.expires_at is not None and key.expires_at <= now:
                status = "expired"
            last_used = (
                key.last_used_at.isoformat(timespec="seconds") if key.last_used_at else "never"
            )
            scopes = ",".join(sorted(key.scopes))
            columns = (str(key.id), key.prefix, status, scopes, last_used)
            print(
                f"{columns[0]:36}  {columns[1]:12}  {columns[2]:8}  {columns[3]:20}  "
                f"{columns[4]:25}  {key.name}"
            )
        return 0

    with with_database(settings) as ready:
        return asyncio.run(_with_pool(ready, show))


def cmd_keys_revoke(args: argparse.Namespace, settings: Settings) -> int:
    async def revoke(pool: asyncpg.Pool) -> int:
        key = await api_keys.revoke_key(pool, args.id)
        print(f"revoked {key.id} ({key.name})")
        return 0

    with with_database(settings) as ready:
        return asyncio.run(_with_pool(ready, revoke))


def _print_apply_result(result: catalog.ApplyResult, *, stripe_configured: bool) -> None:
    heading = "Would change" if result.dry_run else "Changed"
    print(f"{heading} in the catalog:" if result.changes else "The catalog is up to date.")
    for change in result.changes:
        print(f"  {change}")
    if result.drift:
        print("Drift found in Stripe (the catalog will be restored there):")
        for drift in result.drift:
            print(f"  ! {drift.description} ({drift.event_type}, {drift.stripe_object_id})")
    for done in result.stripe_synced:
        print(f"  stripe: {done}")
    if result.stripe_pending:
        waiting = "would send" if result.dry_run or stripe_configured else "pending; no Stripe key"
        print(f"Stripe ({waiting}):")
        for pending in result.stripe_pending:
            print(f"  {pending}")


def cmd_catalog_apply(args: argparse.Namespace, settings: Settings) -> int:
    try:
        text = args.file.read_text(encoding="utf-8")
    except OSError as exc:
        print(f"billing-service: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return 1
    try:
        spec = load_catalog_yaml(text)
    except ValidationFailed as exc:
        for error in exc.errors:
            print(f"{args.file}: {error.field}: {error.message}", file=sys.stderr)
        return 1

    async def apply(pool: asyncpg.Pool) -> int:
        result = await _apply(pool, settings, spec, dry_run=args.dry_run)
        _print_apply_result(result, stripe_configured=settings.stripe_secret_key is not None)
        return 0

    with with_database(settings) as ready:
        return asyncio.run(_with_pool(ready, apply))


def cmd_catalog_export(args: argparse.Namespace, settings: Settings) -> int:
    async def export(pool: asyncpg.Pool) -> int:
        text = dump_catalog_yaml(await catalog.current_catalog(pool))
        if args.output is None:
            sys.stdout.write(text)
        else:
            args.output.write_text(text, encoding="utf-8")
        return 0

    with with_database(settings) as ready:
        return asyncio.run(_with_pool(ready, export))


def cmd_catalog_sync(args: argparse.Namespace, settings: Settings) -> int:
    async def sync(pool: asyncpg.Pool, gateway: StripeGateway) -> int:
        report = await catalog_sync.sync_catalog(pool, gateway)
        for done in report.done:
            print(f"stripe: {done}")
        if not report.done:
            print("Stripe is up to date.")
        return 0

    return _with_gateway(settings, sync)


def _with_gateway(
    settings: Settings, work: Callable[[asyncpg.Pool, StripeGateway], Awaitable[int]]
) -> int:
    """Run `work` with a pool and the Stripe gateway (which these commands cannot do without)."""

    async def run(pool: asyncpg.Pool) -> int:
        gateway = require_stripe(StripeGateway.from_settings(settings))
        try:
            return await work(pool, gateway)
        finally:
            await gateway.close()

    with with_database(settings) as ready:
        return asyncio.run(_with_pool(ready, run))


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    """Process webhook events until stopped (SIGTERM or Ctrl+C)."""
    signal.signal(signal.SIGTERM, _exit_on_sigterm)

    async def work(pool: asyncpg.Pool, gateway: StripeGateway) -> int:
        processor = EventProcessor(pool, gateway, max_attempts=settings.webhook_max_attempts)
        await EventWorker(processor).run()
        return 0

    try:
        return _with_gateway(settings, work)
    except KeyboardInterrupt:
        return 0


def cmd_events_list(args: argparse.Namespace, settings: Settings) -> int:
    async def show(pool: asyncpg.Pool) -> int:
        found = await stripe_events.select_events(pool, status=args.status, limit=args.limit)
        print(f"{'event':32}  {'type':42}  {'status':9}  {'tries':5}  received / last error")
        for event in found:
            received = event.created_at.isoformat(timespec="seconds")
            print(
                f"{event.stripe_event_id:32}  {event.type:42}  {event.status:9}  "
                f"{event.attempts:<5}  {received}  {event.last_error or ''}"
            )
        return 0

    with with_database(settings) as ready:
        return asyncio.run(_with_pool(ready, show))


def cmd_events_replay(args: argparse.Namespace, settings: Settings) -> int:
    if (args.event_id is None) == (not args.failed):
        print("billing-service: give an EVENT_ID or --failed", file=sys.stderr)
        return 2

    async def replay(pool: asyncpg.Pool) -> int:
        async with pool.acquire() as conn:
            count = await stripe_events.requeue(conn, stripe_event_id=args.event_id)
        if args.event_id is not None and count == 0:
            print(f"billing-service: no Stripe event has id {args.event_id}", file=sys.stderr)
            return 1
        print(f"requeued {count} event(s); a running worker processes them next")
        return 0

    with with_database(settings) as ready:
        return asyncio.run(_with_pool(ready, replay))


def cmd_reconcile(args: argparse.Namespace, settings: Settings) -> int:
    async def work(pool: asyncpg.Pool, gateway: StripeGateway) -> int:
        report = await reconcile.reconcile(pool, gateway, customer_id=args.customer)
        counts = ", ".join(f"{name}: {value}" for name, value in report.counts().items())
        print(counts)
        for error in report.errors:
            print(f"error: {error}", file=sys.stderr)
        return 1 if report.errors else 0

    return _with_gateway(settings, work)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="billing-service", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve_parser = commands.add_parser("serve", help="run the HTTP API")
    serve_parser.add_argument("--host", help="bind address (BILLING_HOST)")
    serve_parser.add_argument("--port", type=int, help="port (BILLING_PORT)")
    serve_parser.add_argument("--workers", type=int, help="worker processes (BILLING_WORKERS)")
    serve_parser.set_defaults(handler=cmd_serve)

    dev_parser = commands.add_parser("dev", help="migrate, create a first admin key, serve")
    dev_parser.add_argument("--host", help="bind address (BILLING_HOST)")
    dev_parser.add_argument("--port", type=int, help="port (BILLING_PORT)")
    dev_parser.set_defaults(handler=cmd_dev)

    commands.add_parser("migrate", help="apply pending schema migrations").set_defaults(
        handler=cmd_migrate
    )

    keys = commands.add_parser("keys", help="manage API keys").add_subparsers(
        dest="keys_command", required=True
    )
    create = keys.add_parser("create", help="mint a key and print it once")
    create.add_argument("--name", required=True)
    create.add_argument(
        "--scope",
        action="extend",
        nargs="+",
        required=True,
        choices=[s.value for s in Scope],
        help="one or more of admin, billing, usage",
    )
    create.add_argument("--expires-at", type=_parse_expiry, help="ISO 8601 time with offset")
    create.set_defaults(handler=cmd_keys_create)
    keys.add_parser("list", help="list keys (never their secrets)").set_defaults(
        handler=cmd_keys_list
    )
    revoke = keys.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("id", type=uuid.UUID)
    revoke.set_defaults(handler=cmd_keys_revoke)

    catalog_commands = commands.add_parser(
        "catalog", help="manage the plan catalog"
    ).add_subparsers(dest="catalog_command", required=True)
    apply_parser = catalog_commands.add_parser("apply", help="make the catalog match a YAML file")
    apply_parser.add_argument("file", type=Path)
    apply_parser.add_argument("--dry-run", action="store_true", help="show changes, apply none")
    apply_parser.set_defaults(handler=cmd_catalog_apply)
    export_parser = catalog_commands.add_parser("export", help="write the catalog as YAML")
    export_parser.add_argument("--output", "-o", type=Path, help="file to write (default: stdout)")
    export_parser.set_defaults(handler=cmd_catalog_export)
    catalog_commands.add_parser("sync", help="push pending catalog changes to Stripe").set_defaults(
        handler=cmd_catalog_sync
    )

    commands.add_parser("worker", help="process webhook events until stopped").set_defaults(
        handler=cmd_worker
    )
    reconcile_parser = commands.add_parser(
        "reconcile", help="repair subscriptions from Stripe and recover undelivered events"
    )
    reconcile_parser.add_argument("--customer", help="only this customer (your customer id)")
    reconcile_parser.set_defaults(handler=cmd_reconcile)
    events_commands = commands.add_parser("events", help="the webhook ledger").add_subparsers(
        dest="events_command", required=True
    )
    events_list = events_commands.add_parser("list", help="recent events, newest first")
    events_list.add_argument("--status", choices=["pending", "processed", "failed"])
    events_list.add_argument("--limit", type=int, default=50)
    events_list.set_defaults(handler=cmd_events_list)
    events_replay = events_commands.add_parser("replay", help="process events again")
    events_replay.add_argument("event_id", nargs="?", help="a Stripe event id (evt_…)")
    events_replay.add_argument("--failed", action="store_true", help="every failed event")
    events_replay.set_defaults(handler=cmd_events_replay)
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, object]:
    return {
        name: value
        for name in ("host", "port", "workers")
        if (value := getattr(args, name, None)) is not None
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(**_overrides(args))
        configure_logging(settings.log_level, settings.effective_log_format, stream=sys.stderr)
        handler: Callable[[argparse.Namespace, Settings], int] = args.handler
        return handler(args, settings)
    except ConfigurationError as exc:
        for line in str(exc).splitlines():
            print(f"billing-service: configuration error: {line}", file=sys.stderr)
        return 2
    except (MigrationError, BillingError) as exc:
        print(f"billing-service: {exc}", file=sys.stderr)
        return 1
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"billing-service: database error: {exc}", file=sys.stderr)
        return 1
