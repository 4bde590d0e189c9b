"""SQL for metering: the entitlement context, usage counters, credit balances and usage events."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from billing_service.db.pool import Executor
from billing_service.db.subscriptions import ranking_sql
from billing_service.periods import BEGINNING

_ALLOWANCE = 'enabled, "limit", soft_limit, reset, overage'

# Everything an entitlement decision needs, for one feature or all, in one round trip.
_CONTEXT = f"""
WITH f AS (
    SELECT id, key, kind, unit FROM features WHERE active AND ($2::text IS NULL OR key = $2)
), c AS (
    SELECT id FROM customers WHERE external_id = $1
), s AS (
    -- Of all the customer's subscriptions, the one granting the best plan now ($3, grace $4);
    -- a pending cancellation ends its billing period early, and a period that will not renew
    -- has no interval to be advanced by (see periods.renewed_period).
    SELECT s.status, p.plan_id, pl.key AS plan_key, s.past_due_since,
           s.current_period_start, least(s.current_period_end, s.cancel_at) AS current_period_end,
           CASE WHEN s.cancel_at_period_end OR s.cancel_at <= s.current_period_end THEN NULL
                ELSE p.recurring_interval END AS billing_interval
    FROM subscriptions s
    JOIN c ON s.customer_id = c.id
    LEFT JOIN prices p ON p.id = s.price_id
    LEFT JOIN plans pl ON pl.id = p.plan_id
    ORDER BY {ranking_sql("$3", "$4")}
    LIMIT 1
), d AS (
    SELECT id, key FROM plans WHERE is_default
)
SELECT f.id AS feature_id, f.key AS feature_key, f.kind, f.unit,
       c.id AS customer_id,
       s.status, s.plan_id AS subscribed_plan_id, s.plan_key AS subscribed_plan_key,
       s.past_due_since, s.current_period_start, s.current_period_end, s.billing_interval,
       d.id AS default_plan_id, d.key AS default_plan_key,
       to_jsonb(sp) AS subscribed_allowance, to_jsonb(dp) AS default_allowance,
       coalesce(cb.granted - cb.spent, 0) AS credits,
       su.period_start AS counter_period_start, su.used AS counter_used, su.cost AS counter_cost,
       du.period_start AS default_counter_period_start, du.used AS default_counter_used,
       du.cost AS default_counter_cost
FROM f
LEFT JOIN c ON true
LEFT JOIN s ON true
LEFT JOIN d ON true
LEFT JOIN LATERAL (
    SELECT {_ALLOWANCE} FROM plan_features WHERE plan_id = s.plan_id AND feature_id = f.id
) sp ON true
LEFT JOIN LATERAL (
    SELECT {_ALLOWANCE} FROM plan_features WHERE plan_id = d.id AND feature_id = f.id
) dp ON true
LEFT JOIN credit_balances cb ON cb.customer_id = c.id AND cb.feature_id = f.id
-- The counters of the current window, by exact key, under each allowance: the subscribed
-- plan's (in the subscription's billing period) and the default plan's (calendar windows);
-- resolve() uses the one the access policy picks. usage_window mirrors periods.period_for.
LEFT JOIN LATERAL (
    SELECT uc.period_start, uc.used, uc.cost
    FROM usage_window(coalesce(sp.reset, 'month'), $3, s.current_period_start,
                      s.current_period_end, s.billing_interval) w
    JOIN usage_counters uc ON uc.customer_id = c.id AND uc.feature_id = f.id
                          AND uc.period_start = w.window_start
    WHERE f.kind = 'metered' AND sp.enabled
) su ON true
LEFT JOIN LATERAL (
    SELECT uc.period_start, uc.used, uc.cost
    FROM usage_window(coalesce(dp.reset, 'month'), $3, NULL, NULL, NULL) w
    JOIN usage_counters uc ON uc.customer_id = c.id AND uc.feature_id = f.id
                          AND uc.period_start = w.window_start
    WHERE f.kind = 'metered' AND dp.enabled
) du ON true
ORDER BY f.key
"""  # noqa: S608 - constant fragments only


@dataclass(frozen=True, slots=True)
class FeatureContext:
    """One feature as it stands for one customer (who may not exist yet)."""

    feature_id: uuid.UUID
    feature_key: str
    kind: str
    unit: str | None
    customer_id: uuid.UUID | None
    status: str | None
    subscribed_plan_id: uuid.UUID | None
    subscribed_plan_key: str | None
    past_due_since: datetime | None
    current_period_start: datetime | None
    current_period_end: datetime | None
    billing_interval: str | None  # the price's, while the subscription renews
    default_plan_id: uuid.UUID | None
    default_plan_key: str | None
    subscribed_allowance: dict[str, Any] | None
    default_allowance: dict[str, Any] | None
    credits: int
    # The current window's counter under the subscribed allowance, then under the default one.
    counter_period_start: datetime | None
    counter_used: int | None
    counter_cost: Decimal | None
    default_counter_period_start: datetime | None
    default_counter_used: int | None
    default_counter_cost: Decimal | None


async def select_context(
    conn: Executor,
    customer_key: str,
    feature_key: str | None,
    *,
    now: datetime,
    grace: timedelta,
) -> list[FeatureContext]:
    rows = await conn.fetch(_CONTEXT, customer_key, feature_key, now, grace)
    return [FeatureContext(**dict(row.items())) for row in rows]


async def ensure_customer(conn: Executor, customer_key: str) -> uuid.UUID:
    """The customer's id, creating a bare record for a customer only known from usage."""
    for _ in range(3):
        found: uuid.UUID | None = await conn.fetchval(
            """
            WITH inserted AS (
                INSERT INTO customers (external_id) VALUES ($1)
                ON CONFLICT (external_id) DO NOTHING RETURNING id
            )
            SELECT id FROM inserted UNION ALL SELECT id FROM customers WHERE external_id = $1
            LIMIT 1
            """,
            customer_key,
        )
        if found is not None:
            return found
    raise RuntimeError("customer row neither inserted nor visible")


async def insert_usage_event(
    conn: Executor,
    *,
    customer_id: uuid.UUID,
    feature_id: uuid.UUID,
    idempotency_key: str,
    request_hash: bytes,
    amount: int,
    cost: Decimal | None,
    metadata: dict[str, Any],
    recorded: bool,
    period_start: datetime | None,
    response: dict[str, Any],
) -> bool:
    """Record the track call under its idempotency key; False when the key is already taken.

    A concurrent call with the same key waits here on the unique index until the first one
    commits, then sees it; that is what makes 20 simultaneous retries count once.
    """
    inserted = await conn.fetchval(
        """
        INSERT INTO usage_events (customer_id, feature_id, idempotency_key, request_hash, amount,
                                  cost, metadata, recorded, period_start, response)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
        ON CONFLICT (customer_id, idempotency_key) DO NOTHING
        RETURNING true
        """,
        customer_id,
        feature_id,
        idempotency_key,
        request_hash,
        amount,
        cost,
        metadata,
        recorded,
        period_start,
        response,
    )
    return bool(inserted)


async def select_usage_event(
    conn: Executor, customer_id: uuid.UUID, idempotency_key: str
) -> tuple[bytes, Any] | None:
    row = await conn.fetchrow(
        "SELECT request_hash, response FROM usage_events "
        "WHERE customer_id = $1 AND idempotency_key = $2",
        customer_id,
        idempotency_key,
    )
    return None if row is None else (bytes(row["request_hash"]), row["response"])


@dataclass(frozen=True, slots=True)
class CounterKey:
    """Which counter: one customer's one feature in one period."""

    customer_id: uuid.UUID
    feature_id: uuid.UUID
    period_start: datetime
    period_end: datetime | None


# A period counter never overflows its column: at these bounds it stays put (saturates), so a
# counter that reached one keeps accepting calls instead of failing every later one.
MAX_USED = 2**63 - 1  # bigint
MAX_COST = Decimal("999999999999999999.999999999999")  # numeric(30, 12)


async def add_within_cap(
    conn: Executor,
    key: CounterKey,
    *,
    amount: int,
    cost: Decimal | None,
    cap: int | None,
) -> int | None:
    """Add `amount` to the period's counter unless that would pass `cap`; the new total, or None.

    One conditional statement: concurrent calls can never push the counter past the cap.
    Negative amounts (refunds) always apply, and the counter never goes below zero. Both sums
    saturate at their column's bound (`MAX_USED`, `MAX_COST`) rather than overflow.
    """
    used: int | None = await conn.fetchval(
        """
        INSERT INTO usage_counters (customer_id, feature_id, period_start, period_end, used, cost)
        SELECT $1, $2, $3, $4, greatest($5::bigint, 0), least(coalesce($6::numeric, 0), $9)
        WHERE $7::bigint IS NULL OR $5::bigint <= $7::bigint
        ON CONFLICT (customer_id, feature_id, period_start) DO UPDATE
        SET used = least(greatest(usage_counters.used::numeric + $5::bigint, 0), $8)::bigint,
            cost = least(usage_counters.cost + coalesce($6::numeric, 0), $9)
        WHERE $7::bigint IS NULL OR $5::bigint <= 0
              OR usage_counters.used::numeric + $5::bigint <= $7::bigint
        RETURNING used
        """,
        key.customer_id,
        key.feature_id,
        key.period_start,
        key.period_end,
        amount,
        cost,
        cap,
        MAX_USED,
        MAX_COST,
    )
    return used


async def lock_counter_and_credits(conn: Executor, key: CounterKey) -> tuple[int, int]:
    """Lock the period counter and the credit balance (in that order); (used, credits left)."""
    await conn.execute(
        """
        INSERT INTO usage_counters (customer_id, feature_id, period_start, period_end)
        VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING
        """,
        key.customer_id,
        key.feature_id,
        key.period_start,
        key.period_end,
    )
    used: int = await conn.fetchval(
        "SELECT used FROM usage_counters "
        "WHERE customer_id = $1 AND feature_id = $2 AND period_start = $3 FOR UPDATE",
        key.customer_id,
        key.feature_id,
        key.period_start,
    )
    credits: int | None = await conn.fetchval(
        "SELECT granted - spent FROM credit_balances "
        "WHERE customer_id = $1 AND feature_id = $2 FOR UPDATE",
        key.customer_id,
        key.feature_id,
    )
    return used, credits or 0


async def add_locked(
    conn: Executor,
    key: CounterKey,
    *,
    amount: int,
    cost: Decimal | None,
    credits_spent: int,
) -> int:
    """Apply a decision taken under `lock_counter_and_credits`; returns the new total (both
    sums saturate at their bounds, as in `add_within_cap`)."""
    used: int = await conn.fetchval(
        """
        UPDATE usage_counters
        SET used = least(used::numeric + $4::bigint, $6)::bigint,
            cost = least(cost + coalesce($5::numeric, 0), $7)
        WHERE customer_id = $1 AND feature_id = $2 AND period_start = $3
        RETURNING used
        """,
        key.customer_id,
        key.feature_id,
        key.period_start,
        amount,
        cost,
        MAX_USED,
        MAX_COST,
    )
    if credits_spent:
        await conn.execute(
            "UPDATE credit_balances SET spent = spent + $3 "
            "WHERE customer_id = $1 AND feature_id = $2",
            key.customer_id,
            key.feature_id,
            credits_spent,
        )
    return used


@dataclass(frozen=True, slots=True)
class UsagePeriod:
    """What one feature's counters add up to over one period or bucket."""

    feature_key: str
    period_start: datetime
    period_end: datetime | None
    used: int
    cost: Decimal


# One customer's counters, of one feature or of all, in one round trip: per feature, one range
# scan of usage_counters' primary key (customer_id, feature_id, period_start) over the periods
# that start in [$3, $4). A feature that never resets has one all-time counter (period_end NULL,
# starting at $5): it is reported as it is, whatever the range, found by its exact key.
_FROM_COUNTERS = """
    FROM c CROSS JOIN f
    JOIN usage_counters uc ON uc.customer_id = c.id AND uc.feature_id = f.id
"""
_CTES = """
WITH c AS (SELECT id FROM customers WHERE external_id = $1),
     f AS (SELECT id, key FROM features WHERE $2::text IS NULL OR key = $2)
"""
_ALL_TIME = f"""
    SELECT f.key AS feature_key, uc.period_start, uc.period_end, uc.used, uc.cost
    {_FROM_COUNTERS} AND uc.period_start = $5
    WHERE uc.period_end IS NULL
"""
_HISTORY_BY_PERIOD = f"""
{_CTES}
SELECT f.key AS feature_key, uc.period_start, uc.period_end, uc.used, uc.cost
{_FROM_COUNTERS} AND uc.period_start >= $3 AND uc.period_start < $4
WHERE uc.period_end IS NOT NULL
UNION ALL {_ALL_TIME}
ORDER BY feature_key, period_start
"""
# Buckets ($6: hour, day, week or month) are cut in UTC whatever the session's time zone, on
# UTC wall-clock time (cheaper per row than date_trunc's time zone argument); a bucket's end is
# worked out once per bucket, and never lies past the range. Sums of used saturate at $7.
_HISTORY_BY_BUCKET = f"""
{_CTES}, buckets AS (
    SELECT f.key AS feature_key, date_trunc($6, uc.period_start AT TIME ZONE 'UTC') AS bucket,
           least(sum(uc.used), $7)::bigint AS used, sum(uc.cost) AS cost
    {_FROM_COUNTERS} AND uc.period_start >= $3 AND uc.period_start < $4
    WHERE uc.period_end IS NOT NULL
    GROUP BY 1, 2
)
SELECT feature_key, bucket AT TIME ZONE 'UTC' AS period_start,
       least((bucket + ('1 ' || $6)::interval) AT TIME ZONE 'UTC', $4) AS period_end, used, cost
FROM buckets
UNION ALL {_ALL_TIME}
ORDER BY feature_key, period_start
"""  # noqa: S608 - constant fragments only


async def select_usage_history(
    conn: Executor,
    customer_key: str,
    *,
    feature_key: str | None,
    since: datetime,
    until: datetime,
    bucket: str | None,
) -> list[UsagePeriod]:
    """Usage per feature and bucket (`bucket` a date_trunc unit: hour, day, week, month), or per
    counter period when `bucket` is None, of the counters whose period starts in [since, until).
    Each counter counts once, in the bucket its period starts in."""
    args = (customer_key, feature_key, since, until, BEGINNING)
    if bucket is None:
        rows = await conn.fetch(_HISTORY_BY_PERIOD, *args)
    else:
        rows = await conn.fetch(_HISTORY_BY_BUCKET, *args, bucket, MAX_USED)
    return [UsagePeriod(**dict(row.items())) for row in rows]


@dataclass(frozen=True, slots=True)
class UpgradeOption:
    plan_key: str
    price_key: str


async def select_upgrade_options(
    conn: Executor, feature_id: uuid.UUID, needed: int, customer_id: uuid.UUID | None
) -> list[UpgradeOption]:
    """Live plans whose allowance covers `needed`, in the customer's currency: the cheapest
    plan (by monthly equivalent) first, and within a plan its smallest payment (monthly before
    yearly). The customer's currency is their latest subscription's, else their latest
    order's; a customer who never paid is offered every currency."""
    rows = await conn.fetch(
        """
        WITH currency AS (
            SELECT coalesce(
                (SELECT currency FROM subscriptions WHERE customer_id = $3 AND currency IS NOT NULL
                 ORDER BY stripe_created_at DESC LIMIT 1),
                (SELECT currency FROM orders WHERE customer_id = $3 AND currency <> ''
                 ORDER BY created_at DESC LIMIT 1)) AS code
        )
        SELECT pl.key AS plan_key, p.lookup_key AS price_key
        FROM plan_features pf
        JOIN plans pl ON pl.id = pf.plan_id AND pl.active
        JOIN prices p ON p.plan_id = pl.id AND p.active AND p.type = 'recurring'
        CROSS JOIN currency
        WHERE pf.feature_id = $1 AND pf.enabled AND (pf."limit" IS NULL OR pf."limit" >= $2)
          AND (currency.code IS NULL OR p.currency = currency.code)
        ORDER BY min(p.amount::numeric / CASE p.recurring_interval WHEN 'year' THEN 12 ELSE 1 END)
                     OVER (PARTITION BY pl.id),
                 pl.display_order, p.amount
        """,
        feature_id,
        needed,
        customer_id,
    )
    return [UpgradeOption(**dict(row.items())) for row in rows]
