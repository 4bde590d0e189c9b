"""SQL for the `subscriptions` table: the mirror of each customer's Stripe subscriptions.

A customer may have several subscriptions, each with several items. Every item is kept in
`items`; the item whose price names a plan of the catalog (the best plan, by `display_order`,
when several do) is the subscription's plan item, kept in the price, item and period columns.
Which subscription decides the customer's plan is `RANKING`: the best plan granted now wins.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from billing_service.db.pool import Executor
from billing_service.stripe_objects import StripeSubscription

# Statuses in which a subscription still exists for the customer (one may not start another).
LIVE_STATUSES = ("trialing", "active", "past_due", "unpaid", "paused")
_LIVE = "(" + ", ".join(f"'{status}'" for status in LIVE_STATUSES) + ")"


def grants_sql(now: str, grace: str) -> str:
    """The access policy (services/access.py) as SQL over `s` (subscriptions) and `pl` (its
    plan): `active` and `trialing` grant the plan, `past_due` for `grace` after it started.
    A NULL grace means "by status alone" (the grace period is not an event)."""
    return (
        f"(pl.id IS NOT NULL AND (s.status IN ('active', 'trialing') OR (s.status = 'past_due' "
        f"AND ({grace}::interval IS NULL "
        f"OR coalesce(s.past_due_since, {now}::timestamptz) + {grace}::interval > {now}))))"
    )


def ranking_sql(now: str, grace: str) -> str:
    """ORDER BY terms putting first the subscription that matters for the customer: one that
    grants a plan now (the highest plan by `display_order`, then active before past due), else
    a live one carrying a plan, else a live one, else the most recent."""
    return f"""
        {grants_sql(now, grace)} DESC,
        s.status IN {_LIVE} DESC,
        pl.id IS NOT NULL DESC,
        CASE WHEN s.status IN {_LIVE} THEN pl.display_order END DESC NULLS LAST,
        s.status IN ('active', 'trialing') DESC,
        s.stripe_created_at DESC
    """


_COLUMNS = """
    s.id, s.customer_id, s.stripe_subscription_id, s.status, s.currency, s.stripe_price_id,
    s.price_id, p.plan_id, pl.key AS plan_key, p.lookup_key AS price_key, s.stripe_item_id,
    s.quantity, s.current_period_start, s.current_period_end, s.cancel_at_period_end,
    s.cancel_at, s.canceled_at, s.ended_at, s.trial_end, s.stripe_schedule_id,
    sp.lookup_key AS scheduled_price_key, s.scheduled_change_at, s.past_due_since,
    s.stripe_created_at, s.updated_at, s.scheduled_quantity, p.per_seat, pl.max_seats,
    (SELECT coalesce(jsonb_agg(jsonb_build_object(
                'price', ip.lookup_key, 'quantity', e.item -> 'quantity',
                'metered', coalesce(e.item -> 'metered', 'false'::jsonb)) ORDER BY e.n),
            '[]'::jsonb)
     FROM jsonb_array_elements(s.items) WITH ORDINALITY AS e(item, n)
     LEFT JOIN prices ip ON ip.stripe_price_id = e.item ->> 'price') AS items
"""
_FROM = (
    "subscriptions s LEFT JOIN prices p ON p.id = s.price_id "
    "LEFT JOIN plans pl ON pl.id = p.plan_id "
    "LEFT JOIN prices sp ON sp.id = s.scheduled_price_id"
)


@dataclass(frozen=True, slots=True)
class Subscription:
    id: uuid.UUID
    customer_id: uuid.UUID
    stripe_subscription_id: str
    status: str
    currency: str | None
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
    scheduled_change_at: datetime | None
    past_due_since: datetime | None
    stripe_created_at: datetime
    updated_at: datetime
    # Seats: the quantity removed seats leave at the end of the period, whether the plan item's
    # price is sold per seat, and the plan's most seats.
    scheduled_quantity: int | None
    per_seat: bool | None
    max_seats: int | None
    # Every item as callers may see it: the price's lookup key (None outside the catalog),
    # the quantity (None for metered prices) and whether it is metered.
    items: list[dict[str, Any]]

    @property
    def cancellation_pending(self) -> bool:
        """Set to end: at the period end (`cancel_at_period_end`) or at a date (`cancel_at`,
        which is what the customer portal sets in flexible billing mode)."""
        return self.status in LIVE_STATUSES and (
            self.cancel_at_period_end or self.cancel_at is not None
        )

    @property
    def ends_at(self) -> datetime | None:
        """When a pending cancellation takes effect."""
        if not self.cancellation_pending:
            return None
        return self.cancel_at or self.current_period_end


def _from_row(row: asyncpg.Record) -> Subscription:
    return Subscription(**dict(row.items()))


async def upsert_subscription(
    conn: Executor, customer_id: uuid.UUID, subscription: StripeSubscription
) -> None:
    """Mirror Stripe's subscription as it is now, with every item; the plan item is chosen here.

    A scheduled change is kept while Stripe still has the schedule and the change has not
    happened. `past_due_since` is Stripe's moment when it says (the unpaid invoice), else the
    moment we first see the status; the earliest known moment is kept while it stays past due.
    """
    await conn.execute(
        """
        WITH plan_item AS (
            SELECT e.item, pr.id AS price_id
            FROM jsonb_array_elements($4::jsonb) WITH ORDINALITY AS e(item, n)
            LEFT JOIN prices pr ON pr.stripe_price_id = e.item ->> 'price'
                               AND pr.type = 'recurring'
            LEFT JOIN plans pl ON pl.id = pr.plan_id
            ORDER BY pr.id IS NOT NULL DESC, pl.display_order DESC,
                     (e.item ->> 'metered')::boolean, e.n
            LIMIT 1
        )
        INSERT INTO subscriptions (
            customer_id, stripe_subscription_id, status, items, currency, stripe_price_id,
            price_id, stripe_item_id, quantity, current_period_start, current_period_end,
            cancel_at_period_end, cancel_at, canceled_at, ended_at, trial_end,
            stripe_schedule_id, past_due_since, stripe_created_at)
        SELECT $1, $2, $3, $4, $5, coalesce(i.item ->> 'price', ''), i.price_id,
               i.item ->> 'id', coalesce((i.item ->> 'quantity')::integer, 1),
               to_timestamp((i.item ->> 'current_period_start')::bigint),
               to_timestamp((i.item ->> 'current_period_end')::bigint),
               $6, $7, $8, $9, $10, $11,
               CASE WHEN $3 = 'past_due' THEN coalesce($12, now()) END, $13
        FROM (SELECT 1) AS one LEFT JOIN plan_item i ON true
        ON CONFLICT (stripe_subscription_id) DO UPDATE SET
            status = EXCLUDED.status,
            items = EXCLUDED.items,
            currency = EXCLUDED.currency,
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
            scheduled_price_id = CASE
                WHEN EXCLUDED.stripe_schedule_id IS NULL
                     OR EXCLUDED.price_id IS NOT DISTINCT FROM subscriptions.scheduled_price_id
                THEN NULL ELSE subscriptions.scheduled_price_id END,
            scheduled_change_at = CASE
                WHEN EXCLUDED.stripe_schedule_id IS NULL
                     OR EXCLUDED.price_id IS NOT DISTINCT FROM subscriptions.scheduled_price_id
                THEN NULL ELSE subscriptions.scheduled_change_at END,
            -- Removed seats are pending until the quantity is down to them, or the schedule
            -- that would bring it there is gone.
            scheduled_quantity = CASE
                WHEN EXCLUDED.quantity <= subscriptions.scheduled_quantity
                     OR (subscriptions.stripe_schedule_id IS NOT NULL
                         AND EXCLUDED.stripe_schedule_id IS NULL)
                THEN NULL ELSE subscriptions.scheduled_quantity END,
            past_due_since = CASE
                WHEN EXCLUDED.status <> 'past_due' THEN NULL
                ELSE least(subscriptions.past_due_since, EXCLUDED.past_due_since) END
        """,
        customer_id,
        subscription.id,
        subscription.status,
        [item.as_json() for item in subscription.items],
        subscription.currency,
        subscription.cancel_at_period_end,
        subscription.cancel_at,
        subscription.canceled_at,
        subscription.ended_at,
        subscription.trial_end,
        subscription.schedule_id,
        subscription.past_due_since,
        subscription.created,
    )


async def select_current_subscription(
    conn: Executor,
    customer_id: uuid.UUID,
    *,
    now: datetime | None = None,
    grace: timedelta | None = None,
) -> Subscription | None:
    """The subscription that matters (see `ranking_sql`). Without `grace`, a past-due
    subscription counts as granting by its status alone."""
    row = await conn.fetchrow(
        f"""
        SELECT {_COLUMNS} FROM {_FROM}
        WHERE s.customer_id = $1
        ORDER BY {ranking_sql("coalesce($2::timestamptz, now())", "$3")}
        LIMIT 1
        """,  # noqa: S608 - constant fragments
        customer_id,
        now,
        grace,
    )
    return None if row is None else _from_row(row)


async def select_subscriptions(conn: Executor, customer_id: uuid.UUID) -> list[Subscription]:
    """Every subscription of the customer, the one that matters first."""
    rows = await conn.fetch(
        f"""
        SELECT {_COLUMNS} FROM {_FROM}
        WHERE s.customer_id = $1
        ORDER BY {ranking_sql("now()", "NULL")}, s.stripe_subscription_id
        """,  # noqa: S608 - constant fragments
        customer_id,
    )
    return [_from_row(row) for row in rows]


async def set_scheduled_change(
    conn: Executor,
    stripe_subscription_id: str,
    *,
    schedule_id: str,
    price_id: uuid.UUID,
    effective_at: datetime | None,
) -> None:
    await conn.execute(
        "UPDATE subscriptions SET stripe_schedule_id = $2, scheduled_price_id = $3, "
        "scheduled_change_at = $4 WHERE stripe_subscription_id = $1",
        stripe_subscription_id,
        schedule_id,
        price_id,
        effective_at,
    )


async def set_scheduled_quantity(
    conn: Executor, subscription_id: uuid.UUID, quantity: int | None
) -> None:
    """Seats going at the end of the period (None: no removal pending). Written before Stripe
    is asked, so no member takes a seat that is on its way out."""
    await conn.execute(
        "UPDATE subscriptions SET scheduled_quantity = $2 WHERE id = $1", subscription_id, quantity
    )


async def set_scheduled_seats(
    conn: Executor, stripe_subscription_id: str, *, schedule_id: str,
    effective_at: datetime | None,
) -> None:  # fmt: skip
    """The schedule that removes seats at `effective_at`."""
    await conn.execute(
        "UPDATE subscriptions SET stripe_schedule_id = $2, scheduled_change_at = $3 "
        "WHERE stripe_subscription_id = $1",
        stripe_subscription_id,
        schedule_id,
        effective_at,
    )


async def forget_schedule(conn: Executor, stripe_subscription_id: str) -> None:
    """The schedule was released in Stripe: no change is pending any more."""
    await conn.execute(
        "UPDATE subscriptions SET stripe_schedule_id = NULL, scheduled_price_id = NULL, "
        "scheduled_change_at = NULL, scheduled_quantity = NULL "
        "WHERE stripe_subscription_id = $1",
        stripe_subscription_id,
    )


async def start_new_version(conn: Executor, subscription_id: uuid.UUID, seen: datetime) -> None:
    """Move the row to a new version (`updated_at`) unless something else already did.

    Idempotency keys for Stripe derive from the version, so this is how a new attempt after a
    failure Stripe answered gets a new key (Stripe replays an answered key for 24 hours).
    """
    await conn.execute(
        "UPDATE subscriptions SET updated_at = now() WHERE id = $1 AND updated_at = $2",
        subscription_id,
        seen,
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


async def had_trial(conn: Executor, customer_id: uuid.UUID, plan_id: uuid.UUID) -> bool:
    """Whether any subscription of the customer, in any status, had a trial (Stripe keeps
    `trial_end` once set) while carrying a price of the plan: its plan item, or any item whose
    price (live or archived) belongs to the plan."""
    found: bool = await conn.fetchval(
        """
        SELECT EXISTS (
            SELECT 1 FROM subscriptions s
            WHERE s.customer_id = $1 AND s.trial_end IS NOT NULL
              AND EXISTS (
                  SELECT 1 FROM prices p
                  WHERE p.plan_id = $2
                    AND (p.id = s.price_id
                         OR p.stripe_price_id IN (SELECT e.item ->> 'price'
                                                  FROM jsonb_array_elements(s.items) AS e(item)))
              )
        )
        """,
        customer_id,
        plan_id,
    )
    return found
