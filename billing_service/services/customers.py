"""Customers of the calling apps: their records, their Stripe customer, and their current plan."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
import orjson
import structlog

from billing_service.db import customers as db
from billing_service.db import members, outbox, plans, subscriptions
from billing_service.db.customers import Customer
from billing_service.db.plans import Plan
from billing_service.db.pool import Connection, session_lock
from billing_service.db.subscriptions import Subscription
from billing_service.errors import NotFound
from billing_service.services.access import grants_plan
from billing_service.services.stripe_keys import attempt_key
from billing_service.stripe_gateway import StripeGateway
from billing_service.stripe_objects import StripeSubscription

logger = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class CustomerView:
    """A customer with the plan they are entitled to right now and the subscription behind it
    (of several, the one granting the best plan), as of `as_of`."""

    customer: Customer
    plan: Plan | None
    subscription: Subscription | None
    as_of: datetime
    seats_in_use: int | None = None  # members holding seats, when the subscription sells seats


async def upsert_customer(
    pool: asyncpg.Pool,
    gateway: StripeGateway | None,
    *,
    external_id: str,
    email: str | None,
    name: str | None,
    metadata: dict[str, str],
) -> tuple[Customer, bool]:
    """Create or update the customer; a known Stripe customer learns a changed email or name
    first, so a Stripe failure leaves both sides as they were."""
    existing = await db.select_customer(pool, external_id)
    if (
        existing is not None
        and existing.stripe_customer_id is not None
        and gateway is not None
        and (existing.email, existing.name) != (email, name)
    ):
        async with attempt_key(pool, update_key(existing, email=email, name=name)) as key:
            await gateway.update_customer(
                existing.stripe_customer_id, email=email, name=name, idempotency_key=key
            )
    return await db.upsert_customer(
        pool, external_id=external_id, email=email, name=name, metadata=metadata
    )


def update_key(customer: Customer, *, email: str | None, name: str | None) -> str:
    """The Stripe idempotency key of a contact change: ASCII, bounded, and free of personal data.

    A digest of the row's version and the new values: a retry of the same change reuses it, and
    any later change gets a new one (so A → B → A → B is never answered with a stale replay).
    A retry after a failure Stripe answered moves on to a new key (see services/stripe_keys.py).
    """
    version = int(customer.updated_at.timestamp() * 1_000_000)
    change = orjson.dumps([version, email, name])
    return f"customer:{customer.id}:update:{hashlib.sha256(change).hexdigest()[:32]}"


def create_key(customer: Customer) -> str:
    """The Stripe idempotency key that creates the customer's Stripe customer exactly once.

    A new one after each deletion Stripe reported: within 24 h Stripe would otherwise replay the
    deleted customer's id for the old key. A failure Stripe answered moves the next attempt on
    to `<key>:retry:<n>` (see services/stripe_keys.py); a timeout keeps the key."""
    if customer.stripe_customer_generation == 0:
        return f"customer:{customer.id}:create"
    return f"customer:{customer.id}:create:{customer.stripe_customer_generation}"


async def get_customer(pool: asyncpg.Pool, external_id: str) -> Customer:
    customer = await db.select_customer(pool, external_id)
    if customer is None:
        raise NotFound(f"No customer has id '{external_id}'. Create it with PUT first.")
    return customer


async def customer_view(
    pool: asyncpg.Pool, customer: Customer, *, grace: timedelta, now: datetime | None = None
) -> CustomerView:
    """The plan granted now, decided over all the customer's subscriptions."""
    now = now or datetime.now(UTC)
    async with pool.acquire() as conn:
        subscription = await subscriptions.select_current_subscription(
            conn, customer.id, now=now, grace=grace
        )
        all_plans = await plans.select_plans(conn)
        in_use = (
            await members.count_members(conn, customer.id)
            if subscription is not None and subscription.per_seat
            else None
        )
    entitled = grants_plan(subscription, now=now, grace=grace)
    plan_id = subscription.plan_id if entitled and subscription is not None else None
    plan = next((p for p in all_plans if (p.id == plan_id if plan_id else p.is_default)), None)
    return CustomerView(
        customer=customer, plan=plan, subscription=subscription, as_of=now, seats_in_use=in_use
    )


async def ensure_stripe_customer(
    pool: asyncpg.Pool, gateway: StripeGateway, customer: Customer
) -> str:
    """The customer's Stripe id, creating the Stripe customer on first use, exactly once.

    Concurrent first uses send the same idempotency key, so Stripe creates one customer and
    answers all of them with it; the database keeps whichever id is stored first. A deletion
    mirrored meanwhile refuses the answer (it may be the deleted customer), and we start over.
    """
    if customer.stripe_customer_id is not None:
        return customer.stripe_customer_id
    async with attempt_key(pool, create_key(customer)) as key:
        created = await gateway.create_customer(
            email=customer.email,
            name=customer.name,
            metadata={
                "billing_customer_id": str(customer.id),
                "billing_customer_key": customer.external_id,
            },
            idempotency_key=key,
        )
    stored = await db.claim_stripe_customer_id(
        pool, customer.id, created, generation=customer.stripe_customer_generation
    )
    if stored is None:
        return await ensure_stripe_customer(
            pool, gateway, await get_customer(pool, customer.external_id)
        )
    if stored != created:
        logger.warning("customer.duplicate_stripe_customer", kept=stored, unused=created)
    return stored


async def sync_subscriptions_from_stripe(
    pool: asyncpg.Pool, gateway: StripeGateway, customer: Customer
) -> None:
    """Mirror every Stripe subscription of the customer as Stripe has it now."""
    async with gateway.holding_connection(pool) as conn:
        await sync_customer_subscriptions(conn, gateway, customer)


# Runs inside the sync's write transaction; False abandons the write (someone else did it).
BeforeWrite = Callable[[Connection], Awaitable[bool]]


async def sync_customer_subscriptions(
    conn: Connection,
    gateway: StripeGateway,
    customer: Customer,
    *,
    unless_fetched_since: datetime | None = None,
    before_write: BeforeWrite | None = None,
) -> bool:
    """Fetch the customer's subscriptions from Stripe and mirror them; returns whether it wrote.

    Syncs of one customer take turns (a session lock, no transaction, around fetch and write),
    so an older fetch can never overwrite a newer one. With `unless_fetched_since`, a customer
    fetched since that moment is not fetched again: that state already reflects the signal.
    Pass when we received the signal (our database clock, like the fetch times), never the
    event's `created`: Stripe rounds that down to the second, so a change made just after a
    fetch in the same second would look older than the fetch and be skipped.
    """
    async with session_lock(conn, customer_lock(customer)):
        fetched: list[StripeSubscription] = []
        started = None
        last_fetch = await db.subscriptions_fetched_at(conn, customer.id)
        fresh = (
            unless_fetched_since is not None
            and last_fetch is not None
            and (last_fetch >= unless_fetched_since)
        )
        if customer.stripe_customer_id is not None and not fresh:
            started = await conn.fetchval("SELECT clock_timestamp()")
            fetched = await gateway.list_subscriptions(customer.stripe_customer_id)
        async with conn.transaction():
            if before_write is not None and not await before_write(conn):
                return False
            before = await subscriptions.select_current_subscription(conn, customer.id)
            for subscription in fetched:
                await subscriptions.upsert_subscription(conn, customer.id, subscription)
            if started is not None:
                await db.set_subscriptions_fetched_at(conn, customer.id, started)
            after = await subscriptions.select_current_subscription(conn, customer.id)
            await _announce_subscription_change(conn, customer, before, after)
        return True


async def mirror_stripe_deletion(
    conn: Connection, customer: Customer, stripe_customer_id: str, *, deleted_at: datetime
) -> None:
    """Stripe deleted the customer's Stripe customer and, with it, cancelled every subscription.

    Mirror both in the caller's transaction: the subscriptions end here too (so the paid plan
    stops whichever of the deletion events comes first), and the Stripe id is forgotten under a
    new generation, so the next checkout creates a new Stripe customer. The caller holds the
    customer's sync lock, so no sync fetched before the deletion can write after it.
    """
    before = await subscriptions.select_current_subscription(conn, customer.id)
    if not await db.forget_stripe_customer(conn, stripe_customer_id):
        return  # already mirrored
    await subscriptions.end_subscriptions(conn, customer.id, ended_at=deleted_at)
    after = await subscriptions.select_current_subscription(conn, customer.id)
    await _announce_subscription_change(conn, customer, before, after)
    logger.info("customer.stripe_customer_deleted", customer_id=customer.external_id)


def customer_lock(customer: Customer) -> str:
    """The session lock that serializes every fetch-and-write of one customer's mirror."""
    return f"billing.customer:{customer.id}"


def _facts(subscription: Subscription | None) -> tuple[object, ...] | None:
    if subscription is None:
        return None
    return (
        subscription.stripe_subscription_id, subscription.status, subscription.plan_key,
        subscription.price_key, subscription.cancel_at_period_end, subscription.cancel_at,
        subscription.current_period_end, subscription.scheduled_price_key, subscription.quantity,
    )  # fmt: skip


def _ending(subscription: Subscription | None) -> bool:
    """Cancelled, or set to cancel at the period end or at a date (the portal's way)."""
    return subscription is not None and (
        subscription.status == "canceled" or subscription.cancellation_pending
    )


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def _paid_plan(subscription: Subscription | None) -> str | None:
    """The plan a subscription grants by its status alone (the grace period is not an event)."""
    if subscription is None or subscription.status not in {"active", "trialing", "past_due"}:
        return None
    return subscription.plan_key


async def _announce_subscription_change(
    conn: Connection, customer: Customer, before: Subscription | None, after: Subscription | None
) -> None:
    """subscription.updated when our mirror changed; customer.entitlements_updated when the
    plan it grants changed. Written with the change, so apps hear of every change once."""
    if after is None or _facts(before) == _facts(after):
        return
    emails: list[tuple[str, str | None]] = []
    if _paid_plan(after) and not _paid_plan(before):
        emails.append(("owner_new_subscription", None))
    if _ending(after) and not _ending(before) and before is not None:
        emails.append(("owner_cancellation", None))
    await outbox.emit(
        conn,
        "subscription.updated",
        {
            "customer_id": customer.external_id,
            "status": after.status,
            "plan": after.plan_key,
            "price": after.price_key,
            "cancel_at_period_end": after.cancel_at_period_end,
            "cancel_at": _iso(after.cancel_at),
            "cancellation_pending": after.cancellation_pending,
            "ends_at": _iso(after.ended_at or after.ends_at),
            "current_period_end": _iso(after.current_period_end),
        },
        emails=emails,
    )
    if (
        before is not None
        and after.per_seat
        and before.stripe_subscription_id == after.stripe_subscription_id
        and before.quantity != after.quantity
    ):  # seats changed in Stripe (the portal, the dashboard, a scheduled removal)
        await outbox.emit(
            conn,
            "subscription.seats_changed",
            {
                "customer_id": customer.external_id,
                "previous_seats": before.quantity,
                "seats": after.quantity,
                "scheduled_seats": after.scheduled_quantity,
                "effective": "now",
                "effective_at": None,
            },
        )
    if _paid_plan(before) != _paid_plan(after):
        await outbox.emit(
            conn,
            "customer.entitlements_updated",
            {
                "customer_id": customer.external_id,
                "paid_plan": _paid_plan(after),
                "previous_paid_plan": _paid_plan(before),
            },
        )
