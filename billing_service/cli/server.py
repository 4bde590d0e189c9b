"""Commands that run the service: serve, dev, migrate and the webhook worker.

Catalog changes made while Stripe was not configured stay pending until pushed. `dev` pushes them
at start when a Stripe key is set; `serve` only says so (one line), because every replica starts
it and a deploy must not depend on Stripe answering: push with `billing-service catalog sync` (or
`POST /v1/catalog/sync`) as a release step. See docs/catalog.md.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import asyncpg

from billing_service.catalog_spec import load_catalog_yaml
from billing_service.cli._runtime import (
    exit_on_sigterm,
    logger,
    migrate,
    serve,
    warn_about_unsafe_settings,
    with_database,
    with_gateway,
    with_pool,
)
from billing_service.config import Settings
from billing_service.errors import BillingError
from billing_service.jobs import build_jobs, run_scheduler
from billing_service.outbound import OutboundPolicy
from billing_service.outbound_http import WebhookClient
from billing_service.resources import example_catalog_path
from billing_service.services import api_keys, catalog, catalog_sync
from billing_service.services.email import EmailWorker
from billing_service.services.meter_events import MeterEventDelivery
from billing_service.services.outgoing_webhooks import DeliveryWorker
from billing_service.services.stripe_events import EventProcessor
from billing_service.stripe_gateway import StripeGateway
from billing_service.worker import PollingWorker

SYNC_HINT = "run `billing-service catalog sync` (or POST /v1/catalog/sync with an admin key)"


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    with with_database(settings) as ready:
        warn_about_unsafe_settings(ready)
        if ready.stripe_secret_key is not None:
            asyncio.run(with_pool(ready, _warn_about_pending_catalog))
        serve(ready)
    return 0


def cmd_dev(args: argparse.Namespace, settings: Settings) -> int:
    """Embedded database, migrations, a first admin key, the example catalog, pending catalog
    changes pushed to Stripe (when configured), then serve."""
    with with_database(settings) as ready:
        warn_about_unsafe_settings(ready)
        applied = asyncio.run(migrate(ready))
        logger.info("migrations.applied", versions=applied)
        asyncio.run(with_pool(ready, lambda pool: _print_bootstrap_admin_key(pool, ready)))
        asyncio.run(with_pool(ready, _load_example_catalog))
        if ready.stripe_secret_key is not None:
            asyncio.run(with_pool(ready, lambda pool: _sync_pending_catalog(pool, ready)))
        serve(ready)
    return 0


async def _warn_about_pending_catalog(pool: asyncpg.Pool) -> int:
    """One warning line when catalog changes have not reached Stripe; `serve` never sends them."""
    try:
        async with pool.acquire() as conn:
            pending = await catalog_sync.pending_work(conn)
    except asyncpg.UndefinedTableError:
        return 0  # not migrated yet: /readyz says so
    if pending:
        logger.warning("catalog.sync_pending", steps=len(pending), hint=SYNC_HINT)
    return 0


async def _sync_pending_catalog(pool: asyncpg.Pool, settings: Settings) -> int:
    """Push what is pending (e.g. a catalog loaded before a Stripe key was set); a Stripe that
    fails is logged with what to run, and development goes on without it."""
    gateway = StripeGateway.from_settings(settings)
    if gateway is None:
        return 0
    try:
        report = await catalog_sync.sync_catalog(pool, gateway)
    except BillingError as exc:
        logger.warning("catalog.sync_failed", error=str(exc), hint=SYNC_HINT)
    else:
        if report.done:
            logger.info("catalog.synced_at_start", steps=len(report.done))
    finally:
        await gateway.close()
    return 0


async def _print_bootstrap_admin_key(pool: asyncpg.Pool, settings: Settings) -> int:
    """The first admin key, once, and where the console it signs in to is."""
    issued = await api_keys.ensure_bootstrap_admin_key(pool)
    if issued is not None:
        print(
            f"\nAdmin API key (shown once, store it now):\n\n    {issued.plaintext}\n", flush=True
        )
        if settings.console_on:
            console = f"http://{settings.host}:{settings.port}/console"
            print(f"Operator console: {console} (sign in with this key)\n", flush=True)
    return 0


async def _load_example_catalog(pool: asyncpg.Pool) -> int:
    """On an empty catalog, load `catalog.example.yaml` so there is something to try (Stripe
    gets it in the next step, with every other pending change)."""
    if not await catalog.catalog_is_empty(pool):
        return 0
    spec = load_catalog_yaml(example_catalog_path().read_text(encoding="utf-8"))
    result = await catalog.apply_catalog(pool, lambda _current: spec)
    logger.info("catalog.example_loaded", changes=len(result.changes))
    return 0


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    with with_database(settings) as ready:
        applied = asyncio.run(migrate(ready))
    print("applied: " + ", ".join(applied) if applied else "schema is up to date")
    return 0


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    """All the background work `serve` does with `BILLING_WORKER_ENABLED`, for a deployment that
    turns it off there: Stripe events, outgoing webhooks, emails, meter events and the periodic
    jobs (one replica runs each scheduled moment), until stopped (SIGTERM or Ctrl+C)."""
    signal.signal(signal.SIGTERM, exit_on_sigterm)

    async def work(pool: asyncpg.Pool, gateway: StripeGateway) -> int:
        warn_about_unsafe_settings(settings)
        processor = EventProcessor(pool, gateway, max_attempts=settings.webhook_max_attempts)
        async with WebhookClient(OutboundPolicy.from_settings(settings)) as webhooks:
            deliveries = DeliveryWorker(pool, webhooks)
            await asyncio.gather(
                PollingWorker("stripe-events", processor.process_due).run(),
                PollingWorker("outgoing-webhooks", deliveries.deliver_due).run(),
                PollingWorker("emails", EmailWorker(pool, settings).send_due).run(),
                PollingWorker("meter-events", MeterEventDelivery(pool, gateway).deliver_due).run(),
                run_scheduler(pool, build_jobs(settings, pool, gateway)),
            )
        return 0

    try:
        return with_gateway(settings, work)
    except KeyboardInterrupt:
        return 0
