"""Reconciliation: make our mirror match Stripe even when webhooks were lost or went wrong.

For each customer with a Stripe account, the subscriptions are fetched from Stripe and mirrored,
counting the ones that differed. Events Stripe reports as undelivered are added to the ledger (or
made pending again) so the worker applies them. Every run is logged in `job_runs`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import structlog

from billing_service.db import customers as customers_db
from billing_service.db import job_runs, stripe_events, subscriptions
from billing_service.db.customers import Customer
from billing_service.errors import BillingError
from billing_service.services import customers
from billing_service.stripe_gateway import StripeGateway
from billing_service.stripe_objects import timestamp

logger = structlog.get_logger(__name__)

JOB = "reconcile"
UNDELIVERED_LOOKBACK_SECONDS = 3 * 24 * 3600


@dataclass
class ReconcileReport:
    customers: int = 0
    repaired: int = 0
    events_recovered: int = 0
    errors: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {
            "customers": self.customers,
            "repaired": self.repaired,
            "events_recovered": self.events_recovered,
        }


async def _snapshot(pool: asyncpg.Pool, customer: Customer) -> Any:
    """What a repair could change, over every subscription of the customer and their items."""
    found = await subscriptions.select_subscriptions(pool, customer.id)
    return [
        (s.stripe_subscription_id, s.status, s.stripe_price_id, s.items, s.cancel_at_period_end,
         s.cancel_at, s.current_period_end, s.stripe_schedule_id)
        for s in found
    ]  # fmt: skip


async def reconcile(
    pool: asyncpg.Pool, gateway: StripeGateway, *, customer_id: str | None = None
) -> ReconcileReport:
    """Repair subscriptions that drifted from Stripe and recover undelivered events."""
    report = ReconcileReport()
    async with pool.acquire() as conn:
        run_id = await job_runs.start_run(conn, JOB)
    try:
        if customer_id is None:
            targets = await customers_db.select_customers_with_stripe(pool)
        else:
            targets = [await customers.get_customer(pool, customer_id)]
        for customer in targets:
            await _reconcile_customer(pool, gateway, customer, report)
        if customer_id is None:
            report.events_recovered = await _recover_undelivered(pool, gateway)
    except BillingError as exc:
        report.errors.append(str(exc))
    async with pool.acquire() as conn:
        await job_runs.finish_run(
            conn, run_id, succeeded=not report.errors, counts=report.counts(), errors=report.errors
        )
    logger.info("reconcile.finished", **report.counts(), errors=len(report.errors))
    return report


async def _reconcile_customer(
    pool: asyncpg.Pool, gateway: StripeGateway, customer: Customer, report: ReconcileReport
) -> None:
    report.customers += 1
    before = await _snapshot(pool, customer)
    try:
        await customers.sync_subscriptions_from_stripe(pool, gateway, customer)
    except BillingError as exc:
        report.errors.append(f"{customer.external_id}: {exc}")
        return
    if await _snapshot(pool, customer) != before:
        report.repaired += 1
        logger.warning("reconcile.repaired", customer_id=customer.external_id)


async def _recover_undelivered(pool: asyncpg.Pool, gateway: StripeGateway) -> int:
    since = int(time.time()) - UNDELIVERED_LOOKBACK_SECONDS
    recovered = 0
    for event in await gateway.list_undelivered_events(since=since):
        data_object = event.get("data", {}).get("object", {})
        inserted = await stripe_events.insert_event(
            pool,
            stripe_event_id=event["id"],
            type=event["type"],
            livemode=bool(event.get("livemode")),
            api_version=event.get("api_version"),
            stripe_created_at=timestamp(event.get("created")) or datetime.now(UTC),
            object_id=data_object.get("id"),
            payload=event,
        )
        if inserted:
            recovered += 1
        else:
            async with pool.acquire() as conn:
                recovered += await stripe_events.requeue_failed(conn, event["id"])
    return recovered
