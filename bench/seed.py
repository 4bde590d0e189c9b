"""The bench's databases: the real migrations, the example catalog made roomy, the bench's
customers and counters, Pro subscribers already past a billed allowance, and for the growth
scenario 10,000 customers and 1,000,000 usage events.

Every database gets a name of its own (`billing_bench_<hex>`), so runs on a shared server do
not collide, and is dropped when the run ends.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import yaml

from bench import track_floor
from billing_service.catalog_spec import CatalogSpec, parse_catalog
from billing_service.db import usage as usage_db
from billing_service.db.migrations import apply_migrations, discover_migrations
from billing_service.db.pool import create_pool
from billing_service.resources import example_catalog_path, migrations_dir
from billing_service.services import api_keys, catalog
from billing_service.services.api_keys import Scope

CUSTOMERS = 100  # bench_0 … bench_99, driven round robin by the Lua scripts
HISTORY_CUSTOMER = "bench_history"  # the customer whose usage history is read
HOURLY_FEATURE = "api_requests"  # a metered feature that resets every hour
GROWTH_CUSTOMERS = 10_000
GROWTH_EVENTS = 1_000_000
GROWTH_MONTHS = 12
ROOMY = 10**12  # an allowance no bench run reaches
# Pro subscribers billed_0 … billed_99, driven by track_billed.lua: their `ai_calls` allowance
# (overage: bill) is this small and already used up, so every track of theirs is billed.
BILLED_PREFIX = "billed_"
BILLED_FEATURE = "ai_calls"
BILLED_LIMIT = 10


@dataclass(frozen=True)
class BenchDatabase:
    """A seeded database and the API key (scope `usage`) the scenarios call with."""

    name: str
    url: str
    api_key: str


def bench_catalog() -> CatalogSpec:
    """The example catalog, with a free plan that never refuses `ai_calls`, a Pro plan that
    bills `ai_calls` past `BILLED_LIMIT`, plus an hourly metered feature for the usage history."""
    data: dict[str, Any] = yaml.safe_load(example_catalog_path().read_text())
    data["features"][HOURLY_FEATURE] = {
        "name": "API requests",
        "kind": "metered",
        "unit": "request",
    }
    free = data["plans"]["free"]["features"]
    free["ai_calls"] = {"limit": ROOMY, "soft_limit": ROOMY // 10, "reset": "month"}
    free[HOURLY_FEATURE] = {"limit": ROOMY, "reset": "hour"}
    billed = data["plans"]["pro"]["features"][BILLED_FEATURE]
    assert billed["overage"] == "bill", "the example catalog's Pro plan bills ai_calls"
    billed.update(limit=BILLED_LIMIT, soft_limit=BILLED_LIMIT // 2)
    return parse_catalog(data)


def database_url(server_url: str, name: str) -> str:
    """The URL of database `name` on the server of `server_url`."""
    return server_url.rsplit("/", 1)[0] + f"/{name}"


async def drop_database(server_url: str, name: str) -> None:
    """Drop a bench database, whoever is still connected to it."""
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def prepare(server_url: str, *, history_hours: int) -> BenchDatabase:
    """A fresh database: migrations, the bench catalog, customers `bench_0…99` (each with a
    `projects` counter for the B2 floor), `bench_history` with `history_hours` hourly counters
    up to now, the billed Pro subscribers, an API key, and the Btrack1 floor's function."""
    name = f"billing_bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = database_url(server_url, name)
    conn = await asyncpg.connect(url)
    try:
        await apply_migrations(conn, discover_migrations(migrations_dir()))
    finally:
        await conn.close()
    pool = await create_pool(url, min_size=1, max_size=2)
    try:
        spec = bench_catalog()
        await catalog.apply_catalog(pool, lambda _current: spec)
        await pool.executemany(
            "INSERT INTO customers (external_id, email) VALUES ($1, $2)",
            [(f"bench_{n}", f"bench_{n}@example.com") for n in range(CUSTOMERS)]
            + [(HISTORY_CUSTOMER, f"{HISTORY_CUSTOMER}@example.com")],
        )
        await pool.execute(
            """
            INSERT INTO usage_counters (customer_id, feature_id, period_start, period_end, used)
            SELECT c.id, f.id, '1970-01-01T00:00:00Z', NULL, 0
            FROM customers c, features f
            WHERE c.external_id LIKE 'bench\\_%' AND c.external_id <> $1 AND f.key = 'projects'
            """,
            HISTORY_CUSTOMER,
        )
        await pool.execute(
            """
            INSERT INTO usage_counters (customer_id, feature_id, period_start, period_end, used,
                                        cost)
            SELECT c.id, f.id, h.start, h.start + interval '1 hour', 1 + h.n % 50, 0.01 * h.n
            FROM customers c, features f,
                 LATERAL (SELECT n, date_trunc('hour', now(), 'UTC') - n * interval '1 hour'
                          FROM generate_series(0, $3 - 1) n) AS h (n, start)
            WHERE c.external_id = $1 AND f.key = $2
            """,
            HISTORY_CUSTOMER,
            HOURLY_FEATURE,
            history_hours,
        )
        await _billed_subscribers(pool)
        issued = await api_keys.create_key(pool, name="bench", scopes=[Scope.USAGE])
        await track_floor.install(pool)
    finally:
        await pool.close()
    return BenchDatabase(name, url, issued.plaintext)


async def _billed_subscribers(pool: asyncpg.Pool) -> None:
    """Customers `billed_0…99`, each with a Stripe customer id and an active Pro subscription,
    and each past its billed `ai_calls` allowance through one real track of `BILLED_LIMIT + 1`
    units (the usage_track statement the service runs): from then on every unit they track is
    billable and writes a meter event."""
    await pool.execute(
        """
        INSERT INTO customers (external_id, email, stripe_customer_id)
        SELECT $1 || n, $1 || n || '@example.com', 'cus_bench_' || $1 || n
        FROM generate_series(0, $2 - 1) n
        """,
        BILLED_PREFIX,
        CUSTOMERS,
    )
    now = datetime.now(UTC)
    await pool.execute(
        """
        INSERT INTO subscriptions (customer_id, stripe_subscription_id, status, stripe_price_id,
                                   price_id, current_period_start, current_period_end,
                                   stripe_created_at)
        SELECT c.id, 'sub_bench_' || c.external_id, 'active', 'price_bench_pro_monthly', p.id,
               $2::timestamptz, $2::timestamptz + interval '1 month', $2::timestamptz
        FROM customers c, prices p
        WHERE c.external_id LIKE $1 || '%' AND p.lookup_key = 'pro_monthly'
        """,
        BILLED_PREFIX,
        now - timedelta(days=1),
    )
    async with pool.acquire() as conn:
        for n in range(CUSTOMERS):
            tracked = await usage_db.track(
                conn, customer_key=f"{BILLED_PREFIX}{n}", feature_key=BILLED_FEATURE,
                amount=BILLED_LIMIT + 1, cost=None, idempotency_key="bench-seed",
                request_hash=hashlib.sha256(b"bench-seed").digest(), metadata={}, now=now,
                grace=timedelta(days=7),
            )  # fmt: skip
            answer = tracked.response or {}
            if tracked.outcome != "answered" or answer.get("overage") is not True:
                raise RuntimeError(f"seeding {BILLED_PREFIX}{n} did not bill: {tracked}")


# One usage event's stored answer, the size of a real one.
_RESPONSE = (
    '{"allowed":true,"feature":"ai_calls","used":42,"limit":1000000000000,'
    '"remaining":999999999958,"soft_limit_reached":false,'
    '"resets_at":"2027-01-01T00:00:00+00:00","recorded":true}'
)


@asynccontextmanager
async def _without_indexes(conn: asyncpg.Connection, table: str) -> AsyncIterator[None]:
    """Drop `table`'s indexes and constraints backed by them for a bulk load, then build them
    again from their own definitions (whatever the migrations made): a sorted build is many
    times faster than a million random index insertions."""
    indexes = await conn.fetch(
        """
        SELECT i.indexrelid::regclass::text AS name, pg_get_indexdef(i.indexrelid) AS definition,
               con.conname AS constraint_name, pg_get_constraintdef(con.oid) AS constraint_def
        FROM pg_index i
        LEFT JOIN pg_constraint con ON con.conindid = i.indexrelid AND con.conrelid = i.indrelid
        WHERE i.indrelid = $1::regclass
        """,
        table,
    )
    for index in indexes:
        if index["constraint_name"]:
            await conn.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{index["constraint_name"]}"')
        else:
            await conn.execute(f"DROP INDEX {index['name']}")
    yield
    for index in indexes:
        if index["constraint_name"]:
            await conn.execute(
                f'ALTER TABLE {table} ADD CONSTRAINT "{index["constraint_name"]}" '
                f"{index['constraint_def']}"
            )
        else:
            await conn.execute(index["definition"])


async def grow(url: str) -> None:
    """Grow a prepared database (seeded with a year of hourly counters) to `GROWTH_CUSTOMERS`
    customers, a monthly `ai_calls` counter for each over `GROWTH_MONTHS` months, and
    `GROWTH_EVENTS` usage events over the past year: one an hour for the history customer, the
    rest spread over everyone. Set-based SQL, one statement per table."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("SET synchronous_commit = off")
        await conn.execute("SET maintenance_work_mem = '256MB'")
        # The rows are consistent by construction: skip the foreign-key checks while loading.
        await conn.execute("SET session_replication_role = replica")
        existing: int = await conn.fetchval("SELECT count(*) FROM customers")
        await conn.execute(
            """
            INSERT INTO customers (external_id, email)
            SELECT 'grow_' || n, 'grow_' || n || '@example.com' FROM generate_series(1, $1) n
            """,
            GROWTH_CUSTOMERS - existing,
        )
        await conn.execute(
            """
            INSERT INTO usage_counters (customer_id, feature_id, period_start, period_end, used,
                                        cost)
            SELECT c.id, f.id, m.start, m.start + interval '1 month', 10 + m.n, 0.01 * m.n
            FROM customers c, features f,
                 LATERAL (SELECT n, date_trunc('month', now(), 'UTC') - n * interval '1 month'
                          FROM generate_series(0, $1 - 1) n) AS m (n, start)
            WHERE f.key = 'ai_calls'
              -- the billed subscribers already hold this period's counter
              AND NOT EXISTS (SELECT 1 FROM usage_counters u
                              WHERE u.customer_id = c.id AND u.feature_id = f.id)
            """,
            GROWTH_MONTHS,
        )
        # The months the events cover get their partitions first (migration 0026).
        await conn.execute(
            "SELECT ensure_month_partitions('usage_events', now() - interval '1 year', now())"
        )
        await conn.execute(
            """
            CREATE TEMP TABLE seed_customers AS
            SELECT row_number() OVER (ORDER BY external_id) - 1 AS n, id FROM customers
            """
        )
        status = await conn.execute(
            """
            INSERT INTO usage_events (customer_id, feature_id, idempotency_key, request_hash,
                                      amount, cost, metadata, recorded, period_start, response,
                                      created_at, updated_at)
            SELECT uc.customer_id, uc.feature_id, 'hourly-' || uc.period_start,
                   decode(md5(uc.period_start::text), 'hex'), 1, 0.001, '{}', true,
                   uc.period_start, $2::json, uc.period_start, uc.period_start
            FROM usage_counters uc
            JOIN customers c ON c.id = uc.customer_id AND c.external_id = $1
            JOIN features f ON f.id = uc.feature_id AND f.key = $3
            """,
            HISTORY_CUSTOMER,
            _RESPONSE,
            HOURLY_FEATURE,
        )
        hourly = int(status.split()[-1])  # "INSERT 0 <rows>"
        async with _without_indexes(conn, "usage_events"):
            await conn.execute(
                """
                INSERT INTO usage_events (customer_id, feature_id, idempotency_key, request_hash,
                                          amount, cost, metadata, recorded, period_start, response,
                                          created_at, updated_at)
                SELECT sc.id, f.id, 'seed-' || g, decode(md5(g::text), 'hex'), 1, 0.001, '{}', true,
                       date_trunc('month', t.at, 'UTC'), $2::json, t.at, t.at
                FROM generate_series(1, $1) g
                JOIN seed_customers sc ON sc.n = g % $3
                CROSS JOIN features f
                CROSS JOIN LATERAL (SELECT now() - (g % 525600) * interval '1 minute') AS t (at)
                WHERE f.key = 'ai_calls'
                """,
                GROWTH_EVENTS - hourly,
                _RESPONSE,
                GROWTH_CUSTOMERS,
            )
        await conn.execute(
            """
            INSERT INTO usage_event_keys (customer_id, idempotency_key, created_at, updated_at)
            SELECT customer_id, idempotency_key, created_at, created_at FROM usage_events
            ON CONFLICT DO NOTHING
            """
        )
        await conn.execute("VACUUM ANALYZE customers")
        await conn.execute("VACUUM ANALYZE usage_counters")
        await conn.execute("VACUUM ANALYZE usage_events")
        await conn.execute("VACUUM ANALYZE usage_event_keys")
    finally:
        await conn.close()


async def counts(url: str) -> dict[str, int]:
    """How big a database is, for the report."""
    conn = await asyncpg.connect(url)
    try:
        return {
            table: await conn.fetchval(f"SELECT count(*) FROM {table}")  # noqa: S608
            for table in ("customers", "usage_counters", "usage_events")
        }
    finally:
        await conn.close()
