"""SQL for metering: the entitlement context, usage counters, credit balances and usage events."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg

from billing_service.db.pool import Executor
from billing_service.db.subscriptions import ranking_sql
from billing_service.periods import BEGINNING

_ALLOWANCE = 'enabled, "limit", soft_limit, reset, overage, per_seat, member_limit'

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
    SELECT s.status, p.plan_id, pl.key AS plan_key, s.past_due_since, s.quantity,
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
       coalesce(s.quantity, 1) AS seats,
       d.id AS default_plan_id, d.key AS default_plan_key,
       to_jsonb(sp) AS subscribed_allowance, to_jsonb(dp) AS default_allowance,
       coalesce(cb.granted - cb.spent, 0) + coalesce(cl.available, 0) AS credits,
       cl.next_expiry AS credits_expire_at,
       o.present IS NOT NULL AS overridden, o."limit" AS override_limit,
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
-- Granted credits count until they expire; the next expiry ends a cached snapshot.
LEFT JOIN LATERAL (
    SELECT sum(granted - spent)::bigint AS available,
           min(expires_at) FILTER (WHERE spent < granted) AS next_expiry
    FROM credit_lots
    WHERE customer_id = c.id AND feature_id = f.id AND (expires_at IS NULL OR expires_at > $3)
) cl ON true
LEFT JOIN LATERAL (
    SELECT true AS present, "limit" FROM feature_overrides
    WHERE customer_id = c.id AND feature_id = f.id
) o ON true
-- The counters of the current window, by exact key, under each allowance: the subscribed
-- plan's (in the subscription's billing period) and the default plan's (calendar windows);
-- resolve() uses the one the access policy picks. usage_window mirrors periods.period_for.
LEFT JOIN LATERAL (
    SELECT uc.period_start, uc.used, uc.cost
    FROM usage_window(coalesce(sp.reset, 'month'), $3, s.current_period_start,
                      s.current_period_end, s.billing_interval) w
    JOIN usage_counters uc ON uc.customer_id = c.id AND uc.feature_id = f.id
                          AND uc.period_start = w.window_start
    WHERE f.kind = 'metered' AND (sp.enabled OR o.present)
) su ON true
LEFT JOIN LATERAL (
    SELECT uc.period_start, uc.used, uc.cost
    FROM usage_window(coalesce(dp.reset, 'month'), $3, NULL, NULL, NULL) w
    JOIN usage_counters uc ON uc.customer_id = c.id AND uc.feature_id = f.id
                          AND uc.period_start = w.window_start
    WHERE f.kind = 'metered' AND (dp.enabled OR o.present)
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
    seats: int  # the subscription's quantity (per-seat allowances count it)
    default_plan_id: uuid.UUID | None
    default_plan_key: str | None
    subscribed_allowance: dict[str, Any] | None
    default_allowance: dict[str, Any] | None
    credits: int  # bought, and granted until they expire
    credits_expire_at: datetime | None  # the next granted credits with some left expire
    overridden: bool  # the customer's own limit (feature_overrides) wins over the plan's
    override_limit: int | None
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


# A period counter never overflows its column: at these bounds it stays put (saturates), so a
# counter that reached one keeps accepting calls instead of failing every later one.
MAX_USED = 2**63 - 1  # bigint
MAX_COST = Decimal("999999999999999999.999999999999")  # numeric(30, 12)


# Raised by usage_track when a concurrent call with the same idempotency key committed first.
_USAGE_EVENT_EXISTS = "BS001"


@dataclass(frozen=True, slots=True)
class Tracked:
    """What usage_track (migration 0016) did: `answered` (response is the new answer),
    `replayed` (the key's stored response), `reused` (the key holds a different request),
    `no_feature`, `no_member` (the member holds no seat of the customer), or `raced` (a
    concurrent call with the key committed first: call again)."""

    outcome: str
    response: dict[str, Any] | None


async def track(
    conn: Executor,
    *,
    customer_key: str,
    feature_key: str,
    amount: int,
    cost: Decimal | None,
    idempotency_key: str,
    request_hash: bytes,
    metadata: dict[str, Any],
    now: datetime,
    grace: timedelta,
    member: str | None = None,
) -> Tracked:
    """Check, count and record one track call in one statement, its own transaction: the
    context, the replay, the counter (credits and overage under row locks), the usage event
    and the threshold outbox events all commit together, or none does."""
    try:
        row = await conn.fetchrow(
            "SELECT outcome, response FROM usage_track($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            customer_key,
            feature_key,
            amount,
            cost,
            idempotency_key,
            request_hash,
            metadata,
            now,
            grace,
            member,
        )
    except asyncpg.PostgresError as error:
        if error.sqlstate == _USAGE_EVENT_EXISTS:
            return Tracked("raced", None)
        raise
    assert row is not None
    return Tracked(row["outcome"], row["response"])


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
    """Live plans whose allowance covers `needed`, in the customer's currency, the cheapest
    first (migration 0016 `usage_upgrade_options`, which track uses too)."""
    rows = await conn.fetch(
        "SELECT o.plan_key, o.price_key "
        "FROM usage_upgrade_options($1, $2, $3) WITH ORDINALITY AS o ORDER BY o.ordinality",
        feature_id,
        needed,
        customer_id,
    )
    return [UpgradeOption(**dict(row.items())) for row in rows]
