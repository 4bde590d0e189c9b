"""SQL for the `subscriptions` table: the mirror of each customer's Stripe subscriptions."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from billing_service.db.pool import Executor
from billing_service.stripe_objects import StripeSubscription

_COLUMNS = (
    "s.id, s.customer_id, s.stripe_subscription_id, s.status, s.stripe_price_id, s.price_id, "
    "p.plan_id, pl.key AS plan_key, p.lookup_key AS price_key, s.stripe_item_id, s.quantity, "
    "s.current_period_start, s.current_period_end, s.cancel_at_period_end, s.cancel_at, "
    "s.canceled_at, s.ended_at, s.trial_end, s.stripe_schedule_id, "
    "sp.lookup_key AS scheduled_price_key, s.past_due_since, s.stripe_created_at, s.updated_at"
)
_FROM = (
    "subscriptions s LEFT JOIN prices p ON p.id = s.price_id "
    "LEFT JOIN plans pl ON pl.id = p.plan_id "
    "LEFT JOIN prices sp ON sp.id = s.scheduled_price_id"
)

# Statuses in which a subscription still exists for the customer (one may not start another).
LIVE_STATUSES = ("trialing", "active", "past_due", "unpaid", "paused")


@dataclass(frozen=True, slots=True)
class Subscription:
    id: uuid.UUID
    customer_id: uuid.UUID
    stripe_subscription_id: str
    status: str
    stripe_price_id: str
    price_id: uuid.UUID | None
    plan_id: uuid.UUID | None
    plan_key: str | None
    price_key: str | None
    stripe_item_id: str | None
    quantity: int
    current_period_start: datetime | None
    current_period_end: datetime | None
    cancel_at_period_end: bool
    cancel_at: datetime | None
    canceled_at: datetime | None
    ended_at: datetime | None
    trial_end: datetime | None
    stripe_schedule_id: str | None
    scheduled_price_key: str | None
    past_due_since: datetime | None
    stripe_created_at: datetime
    updated_at: datetime


def _from_row(row: asyncpg.Record) -> Subscription:
    return Subscription(**dict(row.items()))


async def upsert_subscription(
    conn: Executor, customer_id: uuid.UUID, subscription: StripeSubscription
) -> None:
    """Mirror Stripe's subscription as it is now. A scheduled change is kept only while Stripe
    still has the schedule; past_due_since starts when the status turns past_due."""
    await conn.execute(
        """
        INSERT INTO subscriptions (
            customer_id, stripe_subscription_id, status, stripe_price_id, price_id,
            stripe_item_id, quantity, current_period_start, current_period_end,
            cancel_at_period_end, cancel_at, canceled_at, ended_at, trial_end,
            stripe_schedule_id, past_due_since, stripe_created_at)
        VALUES ($1, $2, $3, $4, (SELECT id FROM prices WHERE stripe_price_id = $4),
                $5, $6, $7, $8, $9, $10, $11, $12, $13, $14,
                CASE WHEN $3 = 'past_due' THEN now() END, $15)
        ON CONFLICT (stripe_subscription_id) DO UPDATE SET
            status = EXCLUDED.status,
            stripe_price_id = EXCLUDED.stripe_price_id,
            price_id = EXCLUDED.price_id,
            stripe_item_id = EXCLUDED.stripe_item_id,
            quantity = EXCLUDED.quantity,
            current_period_start = EXCLUDED.current_period_start,
            current_period_end = EXCLUDED.current_period_end,
            cancel_at_period_end = EXCLUDED.cancel_at_period_end,
            cancel_at = EXCLUDED.cancel_at,
            canceled_at = EXCLUDED.canceled_at,
            ended_at = EXCLUDED.ended_at,
            trial_end = EXCLUDED.trial_end,
            stripe_schedule_id = EXCLUDED.stripe_schedule_id,
            scheduled_price_id = CASE WHEN EXCLUDED.stripe_schedule_id IS NULL THEN NULL
                                      ELSE subscriptions.scheduled_price_id END,
            past_due_since = CASE
                WHEN EXCLUDED.status <> 'past_due' THEN NULL
                ELSE coalesce(subscriptions.past_due_since, now()) END
        """,
        customer_id,
        subscription.id,
        subscription.status,
        subscription.price_id,
        subscription.item_id,
        subscription.quantity,
        subscription.current_period_start,
        subscription.current_period_end,
        subscription.cancel_at_period_end,
        subscription.cancel_at,
        subscription.canceled_at,
        subscription.ended_at,
        subscription.trial_end,
        subscription.schedule_id,
        subscription.created,
    )


async def select_current_subscription(
    conn: Executor, customer_id: uuid.UUID
) -> Subscription | None:
    """The subscription that matters: a live one if any, else the most recent."""
    row = await conn.fetchrow(
        f"""
        SELECT {_COLUMNS} FROM {_FROM}
        WHERE s.customer_id = $1
        ORDER BY s.status = ANY($2::text[]) DESC, s.stripe_created_at DESC
        LIMIT 1
        """,  # noqa: S608 - constant fragments
        customer_id,
        list(LIVE_STATUSES),
    )
    return None if row is None else _from_row(row)


async def set_scheduled_change(
    conn: Executor, stripe_subscription_id: str, *, schedule_id: str, price_id: uuid.UUID
) -> None:
    await conn.execute(
        "UPDATE subscriptions SET stripe_schedule_id = $2, scheduled_price_id = $3 "
        "WHERE stripe_subscription_id = $1",
        stripe_subscription_id,
        schedule_id,
        price_id,
    )


async def end_subscriptions(conn: Executor, customer_id: uuid.UUID, *, ended_at: datetime) -> int:
    """Mark every subscription of the customer that has not ended as canceled at `ended_at`
    (never later than now): Stripe cancels them all when it deletes the customer."""
    result: str = await conn.execute(
        """
        UPDATE subscriptions SET status = 'canceled',
            canceled_at = coalesce(canceled_at, least($2, now())),
            ended_at = coalesce(ended_at, least($2, now())),
            stripe_schedule_id = NULL, scheduled_price_id = NULL, past_due_since = NULL
        WHERE customer_id = $1 AND status NOT IN ('canceled', 'incomplete_expired')
        """,
        customer_id,
        ended_at,
    )
    return int(result.rsplit(maxsplit=1)[-1])
