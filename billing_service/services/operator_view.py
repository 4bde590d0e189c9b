"""What the operator console shows that no single API call returns: the health figures of the
overview, everything about one customer on one page, and one ledger event with its payload.
Each read is bounded (a page, a capped count, a bounded usage window) whatever the data's size.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import asyncpg

from billing_service.db import catalog_drift, orders, outbox, stripe_events, subscriptions
from billing_service.db.catalog_drift import Drift
from billing_service.db.customers import Customer
from billing_service.db.grants import AuditEntry
from billing_service.db.orders import Order
from billing_service.db.outbox import Backlog, Notification
from billing_service.db.stripe_events import LedgerEntry, StoredEvent
from billing_service.db.subscriptions import Subscription
from billing_service.db.usage import UsagePeriod
from billing_service.errors import NotFound
from billing_service.history_window import HistoryWindow, history_window
from billing_service.logs import redact
from billing_service.services import catalog_sync, customers, grants, usage
from billing_service.services.customers import CustomerView
from billing_service.services.entitlement_cache import EntitlementCache
from billing_service.services.usage import Entitlement

# Counts shown on the overview stop here ("10000+"): counting further costs time, not insight.
COUNT_CAP = 10_000
# Rows of each list on the customer page; the full lists are in the API.
LIST_LIMIT = 20


@dataclass(frozen=True, slots=True)
class Health:
    """The overview's operational figures, each capped at `COUNT_CAP`."""

    failed_events: int
    pending_events: int
    backlog: Backlog


async def health(pool: asyncpg.Pool) -> Health:
    async with pool.acquire() as conn:
        failed = await stripe_events.count_with_status(conn, "failed", cap=COUNT_CAP)
        pending = await stripe_events.count_with_status(conn, "pending", cap=COUNT_CAP)
        backlog = await outbox.backlog(conn, cap=COUNT_CAP)
    return Health(failed_events=failed, pending_events=pending, backlog=backlog)


@dataclass(frozen=True, slots=True)
class UsageChart:
    """A feature's recent usage: the window and its buckets."""

    window: HistoryWindow
    periods: list[UsagePeriod]


def chart_window(reset: str | None, now: datetime) -> HistoryWindow:
    """The recent periods worth drawing for a feature that resets `reset`: the last 31 days by
    day for hourly and daily features, the last 26 weeks by week for weekly ones, else the
    last year by month. Each reads at most 744 counters of an hourly feature."""
    if reset in ("hour", "day"):
        return history_window("day", since=now - timedelta(days=30), until=None, now=now)
    if reset == "week":
        return history_window("week", since=now - timedelta(weeks=25), until=None, now=now)
    return history_window("month", since=None, until=None, now=now)


@dataclass(frozen=True, slots=True)
class CustomerPage:
    """One customer's whole billing picture as of `view.as_of`."""

    view: CustomerView
    subscriptions: list[Subscription]
    entitlements: list[Entitlement]
    # Per metered feature that resets: its recent usage, cut as `usage_window` says.
    usage: dict[str, UsageChart]
    orders: list[Order]
    notifications: list[Notification]
    events: list[LedgerEntry]
    adjustments: list[AuditEntry]


async def customer_page(
    pool: asyncpg.Pool,
    customer_key: str,
    *,
    now: datetime,
    grace: timedelta,
    cache: EntitlementCache | None = None,
) -> CustomerPage:
    """The customer's plan, subscriptions, entitlements, recent usage of each metered feature
    that resets (see `chart_window`), and the newest orders, notifications, Stripe events and
    adjustments (404 for an unknown id). Entitlements come through `cache` when given, as
    the API's entitlement route reads them. The independent reads run side by side, each on a
    connection of its own, so the page waits for the slowest rather than for their sum."""
    customer = await customers.get_customer(pool, customer_key)
    view, found, adjustments, lists = await asyncio.gather(
        customers.customer_view(pool, customer, grace=grace, now=now),
        usage.entitlements(pool, customer_key, now=now, grace=grace, cache=cache),
        grants.audit(pool, customer_key, after=None, limit=LIST_LIMIT),
        _lists(pool, customer),
    )
    charted = [
        (entitlement.context.feature_key, chart_window(entitlement.reset, now))
        for entitlement in found
        if entitlement.metered and entitlement.enabled and entitlement.reset not in (None, "never")
    ]
    histories = await asyncio.gather(
        *(
            usage.usage_history(pool, customer_key, feature_key=feature, window=window)
            for feature, window in charted
        )
    )
    subs, bought, told, events = lists
    return CustomerPage(
        view=view,
        subscriptions=subs[:LIST_LIMIT],
        entitlements=found,
        usage={
            feature: UsageChart(window, periods)
            for (feature, window), periods in zip(charted, histories, strict=True)
        },
        orders=bought,
        notifications=told,
        events=events,
        adjustments=adjustments,
    )


async def _lists(
    pool: asyncpg.Pool, customer: Customer
) -> tuple[list[Subscription], list[Order], list[Notification], list[LedgerEntry]]:
    """The customer's subscriptions and newest orders, notifications and Stripe events."""
    async with pool.acquire() as conn:
        subs = await subscriptions.select_subscriptions(conn, customer.id)
        bought = await orders.select_orders(conn, customer.id, after=None, limit=LIST_LIMIT)
        told = await outbox.select_customer_notifications(
            conn, customer.external_id, limit=LIST_LIMIT
        )
        events = []
        if customer.stripe_customer_id is not None:
            events = await stripe_events.select_events(
                conn,
                status=None,
                after=None,
                limit=LIST_LIMIT,
                stripe_customer_id=customer.stripe_customer_id,
            )
    return subs, bought, told, events


async def event_with_payload(pool: asyncpg.Pool, stripe_event_id: str) -> StoredEvent:
    """One ledger event with its payload masked as logs are (keys, signing secrets, client
    secrets and the like never shown)."""
    event = await stripe_events.select_event(pool, stripe_event_id)
    if event is None:
        raise NotFound(f"No Stripe event has id '{stripe_event_id}'.")
    masked = redact(event.payload)
    assert isinstance(masked, dict)
    return replace(event, payload=masked)


@dataclass(frozen=True, slots=True)
class CatalogHealth:
    """How the catalog stands against Stripe: open drift findings and pending sync work."""

    drift: list[Drift]
    pending: list[str]


async def catalog_health(pool: asyncpg.Pool) -> CatalogHealth:
    async with pool.acquire() as conn:
        drift = await catalog_drift.select_open_drift(conn)
        pending = await catalog_sync.pending_work(conn)
    return CatalogHealth(drift=drift, pending=pending)
