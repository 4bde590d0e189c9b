"""A large data set written straight in SQL, for query plans: many customers, a long usage ledger,
a year of hourly counters for one customer, a busy Stripe ledger and delivery log.

`seed(conn, Volume(...))` fills an empty, migrated database in a few statements (generate_series)
and ANALYZEs it, so the planner sees the sizes production would. Rows are written in time order,
as the service writes them, so physical order follows `created_at` as it does in production.
The ledgers' months get their partitions as the prune job would have made them;
`reset_partitions` takes a test database back to the partitions a fresh migration leaves.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from billing_service.db import partitions
from billing_service.db.pool import Connection

# The customer whose hourly feature has a year of periods (8,772 hourly counters, as measured).
HEAVY_CUSTOMER = "cust_0"
HOURLY_FEATURE = "api_requests"
DAILY_FEATURE = "exports"
MONTHLY_FEATURE = "ai_calls"
NEVER_FEATURE = "projects"


@dataclass(frozen=True, slots=True)
class Volume:
    """How much of everything to write."""

    customers: int = 10_000
    usage_events: int = 1_000_000
    heavy_hours: int = 8_772
    months_per_customer: int = 12
    days_per_customer: int = 12
    stripe_events: int = 200_000
    outbox_events: int = 100_000
    endpoints: int = 3
    orders: int = 20_000
    heavy_orders: int = 1_000
    idempotent_requests: int = 50_000
    api_keys: int = 50
    # How far back `created_at` goes (beyond the default 90-day retention, so pruning has work).
    days: int = 120


async def seed(conn: Connection, volume: Volume) -> None:
    """Fill an empty, migrated database with `volume`, then ANALYZE it."""
    await conn.execute("SET synchronous_commit = off")
    await conn.execute(
        """
        INSERT INTO features (key, name, kind, unit) VALUES
            ('ai_calls', 'AI calls', 'metered', 'call'),
            ('projects', 'Projects', 'metered', 'project'),
            ('exports', 'Exports', 'metered', 'export'),
            ('api_requests', 'API requests', 'metered', 'request'),
            ('export_csv', 'CSV export', 'boolean', NULL);
        INSERT INTO plans (key, name, is_default, display_order) VALUES
            ('free', 'Free', true, 0), ('pro', 'Pro', false, 1);
        INSERT INTO plan_features (plan_id, feature_id, "limit", reset)
        SELECT p.id, f.id, CASE WHEN p.key = 'free' AND f.key = 'ai_calls' THEN 5 END,
               CASE f.key WHEN 'ai_calls' THEN 'month' WHEN 'projects' THEN 'never'
                          WHEN 'exports' THEN 'day' WHEN 'api_requests' THEN 'hour' END
        FROM plans p CROSS JOIN features f WHERE f.kind = 'metered';
        INSERT INTO prices (plan_id, lookup_key, amount, currency, type, recurring_interval)
        SELECT id, 'pro_monthly', 1900, 'usd', 'recurring', 'month' FROM plans WHERE key = 'pro';
        """
    )
    await conn.execute(
        """
        INSERT INTO customers (external_id, email, created_at)
        SELECT 'cust_' || n, 'cust_' || n || '@example.com', now() - make_interval(days => $2)
        FROM generate_series(0, $1 - 1) AS n
        """,
        volume.customers,
        volume.days,
    )
    # The ledgers' months get their partitions first, as the prune job would have made them.
    for table in ("usage_events", "stripe_events"):
        await conn.execute(
            "SELECT ensure_month_partitions($1, now() - make_interval(days => $2), now())",
            table,
            volume.days,
        )
    await _seed_usage(conn, volume)
    await _seed_ledgers(conn, volume)
    await conn.execute("ANALYZE")


async def reset_partitions(conn: Connection) -> None:
    """The ledgers' partitions as a fresh migration leaves them: the months before this one
    dropped (their rows with them), this month and the three after it present."""
    for table in ("usage_events", "stripe_events"):
        for month in await partitions.month_partitions(conn, table):
            if month.end <= datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0):
                await conn.execute(f'DROP TABLE "{month.name}"')
        await conn.execute(
            "SELECT ensure_month_partitions($1, now(), now() + interval '3 months')", table
        )


async def _seed_usage(conn: Connection, volume: Volume) -> None:
    # A year of hourly periods for one customer, monthly and daily periods for everyone, and one
    # all-time counter each: about 25 counters per customer, as a year of use leaves them.
    await conn.execute(
        """
        INSERT INTO usage_counters (customer_id, feature_id, period_start, period_end, used, cost)
        SELECT c.id, f.id, h, h + interval '1 hour', 1 + (extract(epoch FROM h)::bigint % 7),
               0.001 * (1 + extract(epoch FROM h)::bigint % 7)
        FROM customers c, features f,
             generate_series(date_trunc('hour', now(), 'UTC') - make_interval(hours => $1 - 1),
                             date_trunc('hour', now(), 'UTC'), interval '1 hour') AS h
        WHERE c.external_id = $2 AND f.key = $3
        """,
        volume.heavy_hours,
        HEAVY_CUSTOMER,
        HOURLY_FEATURE,
    )
    await conn.execute(
        """
        INSERT INTO usage_counters (customer_id, feature_id, period_start, period_end, used, cost)
        SELECT c.id, f.id, m, m + interval '1 month', 1 + (hashtext(c.external_id) & 1023), 0
        FROM customers c, features f,
             generate_series(date_trunc('month', now(), 'UTC') - make_interval(months => $1 - 1),
                             date_trunc('month', now(), 'UTC'), interval '1 month') AS m
        WHERE f.key = 'ai_calls';

        INSERT INTO usage_counters (customer_id, feature_id, period_start, period_end, used, cost)
        SELECT c.id, f.id, d, d + interval '1 day', 1 + (hashtext(c.external_id) & 63), 0
        FROM customers c, features f,
             generate_series(date_trunc('day', now(), 'UTC') - make_interval(days => $2 - 1),
                             date_trunc('day', now(), 'UTC'), interval '1 day') AS d
        WHERE f.key = 'exports';

        INSERT INTO usage_counters (customer_id, feature_id, period_start, period_end, used)
        SELECT c.id, f.id, '1970-01-01T00:00:00Z', NULL, 1 + (hashtext(c.external_id) & 7)
        FROM customers c, features f WHERE f.key = 'projects';
        """.replace("$1", str(int(volume.months_per_customer))).replace(
            "$2", str(int(volume.days_per_customer))
        )
    )
    # The ledger of track calls, oldest first as it was written: ~100 per customer.
    await conn.execute(
        """
        WITH c AS (SELECT id, row_number() OVER (ORDER BY external_id) - 1 AS i FROM customers),
             f AS (SELECT id, row_number() OVER (ORDER BY key) - 1 AS i
                   FROM features WHERE kind = 'metered')
        INSERT INTO usage_events (customer_id, feature_id, idempotency_key, request_hash, amount,
                                  cost, recorded, period_start, response, created_at, updated_at)
        SELECT c.id, f.id, 'req-' || n, sha256(n::text::bytea), 1, 0.0031, true,
               date_trunc('month', t, 'UTC'),
               json_build_object('allowed', true, 'feature', 'ai_calls', 'used', n % 500,
                                 'limit', 500, 'remaining', 500 - n % 500,
                                 'soft_limit_reached', false,
                                 'resets_at', '2027-01-01T00:00:00+00:00', 'recorded', true),
               t, t
        FROM generate_series(1, $1) AS n
        JOIN c ON c.i = (n::bigint * 7919) % $3
        JOIN f ON f.i = n % 4
        CROSS JOIN LATERAL (SELECT now() - make_interval(days => $2)
                                   + (n::float8 / $1) * make_interval(days => $2) AS t) AS at
        ORDER BY n
        """,
        volume.usage_events,
        volume.days,
        volume.customers,
    )
    await conn.execute(
        """
        INSERT INTO usage_event_keys (customer_id, idempotency_key, created_at, updated_at)
        SELECT customer_id, idempotency_key, created_at, created_at FROM usage_events
        """
    )


async def _seed_ledgers(conn: Connection, volume: Volume) -> None:
    await conn.execute(
        """
        INSERT INTO stripe_events (stripe_event_id, type, livemode, stripe_created_at, object_id,
                                   payload, status, attempts, processed_at, next_attempt_at,
                                   created_at, updated_at)
        SELECT 'evt_' || n, 'customer.subscription.updated', false, t, 'sub_' || (n % 5000),
               jsonb_build_object('id', 'evt_' || n, 'object', 'event',
                                  'type', 'customer.subscription.updated',
                                  'data', jsonb_build_object('object', jsonb_build_object(
                                      'id', 'sub_' || (n % 5000), 'object', 'subscription',
                                      'status', 'active'))),
               CASE WHEN n % 1000 = 0 THEN 'failed' WHEN n > $1 - 20 THEN 'pending'
                    ELSE 'processed' END,
               1, CASE WHEN n % 1000 <> 0 AND n <= $1 - 20 THEN t + interval '1 second' END,
               t, t, t
        FROM generate_series(1, $1) AS n,
             LATERAL (SELECT now() - make_interval(days => $2)
                             + (n::float8 / $1) * make_interval(days => $2) AS t) AS at
        """,
        volume.stripe_events,
        volume.days,
    )
    await conn.execute(
        """
        INSERT INTO webhook_endpoints (url, event_types, secret, created_at)
        SELECT 'https://hooks' || n || '.example.com/billing', ARRAY['usage.limit_reached'],
               'whsec_' || md5(n::text), now() - make_interval(days => $2 + 1)
        FROM generate_series(1, $1) AS n
        """,
        volume.endpoints,
        volume.days,
    )
    await conn.execute(
        """
        INSERT INTO outbox_events (type, payload, dedupe_key, created_at, updated_at)
        SELECT 'usage.limit_reached', jsonb_build_object('customer_id', 'cust_' || n % 10000),
               'usage.limit_reached:' || n, t, t
        FROM generate_series(1, $1) AS n,
             LATERAL (SELECT now() - make_interval(days => $2)
                             + (n::float8 / $1) * make_interval(days => $2) AS t) AS at;

        INSERT INTO webhook_deliveries (event_id, endpoint_id, status, attempts, last_status_code,
                                        delivered_at, next_attempt_at, created_at, updated_at)
        SELECT o.id, e.id, 'delivered', 1, 200, o.created_at, o.created_at, o.created_at,
               o.created_at
        FROM outbox_events o
        JOIN LATERAL (SELECT id FROM webhook_endpoints ORDER BY created_at, id
                      OFFSET (hashtext(o.dedupe_key) & 1023) % $3 LIMIT 1) AS e ON true
        ORDER BY o.created_at;

        INSERT INTO email_deliveries (event_id, template, status, sent_at, next_attempt_at,
                                      created_at, updated_at)
        SELECT id, 'owner_notice', 'sent', created_at, created_at, created_at, created_at
        FROM outbox_events WHERE hashtext(dedupe_key) % 5 = 0 ORDER BY created_at;
        """.replace("$1", str(int(volume.outbox_events)))
        .replace("$2", str(int(volume.days)))
        .replace("$3", str(int(volume.endpoints)))
    )
    await conn.execute(
        """
        WITH c AS (SELECT id, row_number() OVER (ORDER BY external_id) - 1 AS i FROM customers),
             heavy AS (SELECT id FROM customers WHERE external_id = $4)
        INSERT INTO orders (customer_id, stripe_checkout_session_id, stripe_payment_intent_id,
                            status, currency, amount_total, line_items, created_at, updated_at)
        SELECT CASE WHEN n <= $3 THEN heavy.id ELSE c.id END,
               'cs_' || n, 'pi_' || n, 'paid', 'usd', 1000, '[]'::jsonb, t, t
        FROM generate_series(1, $1) AS n
        JOIN c ON c.i = (n::bigint * 7919) % $5
        CROSS JOIN heavy
        CROSS JOIN LATERAL (SELECT now() - make_interval(days => $2)
                                   + (n::float8 / $1) * make_interval(days => $2) AS t) AS at
        ORDER BY n
        """,
        volume.orders,
        volume.days,
        volume.heavy_orders,
        HEAVY_CUSTOMER,
        volume.customers,
    )
    await conn.execute(
        """
        INSERT INTO api_keys (name, prefix, key_hash, scopes, created_at)
        SELECT 'key ' || n, 'bsk_' || n, sha256(('key' || n)::bytea), ARRAY['billing'],
               now() - make_interval(days => $2) + make_interval(hours => n)
        FROM generate_series(1, $1) AS n
        """,
        volume.api_keys,
        volume.days,
    )
    await conn.execute(
        """
        WITH k AS (SELECT array_agg(id) AS ids FROM api_keys)
        INSERT INTO idempotent_requests (api_key_id, operation, idempotency_key, request_hash,
                                         response_status, response_body, created_at, updated_at)
        SELECT k.ids[1 + n % cardinality(k.ids)], 'checkout.create', 'idem-' || n,
               sha256(n::text::bytea), 201, '{"id": "cs_1", "url": "https://x"}'::jsonb, t, t
        FROM k, generate_series(1, $1) AS n,
             LATERAL (SELECT now() - make_interval(days => $2)
                             + (n::float8 / $1) * make_interval(days => $2) AS t) AS at
        """,
        volume.idempotent_requests,
        volume.days,
    )
