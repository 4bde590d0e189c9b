"""Commands that run the service: serve, dev, migrate and the webhook worker."""

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
    with_database,
    with_gateway,
    with_pool,
)
from billing_service.cli.catalog import apply_catalog_file
from billing_service.config import Settings
from billing_service.outbound import OutboundPolicy
from billing_service.outbound_http import WebhookClient
from billing_service.resources import example_catalog_path
from billing_service.services import api_keys, catalog
from billing_service.services.email import EmailWorker
from billing_service.services.outgoing_webhooks import DeliveryWorker
from billing_service.services.stripe_events import EventProcessor
from billing_service.stripe_gateway import StripeGateway
from billing_service.worker import PollingWorker


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    with with_database(settings) as ready:
        serve(ready)
    return 0


def cmd_dev(args: argparse.Namespace, settings: Settings) -> int:
    """Embedded database, migrations, a first admin key, the example catalog, then serve."""
    with with_database(settings) as ready:
        applied = asyncio.run(migrate(ready))
        logger.info("migrations.applied", versions=applied)
        asyncio.run(with_pool(ready, _print_bootstrap_admin_key))
        asyncio.run(with_pool(ready, lambda pool: _load_example_catalog(pool, ready)))
        serve(ready)
    return 0


async def _print_bootstrap_admin_key(pool: asyncpg.Pool) -> int:
    issued = await api_keys.ensure_bootstrap_admin_key(pool)
    if issued is not None:
        print(
            f"\nAdmin API key (shown once, store it now):\n\n    {issued.plaintext}\n", flush=True
        )
    return 0


async def _load_example_catalog(pool: asyncpg.Pool, settings: Settings) -> int:
    """On an empty catalog, load `catalog.example.yaml` so there is something to try."""
    if not await catalog.catalog_is_empty(pool):
        return 0
    spec = load_catalog_yaml(example_catalog_path().read_text(encoding="utf-8"))
    result = await apply_catalog_file(pool, settings, spec, dry_run=False)
    logger.info("catalog.example_loaded", changes=len(result.changes))
    return 0


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    with with_database(settings) as ready:
        applied = asyncio.run(migrate(ready))
    print("applied: " + ", ".join(applied) if applied else "schema is up to date")
    return 0


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    """Process webhook events until stopped (SIGTERM or Ctrl+C)."""
    signal.signal(signal.SIGTERM, exit_on_sigterm)

    async def work(pool: asyncpg.Pool, gateway: StripeGateway) -> int:
        processor = EventProcessor(pool, gateway, max_attempts=settings.webhook_max_attempts)
        async with WebhookClient(OutboundPolicy.from_settings(settings)) as webhooks:
            deliveries = DeliveryWorker(pool, webhooks)
            await asyncio.gather(
                PollingWorker("stripe-events", processor.process_due).run(),
                PollingWorker("outgoing-webhooks", deliveries.deliver_due).run(),
                PollingWorker("emails", EmailWorker(pool, settings).send_due).run(),
            )
        return 0

    try:
        return with_gateway(settings, work)
    except KeyboardInterrupt:
        return 0
