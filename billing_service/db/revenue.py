"""SQL for the revenue report: recurring revenue, subscription counts and the weekly series,
summed from the subscriptions mirror, the catalog's prices and the one-time orders.

Money is summed as annual amounts (a monthly price times 12, a yearly one as it is, times
quantity), exact integers; the monthly figures are those divided by 12 (services/revenue.py).
These are aggregates over whole tables, read by an operator now and then, not on a hot path.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from billing_service.db.pool import Executor

# A subscription's recurring amount over a year, in the minor units of its price's currency.
_ANNUAL = "p.amount * s.quantity * CASE p.recurring_interval WHEN 'month' THEN 12 ELSE 1 END"
# When a canceled subscription ended (Stripe sets ended_at; canceled_at when it is missing).
_ENDED = "coalesce(s.ended_at, s.canceled_at)"
# It paid at some point, as far as the mirror tells: not trialing now, never incomplete, and
# not canceled before its trial ended.
_PAID = (
    f"(s.status NOT IN ('trialing', 'incomplete', 'incomplete_expired') AND NOT "
    f"(s.status = 'canceled' AND s.trial_end IS NOT NULL AND {_ENDED} <= s.trial_end))"
)
# Counted as revenue: active subscriptions and past-due ones (Stripe is still collecting).
RECURRING_STATUSES = ("active", "past_due")


@dataclass(frozen=True, slots=True)
class WeekRow:
    """One week's figures in one currency (None: subscriptions whose price is not ours): how
    many, and their annual amount (subscriptions) or their total (orders)."""

    week: datetime
    currency: str | None
    count: int
    amount: int


async def annual_by_currency(conn: Executor) -> dict[str, int]:
    rows = await conn.fetch(
        f"""
        SELECT p.currency, sum({_ANNUAL})::bigint AS annual
        FROM subscriptions s JOIN prices p ON p.id = s.price_id
        WHERE s.status = ANY($1::text[]) AND p.recurring_interval IS NOT NULL
        GROUP BY p.currency
        """,  # noqa: S608 - constant fragments only
        list(RECURRING_STATUSES),
    )
    return {row["currency"]: row["annual"] for row in rows}


async def status_counts(conn: Executor) -> dict[str, int]:
    rows = await conn.fetch("SELECT status, count(*) AS n FROM subscriptions GROUP BY status")
    return {row["status"]: row["n"] for row in rows}


async def one_time_by_currency(conn: Executor) -> dict[str, int]:
    """Paid orders (refunded ones are not revenue)."""
    rows = await conn.fetch(
        "SELECT currency, sum(amount_total)::bigint AS total FROM orders WHERE status = 'paid' "
        "GROUP BY currency"
    )
    return {row["currency"]: row["total"] for row in rows}


def _week(column: str) -> str:
    return f"date_trunc('week', {column} AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"


async def new_by_week(conn: Executor, since: datetime, until: datetime) -> list[WeekRow]:
    """Subscriptions started each week (never-completed ones aside) and the annual amount of
    those that paid."""
    return await _weeks(
        conn,
        f"""
        SELECT {_week("s.stripe_created_at")} AS week, p.currency, count(*) AS count,
               coalesce(sum({_ANNUAL}) FILTER (WHERE {_PAID}), 0)::bigint AS amount
        FROM subscriptions s LEFT JOIN prices p ON p.id = s.price_id
        WHERE s.stripe_created_at >= $1 AND s.stripe_created_at < $2
          AND s.status NOT IN ('incomplete', 'incomplete_expired')
        GROUP BY 1, 2
        """,  # noqa: S608 - constant fragments only
        since,
        until,
    )


async def churned_by_week(conn: Executor, since: datetime, until: datetime) -> list[WeekRow]:
    """Subscriptions that ended each week and the annual amount of those that had paid."""
    return await _weeks(
        conn,
        f"""
        SELECT {_week(_ENDED)} AS week, p.currency, count(*) AS count,
               coalesce(sum({_ANNUAL}) FILTER (WHERE {_PAID}), 0)::bigint AS amount
        FROM subscriptions s LEFT JOIN prices p ON p.id = s.price_id
        WHERE s.status = 'canceled' AND {_ENDED} >= $1 AND {_ENDED} < $2
        GROUP BY 1, 2
        """,  # noqa: S608 - constant fragments only
        since,
        until,
    )


async def one_time_by_week(conn: Executor, since: datetime, until: datetime) -> list[WeekRow]:
    return await _weeks(
        conn,
        f"""
        SELECT {_week("created_at")} AS week, currency, count(*) AS count,
               sum(amount_total)::bigint AS amount
        FROM orders WHERE status = 'paid' AND created_at >= $1 AND created_at < $2
        GROUP BY 1, 2
        """,  # noqa: S608 - constant fragments only
        since,
        until,
    )


async def _weeks(conn: Executor, query: str, since: datetime, until: datetime) -> list[WeekRow]:
    rows = await conn.fetch(query, since, until)
    return [WeekRow(**dict(row.items())) for row in rows]
