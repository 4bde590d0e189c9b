"""Customers of the calling apps: their records, their Stripe customer, and their current plan."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
import structlog

from billing_service.db import customers as db
from billing_service.db import plans, subscriptions
from billing_service.db.customers import Customer
from billing_service.db.plans import Plan
from billing_service.db.subscriptions import Subscription
from billing_service.errors import NotFound
from billing_service.services.access import grants_plan
from billing_service.stripe_gateway import StripeGateway

logger = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class CustomerView:
    """A customer with the plan they are entitled to right now and the subscription behind it."""

    customer: Customer
    plan: Plan | None
    subscription: Subscription | None


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
        await gateway.update_customer(
            existing.stripe_customer_id,
            email=email,
            name=name,
            idempotency_key=f"customer:{existing.id}:update:{email}:{name}",
        )
    return await db.upsert_customer(
        pool, external_id=external_id, email=email, name=name, metadata=metadata
    )


async def get_customer(pool: asyncpg.Pool, external_id: str) -> Customer:
    customer = await db.select_customer(pool, external_id)
    if customer is None:
        raise NotFound(f"No customer has id '{external_id}'. Create it with PUT first.")
    return customer


async def customer_view(
    pool: asyncpg.Pool, customer: Customer, *, grace: timedelta
) -> CustomerView:
    async with pool.acquire() as conn:
        subscription = await subscriptions.select_current_subscription(conn, customer.id)
        all_plans = await plans.select_plans(conn)
    entitled = grants_plan(subscription, now=datetime.now(UTC), grace=grace)
    plan_id = subscription.plan_id if entitled and subscription is not None else None
    plan = next((p for p in all_plans if (p.id == plan_id if plan_id else p.is_default)), None)
    return CustomerView(customer=customer, plan=plan, subscription=subscription)


async def ensure_stripe_customer(
    pool: asyncpg.Pool, gateway: StripeGateway, customer: Customer
) -> str:
    """The customer's Stripe id, creating the Stripe customer on first use, exactly once.

    Concurrent first uses send the same idempotency key, so Stripe creates one customer and
    answers all of them with it; the database keeps whichever id is stored first.
    """
    if customer.stripe_customer_id is not None:
        return customer.stripe_customer_id
    created = await gateway.create_customer(
        email=customer.email,
        name=customer.name,
        metadata={
            "billing_customer_id": str(customer.id),
            "billing_customer_key": customer.external_id,
        },
        idempotency_key=f"customer:{customer.id}:create",
    )
    stored = await db.claim_stripe_customer_id(pool, customer.id, created)
    if stored != created:
        logger.warning("customer.duplicate_stripe_customer", kept=stored, unused=created)
    return stored


async def sync_subscriptions_from_stripe(
    pool: asyncpg.Pool, gateway: StripeGateway, customer: Customer
) -> None:
    """Mirror every Stripe subscription of the customer as Stripe has it now.

    Syncs of one customer take turns (a session lock, no transaction, around fetch and write),
    so an older fetch can never overwrite a newer one.
    """
    stripe_customer_id = customer.stripe_customer_id
    if stripe_customer_id is None:
        return
    lock = f"billing.customer:{customer.id}"
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock(hashtext($1))", lock)
        try:
            fetched = await gateway.list_subscriptions(stripe_customer_id)
            async with conn.transaction():
                for subscription in fetched:
                    await subscriptions.upsert_subscription(conn, customer.id, subscription)
        finally:
            await conn.execute("SELECT pg_advisory_unlock(hashtext($1))", lock)
