"""The revenue report: MRR and ARR per currency, subscription counts, and for the last 12 ISO
weeks (UTC) new and churned subscriptions and net revenue, from what the mirror holds.

What counts (docs/reports.md says the same for people):
- MRR and ARR: active and past-due subscriptions at their plan price times quantity (Stripe is still
  collecting a past-due one; a trial has paid nothing yet). A yearly price counts 1/12 a month.
  ARR is the exact annual sum; MRR is ARR / 12, rounded half up to the minor unit.
- Net revenue of a week: paid one-time orders created in it, plus the MRR of subscriptions started
  in it, minus the MRR of subscriptions that ended in it; a subscription counts only if it paid
  (not trialing, not canceled within its trial). List prices: discounts, taxes, prorations,
  metered overage and refunds of recurring invoices are not in the mirror's figures.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

import asyncpg

from billing_service.db import revenue as db
from billing_service.db.revenue import WeekRow

WEEKS = 12
COUNTED_STATUSES = ("active", "trialing", "past_due", "canceled")


@dataclass(frozen=True, slots=True)
class WeekFigures:
    start: datetime
    new_subscriptions: int
    churned_subscriptions: int
    # currency -> one_time, new_mrr, churned_mrr, net
    revenue: dict[str, dict[str, int]]


@dataclass(frozen=True, slots=True)
class RevenueReport:
    as_of: datetime
    mrr: dict[str, int]
    arr: dict[str, int]
    one_time: dict[str, int]
    subscriptions: dict[str, int]
    weeks: list[WeekFigures]


def monthly(annual: int) -> int:
    """An annual amount's monthly share, rounded half up to the minor unit."""
    return int((Decimal(annual) / 12).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def week_start(moment: datetime) -> datetime:
    """Monday 00:00 UTC of the ISO week holding `moment`."""
    day = moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return day - timedelta(days=day.weekday())


async def revenue_report(pool: asyncpg.Pool, *, now: datetime) -> RevenueReport:
    first = week_start(now) - timedelta(weeks=WEEKS - 1)
    end = week_start(now) + timedelta(weeks=1)
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
        annual = await db.annual_by_currency(conn)
        counts = await db.status_counts(conn)
        one_time = await db.one_time_by_currency(conn)
        new = await db.new_by_week(conn, first, end)
        churned = await db.churned_by_week(conn, first, end)
        orders = await db.one_time_by_week(conn, first, end)
    starts = [first + timedelta(weeks=n) for n in range(WEEKS)]
    return RevenueReport(
        as_of=now,
        mrr={currency: monthly(amount) for currency, amount in sorted(annual.items())},
        arr=dict(sorted(annual.items())),
        one_time=dict(sorted(one_time.items())),
        subscriptions={status: counts.get(status, 0) for status in COUNTED_STATUSES},
        weeks=[_week(start, new, churned, orders) for start in starts],
    )


def _week(
    start: datetime, new: list[WeekRow], churned: list[WeekRow], orders: list[WeekRow]
) -> WeekFigures:
    def of(rows: list[WeekRow]) -> list[WeekRow]:
        return [row for row in rows if row.week == start]

    revenue: dict[str, dict[str, int]] = {}

    def add(rows: list[WeekRow], part: str) -> None:
        for row in of(rows):
            if row.currency is None or not row.amount:
                continue
            figures = revenue.setdefault(
                row.currency, {"one_time": 0, "new_mrr": 0, "churned_mrr": 0, "net": 0}
            )
            figures[part] += row.amount if part == "one_time" else monthly(row.amount)

    add(orders, "one_time")
    add(new, "new_mrr")
    add(churned, "churned_mrr")
    for figures in revenue.values():
        figures["net"] = figures["one_time"] + figures["new_mrr"] - figures["churned_mrr"]
    return WeekFigures(
        start=start,
        new_subscriptions=sum(row.count for row in of(new)),
        churned_subscriptions=sum(row.count for row in of(churned)),
        revenue=dict(sorted(revenue.items())),
    )
